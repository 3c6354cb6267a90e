"""What a finished task sends next, from the canvas embedded in its message.

Celery's wire rules (celery-wire-format.md §1.4): callbacks and the chain's next step get the
result prepended to their args (unless immutable); the chain list is stored in reverse, so the
next step is its last element; errbacks that take ``(request, exc, traceback)`` and are
registered here run inline, others are sent with the failed task's id; every chord header
member reports to the backend's atomic counter, and the one that completes the chord sends
the body (:mod:`taskframe.canvas.chord`). Embedded chains, groups and chords arrive as dicts
with a ``subtask_type`` and are rebuilt as such before they are sent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from taskframe.canvas.chord import complete_chord, send_errbacks
from taskframe.canvas.signature import from_dict
from taskframe.context import Context
from taskframe.result_meta import encode_chord_part

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["on_chord_part", "on_failure", "on_success"]

logger = logging.getLogger("taskframe.canvas")

ChildTuple = list[Any]


def _child(result: Any) -> ChildTuple:
    """Celery's result tuple for a child: ``[[id, None], None]`` or a group's tuple."""
    if hasattr(result, "results"):
        return [[result.id, None], [[[member.id, None], None] for member in result.results]]
    return [[result.id, None], None]


def on_success(app: Taskframe, request: Context, retval: Any) -> list[ChildTuple]:
    """Send callbacks and the chain's next step; returns them as Celery's children tuples."""
    children: list[ChildTuple] = []
    lineage: dict[str, Any] = {"parent_id": request.id, "root_id": request.root_id or request.id}
    for callback in request.callbacks or ():
        children.append(_child(from_dict(callback, app).apply_async((retval,), **lineage)))
    if request.chain:
        remaining = list(request.chain)
        next_step = from_dict(remaining.pop(), app)
        children.append(_child(next_step.apply_async((retval,), chain=remaining, **lineage)))
    return children


def on_failure(app: Taskframe, request: Context, error: BaseException, trace: str) -> None:
    """Run or send the errbacks of a failed task."""
    send_errbacks(app, request, error, trace)


def on_chord_part(
    app: Taskframe, request: Context, state: str, result: Any, *, stored: bytes | None = None
) -> bool:
    """Count one chord header member; the member that completes the chord sends the body.
    ``stored``: the member's encoded result meta, stored here with the part (one round trip
    on Redis instead of two). True when it stored it.

    Backends without a native counter are served by ``celery.chord_unlock`` instead."""
    if not request.chord or request.group is None:
        return False
    backend = app.backend
    if backend is None:
        logger.error("chord %s cannot complete: no result backend is configured", request.group)
        return False
    if not backend.supports_native_chords:
        return False
    part = encode_chord_part(request.id or "", state, result, app.conf.result_serializer)
    index, expires = request.group_index or 0, app.result_expires_seconds
    if stored is None:
        parts = backend.chord_part_done(request.group, index, part, expires=expires)
    else:
        parts = backend.store_chord_member(
            request.id or "", stored, part, group_id=request.group, index=index, expires=expires
        )
    if parts is not None:
        complete_chord(app, request, parts)
    return stored is not None
