"""``taskframe.testing``: the helpers users test their own tasks with."""

from __future__ import annotations

from typing import Any

import pytest

from taskframe import Taskframe, states
from taskframe.exceptions import ImproperlyConfigured
from taskframe.testing import eager, start_worker


@pytest.fixture
def app() -> Taskframe:
    return Taskframe("testingapp", broker="memory://", set_as_current=False)


def test_test_worker_runs_tasks_and_join_waits_for_retries(app: Taskframe) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=2)
    def flaky(self: Any) -> str:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=0.01)
        return "ok"

    with app.test_worker() as worker:
        result = flaky.delay()
        worker.join(timeout=10)
        assert result.state == states.SUCCESS
    assert attempts == [0, 1, 2]


def test_start_worker_takes_a_pool_and_stops_cleanly(app: Taskframe) -> None:
    @app.task
    async def double(x: int) -> int:
        return 2 * x

    with start_worker(app, pool="asyncio", concurrency=5) as worker:
        assert double.delay(21).get(timeout=10) == 42
        assert worker.pool.name == "asyncio"
    assert worker.ready.is_set()


def test_prefork_is_refused_on_the_memory_broker(app: Taskframe) -> None:
    with (
        pytest.raises(ImproperlyConfigured, match="memory:// broker"),
        start_worker(app, pool="prefork"),
    ):
        pytest.fail("a prefork worker started on memory://")


def test_eager_runs_in_place_and_restores_the_setting(app: Taskframe) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with eager(app):
        assert add.delay(2, 2).get() == 4
    assert app.conf.task_always_eager is False
