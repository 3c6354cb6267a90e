"""Running one task call and settling its outcome, the same way in a worker and eagerly.

``execute()`` takes a decoded :class:`~taskframe.protocol.TaskMessage`, runs the task, stores
its state, publishes the follow-ups (retry, callbacks, the chain's next step, the chord body)
and returns an :class:`Outcome` that tells the caller how to settle the message. Follow-ups
are sent before the state is stored, as Celery does, so the stored result lists its children.
The asyncio pool's counterpart is in :mod:`taskframe.execution_async` (asyncio is imported
only where a task needs it: it weighs 3.4 MiB in every worker process).

A message whose ``expires`` has passed is not run: it is stored as REVOKED (reason
``expired``), as Celery does. Every run is wrapped in :func:`task_log_context`, so log records
carry the task's name and id.
"""

from __future__ import annotations

import inspect
import logging
import time
import traceback as traceback_module
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskframe import signals, states
from taskframe.canvas.followups import on_chord_part, on_failure, on_success
from taskframe.context import Context, request_context
from taskframe.exceptions import (
    Ignore,
    NotRegistered,
    Reject,
    Retry,
    TaskRevokedError,
)
from taskframe.protocol import TaskMessage
from taskframe.timeutils import utcnow
from taskframe.utils.log import task_log_context

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.task import Task

__all__ = [
    "ACK",
    "DEAD_LETTER",
    "REQUEUE",
    "Outcome",
    "execute",
    "expired",
    "fail_unfinished",
    "revoked_outcome",
]

logger = logging.getLogger("taskframe.worker")

ACK = "ack"
REQUEUE = "requeue"
DEAD_LETTER = "dead_letter"
IGNORED = "IGNORED"


@dataclass
class Outcome:
    """What became of one task run; ``settle`` says what to do with its message."""

    task_id: str
    task_name: str
    state: str
    runtime: float
    settle: str = ACK
    reason: str | None = None
    retval: Any = None
    exception: BaseException | None = None
    traceback: str | None = None


def build_request(
    message: TaskMessage,
    *,
    hostname: str | None,
    delivery_info: dict[str, Any] | None,
    is_eager: bool,
) -> Context:
    return Context(
        id=message.id,
        task=message.task,
        args=list(message.args),
        kwargs=dict(message.kwargs),
        retries=message.retries,
        eta=message.eta,
        expires=message.expires,
        hostname=hostname,
        delivery_info=delivery_info or {},
        is_eager=is_eager,
        called_directly=False,
        root_id=message.root_id or message.id,
        parent_id=message.parent_id,
        group=message.group,
        group_index=message.group_index,
        correlation_id=message.correlation_id or message.id,
        reply_to=message.reply_to,
        origin=message.origin,
        timelimit=message.timelimit,
        callbacks=message.callbacks,
        errbacks=message.errbacks,
        chain=message.chain,
        chord=message.chord,
        ignore_result=bool(message.ignore_result),
        headers=message.extra_headers,
        shadow=message.shadow,
        stamps=message.stamps,
    )


