"""chord: a header group, then a body called once with the header results in order.

Sending (Celery protocol 2): every header member carries the body in its ``chord`` embed, with
the body's pre-assigned ``task_id``, ``reply_to`` and ``group_id`` in its options. Before the
header is published the producer either starts the backend's atomic counter
(``chord_start``; memory, sqlite and Redis count natively) or, for a backend without one, sends
``celery.chord_unlock``, which polls the header results and sends the body.

Completing: the header member that completes the count gets every part back
(:func:`complete_chord`) and sends the body. If a part failed the body is not sent; as in
Celery the body's result becomes ``ChordError("Dependency <id> raised <exc>")`` and the body's
errbacks run once with that error. The chord's result is the body's, whose ``.parent`` is the
header GroupResult, so ``get()`` raises the failed member's own exception while
``get(propagate=False)`` returns the ChordError.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskframe import states
from taskframe.canvas.chain import app_of, chain
from taskframe.canvas.group import group, maybe_unroll_group
from taskframe.canvas.signature import Signature, from_dict, maybe_signature, register_type
from taskframe.context import Context
from taskframe.exceptions import ChordError, ImproperlyConfigured
from taskframe.result_meta import decode_chord_part, exception_from_dict

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.result import AsyncResult, GroupResult

__all__ = ["chord", "complete_chord", "fail_chord", "send_errbacks", "takes_request_exc_traceback"]

logger = logging.getLogger("taskframe.canvas")

UNLOCK_TASK = "celery.chord_unlock"
UNLOCK_COUNTDOWN = 1.0
"""Seconds before the first ``celery.chord_unlock`` check, as Celery."""


@register_type("chord")
class chord(Signature):
    """``chord([add.s(1, 1), add.s(2, 2)], tsum.s())()`` or ``chord(header)(body)``."""

    def __init__(
        self,
        header: Any,
        body: Any = None,
        task: str = "celery.chord",
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: Taskframe | None = None,
        **options: Any,
    ) -> None:
        if isinstance(header, group):
            header_group = header
        elif isinstance(header, Mapping):
            made = from_dict(header, app)
            header_group = made if isinstance(made, group) else group(made, app=app)
        else:
            header_group = group(list(header), app=app)
        app = app or header_group._app or app_of([body])
        super().__init__(
            task,
            args,
            {
                "kwargs": dict(kwargs or {}),
                "header": header_group,
                "body": maybe_signature(body, app),
            },
            options,
            subtask_type="chord",
            app=app,
        )

    @classmethod
    def from_wire(cls, value: Mapping[str, Any], app: Taskframe | None) -> Signature:
        inner = value.get("kwargs") or {}
        return cls(
            inner["header"],
            inner.get("body"),
            args=value.get("args"),
            kwargs=inner.get("kwargs"),
            app=app,
            **dict(value.get("options") or {}),
        )

    @property
    def header(self) -> group:
        header: group = self.kwargs["header"]
        return header

    tasks = header

    @property
    def body(self) -> Signature | None:
        body: Signature | None = self.kwargs["body"]
        return body

    @body.setter
    def body(self, value: Signature) -> None:
        self.kwargs["body"] = value

    def __call__(self, body: Signature | None = None, **options: Any) -> Any:
        """``chord(header)(body)`` sends the chord."""
        return self.apply_async((), {"body": body} if body is not None else {}, **options)

    def __or__(self, other: Any) -> Any:
        """``chord | task`` extends the body; ``chord | group`` chains after the chord."""
        if isinstance(other, group) and len(other.tasks) == 1:
            other = maybe_unroll_group(other)
        if isinstance(other, Signature) and not isinstance(other, (group, chain)):
            made = self.clone()
            assert isinstance(made, chord)
            made.body = other if made.body is None else made.body | other
            return made
        return super().__or__(other)

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        return self._require_body().link(callback)

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """The body's errback: it runs once, with the ChordError, if a header task fails."""
        return self._require_body().link_error(errback)

    def _require_body(self) -> Signature:
        if self.body is None:
            raise ValueError("this chord has no body yet: chord(header, body)")
        return self.body

    # -- freezing and sending ---------------------------------------------------------------

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Signature | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> AsyncResult[Any] | GroupResult:
        """Freeze the header (its id becomes the chord's) and the body; returns the body result."""
        header = self.header
        header_result = header.freeze(root_id=root_id, parent_id=parent_id)
        self.options["task_id"] = header_result.id
        body = self._require_body()
        body_result = body.freeze(
            _id, root_id=root_id, chord=chord, group_id=group_id, group_index=group_index
        )
        _attach_parent(body_result, header_result)
        return body_result

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> Any:
        """Start the count (or the unlock task), send the header; returns the body's result."""
        extra = dict(kwargs or {})
        body = maybe_signature(extra.pop("body", None), self._app) or self._require_body()
        body = body.clone(**options)
        partial = tuple(args or ())
        call_args = partial + self.args if partial and not self.immutable else self.args
        app = body._app or self.app
        if app.conf.task_always_eager:
            return self.apply(call_args, extra, body=body)
        merged = {**self.options, **options}
        option_id = merged.pop("task_id", None)
        return self.run(self.header.clone(), body, call_args, task_id or option_id, extra, merged)

    def run(
        self,
        header: Signature,
        body: Signature,
        partial_args: Sequence[Any],
        task_id: str | None,
        kwargs: Mapping[str, Any],
        options: dict[str, Any],
    ) -> Any:
        assert isinstance(header, group)
        app = body._app or self.app
        group_id = header.options.get("task_id") or str(uuid.uuid4())
        root_id = body.options.get("root_id")
        body.options.update({k: v for k, v in options.items() if k != "task_id"})
        body_result = body.freeze(task_id, root_id=root_id, group_id=group_id)
        header_options = {
            k: v for k, v in options.items() if k not in ("chain", "chord", "task_id", "link_error")
        }
        members = header.freeze_members(group_id, body, root_id, header_options.get("parent_id"))
        header_result = app.GroupResult(group_id, members)
        if members:
            backend = app.backend
            if backend is None:
                raise ImproperlyConfigured(
                    "a chord needs a result backend to count its header: set result_backend"
                )
            if backend.supports_native_chords:
                backend.chord_start(group_id, len(members), expires=_chord_expires(app))
            else:
                _send_unlock(app, header_result, body)
            header.apply_async(partial_args, kwargs, task_id=group_id, chord=body, **header_options)
        else:
            body.apply_async(([],))
        _attach_parent(body_result, header_result)
        return body_result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        body: Signature | None = None,
        **options: Any,
    ) -> Any:
        """Run the header, then the body, here."""
        body = body or self._require_body()
        values = self.header.apply(args, kwargs).get(propagate=True)
        return body.apply((values,), **options)


