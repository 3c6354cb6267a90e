"""Eager mode: ``apply()`` and ``task_always_eager`` run a task here, as a worker would.

Given tasks of an app, when they run eagerly, then they see an eager request, retry in place,
send their follow-ups, propagate (or not) their errors per ``task_eager_propagates``/``throw``,
and publish nothing to the broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskframe import Task, Taskframe, states
from taskframe.result import EagerResult
from taskframe.testing import eager


@pytest.fixture(params=["memory", "sqlite"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """The embedded stores only: these tests need a result backend on the broker's URL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def app(broker_url: str) -> Iterator[Taskframe]:
    application = Taskframe("proj", broker=broker_url)
    yield application
    application.close()


def test_always_eager_runs_delay_in_place(app: Taskframe) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    app.conf.task_always_eager = True
    result = add.delay(2, 3)

    assert isinstance(result, EagerResult)
    assert result.get() == 5
    assert (result.state, result.ready(), result.successful()) == (states.SUCCESS, True, True)
    assert app.broker.size("celery") == 0


def test_eager_propagates_setting_and_throw(app: Taskframe) -> None:
    @app.task
    def fails() -> None:
        raise LookupError("nope")

    with eager(app, propagate=False):
        result = fails.delay()
        assert result.state == states.FAILURE
        assert result.failed()
        assert isinstance(result.get(propagate=False), LookupError)
        with pytest.raises(LookupError):
            result.get()
        with pytest.raises(LookupError, match="nope"):
            fails.apply(throw=True)
    with eager(app, propagate=True), pytest.raises(LookupError, match="nope"):
        fails.delay()
    assert app.conf.task_always_eager is False, "eager() restores the setting"
    assert fails.apply(throw=False).state == states.FAILURE


def test_eager_request(app: Taskframe) -> None:
    @app.task(bind=True)
    def info(self: Task[[int], Any], x: int) -> dict[str, Any]:
        request = self.request
        return {
            "id": request.id,
            "args": request.args,
            "is_eager": request.is_eager,
            "root_id": request.root_id,
            "retries": request.retries,
            "called_directly": request.called_directly,
        }

    seen = info.apply((1,), task_id="eager-1").get()

    assert seen == {
        "id": "eager-1",
        "args": [1],
        "is_eager": True,
        "root_id": "eager-1",
        "retries": 0,
        "called_directly": False,
    }
    assert info.request.called_directly is True, "outside a run the request is empty"


def test_eager_retries_run_in_place_in_order(app: Taskframe) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=3)
    def flaky(self: Task[[], str]) -> str:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=OSError("again"), countdown=60)
        return "ok"

    result = flaky.apply()

    assert result.get() == "ok"
    assert attempts == [0, 1, 2]
    assert app.broker.size("celery") == 0, "eager retries are not published"


def test_eager_nested_calls_get_root_and_parent(app: Taskframe) -> None:
    @app.task(bind=True)
    def child(self: Task[[], Any]) -> list[str | None]:
        return [self.request.root_id, self.request.parent_id]

    @app.task(bind=True)
    def parent(self: Task[[], Any]) -> Any:
        return child.delay().get()

    with eager(app):
        result = parent.delay()
        assert result.get() == [result.id, result.id]


def test_eager_link_callback_runs(app: Taskframe) -> None:
    seen: list[int] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def record(value: int) -> None:
        seen.append(value)

    with eager(app):
        add.apply_async((1, 2), link=record.s())

    assert seen == [3]


def test_store_eager_result(app: Taskframe) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    unstored = add.apply((1, 1))
    app.conf.task_store_eager_result = True
    stored = add.apply((2, 2))

    assert app.AsyncResult(unstored.id).state == states.PENDING
    assert app.AsyncResult(stored.id).state == states.SUCCESS
    assert app.AsyncResult(stored.id).get(timeout=1) == 4