class _Run:
    """One task run's bookkeeping, shared by the sync and async paths."""

    def __init__(self, app: Taskframe, message: TaskMessage, request: Context) -> None:
        self.app = app
        self.message = message
        self.request = request
        self.started = time.monotonic()

    def unknown(self, exc: NotRegistered) -> Outcome:
        self.app.store_result(self.message.id, states.FAILURE, exc, request=self.request)
        signals.task_unknown.send(
            sender=None, name=self.message.task, id=self.message.id, message=self.message, exc=exc
        )
        return Outcome(
            self.message.id,
            self.message.task,
            states.FAILURE,
            0.0,
            settle=DEAD_LETTER,
            reason=f"unknown task: {exc}",
            exception=exc,
        )

    def begin(self, task: Task[Any, Any]) -> None:
        if signals.task_prerun.has_receivers():
            signals.task_prerun.send(
                sender=task,
                task_id=self.message.id,
                task=task,
                args=self.message.args,
                kwargs=self.message.kwargs,
            )
        track = task.track_started
        if track is None:
            track = bool(self.app.conf.task_track_started)
        if track and not self.request.is_eager:
            self.app.store_result(
                self.message.id,
                states.STARTED,
                {"pid": _pid(), "hostname": self.request.hostname},
                request=self.request,
            )
        task.before_start(self.message.id, self.message.args, self.message.kwargs)

    def handle(self, task: Task[Any, Any], retval: Any, error: BaseException | None) -> Outcome:
        """Turn the task's return value or exception into stored state and follow-ups."""
        if error is not None and not isinstance(error, (Retry, Ignore, Reject, TaskRevokedError)):
            error = self._maybe_autoretry(task, error)
        try:
            if error is None:
                return self._success(task, retval)
            if isinstance(error, Retry):
                return self._retry(task, error)
            if isinstance(error, Ignore):
                return self._finish(task, IGNORED, None, None, ACK, None)
            if isinstance(error, TaskRevokedError):
                self.app.store_result(self.message.id, states.REVOKED, error, request=None)
                signals.task_revoked.send(
                    sender=task,
                    request=self.message,
                    terminated=True,
                    signum=None,
                    expired=False,
                )
                return self._finish(task, states.REVOKED, error, None, ACK, "terminated")
            if isinstance(error, Reject):
                signals.task_rejected.send(sender=task, message=self.message, exc=error)
                settle = REQUEUE if error.requeue else DEAD_LETTER
                return self._finish(
                    task, states.REJECTED, error, None, settle, f"rejected: {error.reason}"
                )
            return self._failure(task, error)
        finally:
            if signals.task_postrun.has_receivers():
                signals.task_postrun.send(
                    sender=task,
                    task_id=self.message.id,
                    task=task,
                    args=self.message.args,
                    kwargs=self.message.kwargs,
                    retval=retval if error is None else error,
                    state=states.SUCCESS if error is None else states.FAILURE,
                )

    def _maybe_autoretry(self, task: Task[Any, Any], error: BaseException) -> BaseException:
        if not task.autoretry_for or not isinstance(error, tuple(task.autoretry_for)):
            return error
        if task.dont_autoretry_for and isinstance(error, tuple(task.dont_autoretry_for)):
            return error
        options = dict(task.retry_kwargs)
        options.setdefault("countdown", task.retry_countdown(self.request.retries))
        try:
            with request_context(self.request):
                task.retry(exc=error, **options)
        except Retry as retry:
            return retry
        except BaseException as exhausted:
            return exhausted
        return error

    def _success(self, task: Task[Any, Any], retval: Any) -> Outcome:
        children = on_success(self.app, self.request, retval)
        backend = self.app.backend
        payload = None
        if backend is not None and not self._ignore_result(task):
            payload = self.app.encode_result(
                self.message.id, states.SUCCESS, retval, request=self.request, children=children
            )
        stored = on_chord_part(self.app, self.request, states.SUCCESS, retval, stored=payload)
        if backend is not None and payload is not None and not stored:
            backend.set(self.message.id, payload, expires=self.app.result_expires_seconds)
        task.on_success(retval, self.message.id, self.message.args, self.message.kwargs)
        if signals.task_success.has_receivers():
            signals.task_success.send(sender=task, result=retval)
        return self._finish(task, states.SUCCESS, None, retval, ACK, None)

    def _retry(self, task: Task[Any, Any], retry: Retry) -> Outcome:
        reason = retry.exc if retry.exc is not None else retry
        trace = _format_traceback(reason)
        children = None
        if retry.sig is not None and not self.request.is_eager:
            child = retry.sig.apply_async()
            children = [[[child.id, None], None]]
        if not self._ignore_result(task):
            self.app.store_result(
                self.message.id,
                states.RETRY,
                retry.exc,
                traceback=trace,
                request=self.request,
                children=children,
            )
        task.on_retry(reason, self.message.id, self.message.args, self.message.kwargs, trace)
        signals.task_retry.send(sender=task, request=self.request, reason=reason, einfo=trace)
        logger.info(
            "Task %s[%s] retry: %s",
            self.message.task,
            self.message.id,
            retry,
            extra={"task_name": self.message.task, "task_id": self.message.id},
        )
        return self._finish(task, states.RETRY, retry, None, ACK, None, trace)

    def _failure(self, task: Task[Any, Any], error: BaseException) -> Outcome:
        trace = _format_traceback(error)
        if not self._ignore_result(task) or task.store_errors_even_if_ignored:
            self.app.store_result(
                self.message.id, states.FAILURE, error, traceback=trace, request=self.request
            )
        on_failure(self.app, self.request, error, trace)
        on_chord_part(self.app, self.request, states.FAILURE, error)
        task.on_failure(error, self.message.id, self.message.args, self.message.kwargs, trace)
        signals.task_failure.send(
            sender=task,
            task_id=self.message.id,
            exception=error,
            args=self.message.args,
            kwargs=self.message.kwargs,
            traceback=trace,
            einfo=trace,
        )
        logger.error(
            "Task %s[%s] raised unexpected: %r",
            self.message.task,
            self.message.id,
            error,
            extra={"task_name": self.message.task, "task_id": self.message.id},
        )
        settle, reason = ACK, None
        if self.request.retries_exhausted:
            settle, reason = DEAD_LETTER, f"retries exhausted: {error!r}"
        return self._finish(task, states.FAILURE, error, None, settle, reason, trace)

    def _finish(
        self,
        task: Task[Any, Any],
        state: str,
        error: BaseException | None,
        retval: Any,
        settle: str,
        reason: str | None,
        trace: str | None = None,
    ) -> Outcome:
        runtime = time.monotonic() - self.started
        task.after_return(
            state,
            retval if error is None else error,
            self.message.id,
            self.message.args,
            self.message.kwargs,
            trace,
        )
        return Outcome(
            self.message.id,
            self.message.task,
            state,
            runtime,
            settle=settle,
            reason=reason,
            retval=retval,
            exception=error,
            traceback=trace,
        )

    def _ignore_result(self, task: Task[Any, Any]) -> bool:
        if self.request.is_eager and not self.app.conf.task_store_eager_result:
            return True
        if self.message.ignore_result is not None:
            return bool(self.message.ignore_result)
        if task.ignore_result is not None:
            return bool(task.ignore_result)
        return bool(self.app.conf.task_ignore_result)