def _attach_parent(result: Any, parent: Any) -> None:
    """Make ``parent`` the parent of the first result in ``result``'s lineage without one."""
    node = result
    while node.parent is not None:
        node = node.parent
    node.parent = parent


def _chord_expires(app: Taskframe) -> float | None:
    expires = app.conf.result_chord_expires
    if expires is None:
        return app.result_expires_seconds
    return float(expires.total_seconds()) if hasattr(expires, "total_seconds") else float(expires)


def _send_unlock(app: Taskframe, header_result: GroupResult, body: Signature) -> None:
    """Celery's fallback for backends without a counter: a task that polls the header.

    The sender registers the built-in tasks so the unlock task's own options apply here."""
    from taskframe.canvas.builtins import register_builtins

    unlock = register_builtins(app)
    body_task = app.tasks.get(body.task)
    queue = body.options.get("queue") or (body_task.queue if body_task is not None else None)
    priority = body.options.get("priority")
    app.send_task(
        UNLOCK_TASK,
        [header_result.id, body.as_dict()],
        {
            "interval": None,
            "max_retries": None,
            "result": [[[member.id, None], None] for member in header_result.results],
        },
        countdown=UNLOCK_COUNTDOWN,
        queue=queue,
        priority=priority,
        task=unlock,
    )


def complete_chord(app: Taskframe, request: Context, parts: Sequence[bytes]) -> None:
    """Send the body with every header result in order, or fail the chord."""
    body = from_dict(request.chord or {}, app)
    serializer = app.conf.result_serializer
    values: list[Any] = []
    for raw in parts:
        task_id, state, value = decode_chord_part(raw, serializer)
        if state in states.PROPAGATE_STATES:
            fail_chord(app, body, task_id, value)
            return
        values.append(value)
    body.apply_async((values,), parent_id=request.id, root_id=request.root_id)


def fail_chord(app: Taskframe, body: Signature, failed_id: str, value: Any) -> None:
    """Store ``ChordError`` as the body's result and run its errbacks once with it.

    A chain body fails as a whole: every step stores the error (as Celery fails the rest of
    a chain), and the errbacks are the chain's own plus those of its first step."""
    original = exception_from_dict(value) if isinstance(value, dict) else value
    error = ChordError(f"Dependency {failed_id} raised {original!r}")
    logger.error("chord body %s[%s] not run: %s", body.task, body.id, error)
    steps = body.tasks if isinstance(body, chain) else [body]
    errbacks = list(body.options.get("link_error") or [])
    if isinstance(body, chain) and steps:
        errbacks += steps[0].options.get("link_error") or []
    request = Context(
        id=body.id,
        task=body.task,
        args=list(body.args),
        kwargs=dict(body.kwargs),
        errbacks=[dict(errback) for errback in errbacks],
        called_directly=False,
    )
    for step_id in {step.id for step in steps} | {body.id}:
        if step_id is not None:
            app.store_result(step_id, states.FAILURE, error, request=None)
    send_errbacks(app, request, error, None)


def send_errbacks(
    app: Taskframe, request: Context, error: BaseException, trace: str | None
) -> None:
    """Run errbacks taking ``(request, exc, traceback)`` inline, send the others the task id."""
    for errback in request.errbacks or ():
        signature = from_dict(errback, app)
        task = app.tasks.get(signature.task)
        if task is not None and type(signature) is Signature and takes_request_exc_traceback(task):
            try:
                signature(request, error, trace)
            except Exception:
                logger.exception(
                    "errback %s of task %s[%s] failed", signature.task, request.task, request.id
                )
            continue
        signature.apply_async((request.id,), parent_id=request.id, root_id=request.root_id)


def takes_request_exc_traceback(task: Any) -> bool:
    """True for Celery's new-style errback signature ``(request, exc, traceback)``."""
    try:
        parameters = list(inspect.signature(task.run).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) > 1 or any(p.kind == p.VAR_POSITIONAL for p in positional)
