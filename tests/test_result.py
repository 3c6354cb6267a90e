"""Results: AsyncResult states and values, errors re-raised, expiry, GroupResult.

Given tasks run by an in-process worker on memory:// and sqlite, when their outcome is read
through ``AsyncResult``, then it reports Celery's states and re-raises the task's own error.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_for

from taskframe import AsyncResult, GroupResult, Task, Taskframe, states
from taskframe.exceptions import RemoteTaskError, TaskRevokedError, TimeoutError
from taskframe.timeutils import utcnow


class InventoryError(Exception):
    """An application error the client can import."""


class VanishedError(Exception):
    """An error whose class the client cannot import (its module does not exist here)."""


VanishedError.__module__ = "tf_module_that_does_not_exist"


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


def test_unknown_id_is_pending(app: Taskframe) -> None:
    result = app.AsyncResult(str(uuid.uuid4()))

    assert result.state == result.status == states.PENDING
    assert result.result is None
    assert result.traceback is None
    assert not result.ready()
    assert not result.successful()
    assert not result.failed()


def test_get_times_out_with_timeout_error(app: Taskframe) -> None:
    @app.task
    def never_run() -> None: ...

    result = never_run.delay()

    with pytest.raises(TimeoutError, match=result.id):
        result.get(timeout=0.1)
    assert result.state == states.PENDING


def test_success(app: Taskframe) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    before = utcnow()
    with app.test_worker():
        result: AsyncResult[int] = add.delay(2, 3)
        assert result.get(timeout=10) == 5
    assert result.wait(timeout=1) == 5
    assert result.state == states.SUCCESS
    assert result.ready() and result.successful() and not result.failed()
    assert result.result == result.info == 5
    assert result.date_done is not None and result.date_done >= before.replace(microsecond=0)
    fresh = app.AsyncResult(result.id)
    assert (fresh.state, fresh.result) == (states.SUCCESS, 5)
    assert fresh == result.id and fresh == result and hash(fresh) == hash(result)


def test_started_state_with_task_track_started(app: Taskframe) -> None:
    app.conf.task_track_started = True
    release = threading.Event()

    @app.task
    def slow() -> str:
        release.wait(10)
        return "done"

    with app.test_worker():
        result = slow.delay()
        wait_for(lambda: app.AsyncResult(result.id).state == states.STARTED)
        assert isinstance(app.AsyncResult(result.id).info, dict)
        release.set()
        assert result.get(timeout=10) == "done"


def test_failure_reraises_the_original_exception_type(app: Taskframe) -> None:
    @app.task
    def fails(item: str) -> None:
        raise InventoryError(f"out of {item}")

    with app.test_worker():
        result = fails.delay("bolts")
        with pytest.raises(InventoryError, match="out of bolts"):
            result.get(timeout=10)
    assert result.state == states.FAILURE
    assert result.failed() and result.ready() and not result.successful()
    assert isinstance(result.result, InventoryError)
    assert "InventoryError" in (result.traceback or "")
    assert "out of bolts" in (result.traceback or "")
    fresh = app.AsyncResult(result.id)
    with pytest.raises(InventoryError):
        fresh.get(timeout=1)


def test_propagate_false_returns_the_exception(app: Taskframe) -> None:
    @app.task
    def fails() -> None:
        raise KeyError("missing")

    with app.test_worker():
        value = fails.delay().get(timeout=10, propagate=False)
    assert isinstance(value, KeyError)


def test_unimportable_exception_becomes_remote_task_error_naming_it(app: Taskframe) -> None:
    @app.task
    def fails() -> None:
        raise VanishedError("gone")

    with app.test_worker():
        result = fails.delay()
        with pytest.raises(RemoteTaskError) as info:
            result.get(timeout=10)
    text = str(info.value)
    assert "VanishedError" in text
    assert "tf_module_that_does_not_exist" in text
    assert "gone" in text


def test_retry_state(app: Taskframe) -> None:
    @app.task(bind=True)
    def waits(self: Task[[], None]) -> None:
        raise self.retry(exc=InventoryError("later"), countdown=300)

    with app.test_worker():
        result = waits.delay()
        wait_for(lambda: app.AsyncResult(result.id).state == states.RETRY)
    assert not result.ready()
    assert isinstance(result.info, InventoryError)


def test_revoked_state_reads_as_task_revoked_error(app: Taskframe) -> None:
    task_id = str(uuid.uuid4())
    app.store_result(task_id, states.REVOKED, TaskRevokedError("revoked by operator"))
    result = app.AsyncResult(task_id)

    assert result.state == states.REVOKED
    assert result.ready() and not result.successful()
    with pytest.raises(TaskRevokedError, match="revoked by operator"):
        result.get(timeout=1)


def test_forget_removes_the_stored_result(app: Taskframe) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with app.test_worker():
        result = add.delay(1, 1)
        assert result.get(timeout=10) == 2
    result.forget()

    assert result.state == states.PENDING
    assert app.AsyncResult(result.id).state == states.PENDING


def test_then_calls_back_once_ready(app: Taskframe) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    seen: list[Any] = []
    called = threading.Event()

    def callback(result: AsyncResult[int]) -> None:
        seen.append(result.get())
        called.set()

    with app.test_worker():
        result = add.delay(4, 4)
        thread = result.then(callback)
        assert called.wait(10)
        thread.join(5)
    assert seen == [8]


def test_result_expires_is_honoured(app: Taskframe) -> None:
    app.conf.result_expires = 0.3

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with app.test_worker():
        result = add.delay(1, 2)
        assert result.get(timeout=10) == 3
    wait_for(lambda: app.AsyncResult(result.id).state == states.PENDING, timeout=5)


def test_group_result_save_and_restore(app: Taskframe) -> None:
    @app.task
    def square(x: int) -> int:
        return x * x

    with app.test_worker():
        members = [square.delay(i) for i in range(4)]
        group = app.GroupResult(str(uuid.uuid4()), members).save()
        restored = GroupResult.restore(group.id, app=app)
        assert restored is not None
        assert [r.id for r in restored] == [r.id for r in members]
        assert restored.get(timeout=10) == [0, 1, 4, 9]
    assert restored.ready() and restored.successful() and not restored.failed()
    assert restored.completed_count() == 4
    assert len(restored) == 4 and restored[1].id == members[1].id
    restored.delete()
    assert GroupResult.restore(group.id, app=app) is None
