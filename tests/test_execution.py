"""``execute`` / ``execute_async``: one task run, its stored state and how to settle it."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from taskframe import Taskframe, states
from taskframe.exceptions import SoftTimeLimitExceeded, TaskRevokedError, WorkerLostError
from taskframe.execution import ACK, execute, fail_unfinished
from taskframe.execution_async import HARD_LIMIT_CANCEL, SOFT_LIMIT_CANCEL, execute_async
from taskframe.protocol import TaskMessage
from taskframe.timeutils import utcnow


@pytest.fixture
def app() -> Taskframe:
    return Taskframe("execapp", broker="memory://", set_as_current=False)


def message(name: str, *args: Any, **fields: Any) -> TaskMessage:
    return TaskMessage(id=f"id-{name}", task=name, args=list(args), kwargs={}, **fields)


def test_expired_message_is_stored_revoked_and_not_run(app: Taskframe) -> None:
    ran: list[int] = []

    @app.task(name="late")
    def late() -> None:
        ran.append(1)

    outcome = execute(app, message("late", expires=utcnow() - timedelta(seconds=1)))
    assert (outcome.state, outcome.reason, outcome.settle) == (states.REVOKED, "expired", ACK)
    assert ran == []
    assert app.AsyncResult("id-late").state == states.REVOKED


def test_task_revoked_error_inside_a_task_is_a_revoke(app: Taskframe) -> None:
    @app.task(name="stopped")
    def stopped() -> None:
        raise TaskRevokedError("terminated")

    outcome = execute(app, message("stopped"))
    assert outcome.state == states.REVOKED
    assert app.AsyncResult("id-stopped").state == states.REVOKED


def test_fail_unfinished_stores_failure_and_calls_the_hook(app: Taskframe) -> None:
    failures: list[BaseException] = []

    @app.task(name="lost")
    def lost() -> None:
        raise AssertionError("never runs here")

    lost.on_failure = lambda exc, *rest: failures.append(exc)  # type: ignore[method-assign]
    outcome = fail_unfinished(app, message("lost"), WorkerLostError("child died"))
    assert outcome.state == states.FAILURE
    assert isinstance(failures[0], WorkerLostError)
    assert app.AsyncResult("id-lost").state == states.FAILURE


def test_soft_cancel_is_thrown_into_the_coroutine_and_hard_cancel_fails_it(
    app: Taskframe,
) -> None:
    @app.task(name="careful")
    async def careful() -> str:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0)
            return "cleaned up"
        return "finished"

    @app.task(name="stubborn")
    async def stubborn() -> None:
        await asyncio.sleep(30)

    async def run(name: str, reason: str) -> Any:
        running = asyncio.ensure_future(execute_async(app, message(name)))
        await asyncio.sleep(0.01)
        running.cancel(reason)
        return await running

    soft = asyncio.run(run("careful", SOFT_LIMIT_CANCEL))
    assert (soft.state, soft.retval) == (states.SUCCESS, "cleaned up")
    hard = asyncio.run(run("stubborn", HARD_LIMIT_CANCEL))
    assert hard.state == states.FAILURE
    assert "TimeLimitExceeded" in repr(hard.exception)
