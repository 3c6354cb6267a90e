"""Running one task call on the asyncio pool's event loop.

``execute_async()`` is :func:`~taskframe.execution.execute` for the asyncio pool: it awaits
``async def`` tasks on the running loop and runs sync ones through the pool's thread.

Time limits are cancellations with a reason: the pool cancels the asyncio task running
``execute_async`` with :data:`SOFT_LIMIT_CANCEL` or :data:`HARD_LIMIT_CANCEL`. A soft cancel
is turned back, at the coroutine's own ``await``, into :class:`SoftTimeLimitExceeded` thrown
into the task, which may catch it and clean up (the asyncio task is ``uncancel``-ed, so the
coroutine goes on normally). A hard cancel reaches the task as ``CancelledError`` (for
``finally`` blocks) and fails it with ``TimeLimitExceeded``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from taskframe.context import request_context
from taskframe.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from taskframe.execution import Outcome, prepare
from taskframe.protocol import TaskMessage
from taskframe.utils.log import task_log_context

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["HARD_LIMIT_CANCEL", "SOFT_LIMIT_CANCEL", "execute_async", "run_to_completion"]

SOFT_LIMIT_CANCEL = "taskframe: soft time limit"
HARD_LIMIT_CANCEL = "taskframe: hard time limit"


async def execute_async(
    app: Taskframe,
    message: TaskMessage,
    *,
    hostname: str | None = None,
    delivery_info: dict[str, Any] | None = None,
    run_sync: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
) -> Outcome:
    """Run one task call on the running event loop; sync tasks run through ``run_sync``
    (a thread), so they never block the loop."""
    prepared = prepare(app, message, hostname, delivery_info, False)
    if isinstance(prepared, Outcome):
        return prepared
    run, task = prepared
    request = run.request
    with request_context(request), task_log_context(message.task, message.id):
        retval: Any = None
        error: BaseException | None = None
        try:
            run.begin(task)
            if task.is_async:
                retval = await _Interruptible(task(*message.args, **message.kwargs))
            elif run_sync is not None:
                import contextvars

                context = contextvars.copy_context()
                retval = await run_sync(lambda: context.run(task, *message.args, **message.kwargs))
            else:
                retval = task(*message.args, **message.kwargs)
        except asyncio.CancelledError as cancelled:
            if cancelled.args[:1] != (HARD_LIMIT_CANCEL,):
                raise
            _uncancel()
            limit = message.timelimit[0]
            error = TimeLimitExceeded(f"TimeLimitExceeded({limit})")
        except Exception as exc:
            error = exc
        return run.handle(task, retval, error)


class _Interruptible:
    """Awaits a coroutine step by step, so a soft-limit cancel of the asyncio task can be
    thrown into that coroutine as :class:`SoftTimeLimitExceeded` instead."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.coroutine = coroutine

    def __await__(self) -> Generator[Any, Any, Any]:
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                if thrown is not None:
                    step = self.coroutine.throw(thrown)
                else:
                    step = self.coroutine.send(sent)
            except StopIteration as stop:
                return stop.value
            try:
                sent, thrown = (yield step), None
            except asyncio.CancelledError as cancelled:
                sent, thrown = None, cancelled
                if cancelled.args[:1] == (SOFT_LIMIT_CANCEL,):
                    _uncancel()
                    thrown = SoftTimeLimitExceeded("SoftTimeLimitExceeded()")
            except BaseException as other:
                sent, thrown = None, other


def _uncancel() -> None:
    """Undo the pool's cancel request (Python 3.11+ counts them; 3.10 needs nothing)."""
    uncancel = getattr(asyncio.current_task(), "uncancel", None)
    if uncancel is not None:
        uncancel()


def run_to_completion(awaitable: Awaitable[Any]) -> Any:
    """What an ``async def`` task run by a sync pool returns, awaited on a loop of its own."""

    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())
