"""What a finished task sends next, from the canvas embedded in its message.

Celery's wire rules (celery-wire-format.md §1.4): callbacks and the chain's next step get the
result prepended to their args (unless immutable); the chain list is stored in reverse, so the
next step is its last element; errbacks that take ``(request, exc, traceback)`` and are
registered here run inline, others are sent with the failed task's id; every chord header
member reports to the backend's atomic counter, and the one that completes the chord sends
the body with the header results in order.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from taskframe import states
from taskframe.canvas.signature import Signature
from taskframe.context import Context
from taskframe.exceptions import ChordError
from taskframe.result_meta import decode_chord_part, encode_chord_part, exception_from_dict

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["on_chord_part", "on_failure", "on_success"]

logger = logging.getLogger("taskframe.canvas")

ChildTuple = list[Any]


def on_success(app: Taskframe, request: Context, retval: Any) -> list[ChildTuple]:
    """Send callbacks and the chain's next step; returns them as Celery's children tuples."""
    children: list[ChildTuple] = []
    lineage = {"parent_id": request.id, "root_id": request.root_id or request.id}
    for callback in request.callbacks or ():
        result = Signature(callback, app=app).apply_async((retval,), **lineage)
        children.append([[result.id, None], None])
    if request.chain:
        remaining = list(request.chain)
        next_step = Signature(remaining.pop(), app=app)
        result = next_step.apply_async((retval,), chain=remaining, **lineage)
        children.append([[result.id, None], None])
    return children


def on_failure(app: Taskframe, request: Context, error: BaseException, trace: str) -> None:
    """Run or send the errbacks of a failed task."""
    by_id: list[Signature] = []
    for errback in request.errbacks or ():
        signature = Signature(errback, app=app)
        task = app.tasks.get(signature.task)
        if task is not None and _takes_request_exc_traceback(task):
            try:
                signature(request, error, trace)
            except Exception:
                logger.exception("errback %s of task %s[%s] failed", signature.task, request.task, request.id)
            continue
        by_id.append(signature)
    for signature in by_id:
        signature.apply_async((request.id,), parent_id=request.id, root_id=request.root_id)


def _takes_request_exc_traceback(task: Any) -> bool:
    try:
        parameters = list(inspect.signature(task.run).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) > 1 or any(p.kind == p.VAR_POSITIONAL for p in positional)


def on_chord_part(app: Taskframe, request: Context, state: str, result: Any) -> None:
    """Count one chord header member; the member that completes the chord sends the body."""
    if not request.chord or request.group is None:
        return
    backend = app.backend
    if backend is None:
        logger.error("chord %s cannot complete: no result backend is configured", request.group)
        return
    serializer = app.conf.result_serializer
    part = encode_chord_part(request.id or "", state, result, serializer)
    parts = backend.chord_part_done(
        request.group, request.group_index or 0, part, expires=app.result_expires_seconds
    )
    if parts is None:
        return
    body = Signature(request.chord, app=app)
    values: list[Any] = []
    for raw in parts:
        task_id, part_state, value = decode_chord_part(raw, serializer)
        if part_state != states.SUCCESS:
            _fail_chord(app, body, request, task_id, value)
            return
        values.append(value)
    body.apply_async((values,), parent_id=request.id, root_id=request.root_id, group_id=request.group)


def _fail_chord(
    app: Taskframe, body: Signature, request: Context, failed_id: str, value: Any
) -> None:
    original = exception_from_dict(value) if isinstance(value, dict) else value
    error = ChordError(f"Dependency {failed_id} raised {original!r}")
    body_id = body.id
    if body_id is not None:
        app.store_result(body_id, states.FAILURE, error, request=None)
    errbacks = body.options.get("link_error") or []
    for errback in errbacks if isinstance(errbacks, list) else [errbacks]:
        signature = Signature(errback, app=app)
        task = app.tasks.get(signature.task)
        if task is not None and _takes_request_exc_traceback(task):
            signature(request, error, None)
        else:
            signature.apply_async((body_id,), parent_id=request.id, root_id=request.root_id)