def _pid() -> int:
    import os

    return os.getpid()


def _format_traceback(error: BaseException) -> str:
    return "".join(traceback_module.format_exception(type(error), error, error.__traceback__))


def revoked_outcome(
    app: Taskframe,
    message: TaskMessage,
    reason: str,
    *,
    terminated: bool = False,
    signum: int | None = None,
) -> Outcome:
    """Store REVOKED for a task that will not run (revoked, expired) or was terminated."""
    error = TaskRevokedError(reason)
    app.store_result(message.id, states.REVOKED, error, request=None)
    signals.task_revoked.send(
        sender=app.tasks.get(message.task),
        request=message,
        terminated=terminated,
        signum=signum,
        expired=reason == "expired",
    )
    logger.info(
        "Discarding %s %s[%s]",
        reason,
        message.task,
        message.id,
        extra={"task_name": message.task, "task_id": message.id},
    )
    return Outcome(message.id, message.task, states.REVOKED, 0.0, exception=error, reason=reason)


def fail_unfinished(
    app: Taskframe,
    message: TaskMessage,
    error: BaseException,
    *,
    hostname: str | None = None,
    delivery_info: dict[str, Any] | None = None,
) -> Outcome:
    """Store the failure of a run that could not finish (its process died or was killed at
    the hard time limit): state, errbacks, chord part, hooks and signals, as for a raise."""
    request = build_request(message, hostname=hostname, delivery_info=delivery_info, is_eager=False)
    run = _Run(app, message, request)
    try:
        task = app.get_task(message.task)
    except NotRegistered as exc:
        return run.unknown(exc)
    with request_context(request), task_log_context(message.task, message.id):
        return run._failure(task, error)


def prepare(
    app: Taskframe,
    message: TaskMessage,
    hostname: str | None,
    delivery_info: dict[str, Any] | None,
    is_eager: bool,
) -> tuple[_Run, Task[Any, Any]] | Outcome:
    """The run and its task, or the outcome of a call that must not run (expired, unknown)."""
    if not is_eager and expired(message):
        return revoked_outcome(app, message, "expired")
    request = build_request(
        message, hostname=hostname, delivery_info=delivery_info, is_eager=is_eager
    )
    run = _Run(app, message, request)
    try:
        return run, app.get_task(message.task)
    except NotRegistered as exc:
        return run.unknown(exc)


def execute(
    app: Taskframe,
    message: TaskMessage,
    *,
    hostname: str | None = None,
    delivery_info: dict[str, Any] | None = None,
    is_eager: bool = False,
) -> Outcome:
    """Run one task call to completion in this thread."""
    prepared = prepare(app, message, hostname, delivery_info, is_eager)
    if isinstance(prepared, Outcome):
        return prepared
    run, task = prepared
    request = run.request
    with request_context(request), task_log_context(message.task, message.id):
        retval: Any = None
        error: BaseException | None = None
        try:
            run.begin(task)
            retval = task(*message.args, **message.kwargs)
            if inspect.isawaitable(retval):
                from taskframe.execution_async import run_to_completion

                retval = run_to_completion(retval)
        except Exception as exc:
            error = exc
        return run.handle(task, retval, error)


def expired(message: TaskMessage) -> bool:
    return message.expires is not None and message.expires <= utcnow()
