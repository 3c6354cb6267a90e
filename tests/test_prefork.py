"""The prefork pool on its own (no consumer): revoke with ``terminate`` reaches the task in
whichever child it runs, also after it moved to another child."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskframe import Taskframe, states
from taskframe.exceptions import TaskRevokedError, WorkerLostError
from taskframe.worker.job import Job, Report
from taskframe.worker.prefork import PreforkPool


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Taskframe]:
    url = f"sqlite:///{tmp_path / 'prefork.sqlite3'}"
    app = Taskframe("prefork", broker=url, backend=url, set_as_current=False)

    @app.task(name="prefork.nap")
    def nap(seconds: float) -> str:
        time.sleep(seconds)
        return "woke"

    app.finalize()
    yield app
    app.close()


def job(app: Taskframe, number: int, seconds: float) -> Job:
    _queue, _delay, message = app.build_message("prefork.nap", (seconds,))
    return Job(number, message, {}, "prefork.nap", message.headers["id"])


def collect(pool: PreforkPool, count: int, timeout: float = 20) -> list[Report]:
    reports: list[Report] = []
    deadline = time.monotonic() + timeout
    while len(reports) < count and time.monotonic() < deadline:
        reports += pool.poll(0.1)
    assert len(reports) == count, f"{len(reports)} of {count} reports"
    return reports


def test_terminate_stops_the_running_task(app: Taskframe) -> None:
    # Given a child running a long task
    pool = PreforkPool(app, 1, "prefork@test", depth=4)
    pool.start()
    try:
        long = job(app, 1, 30)
        pool.submit_many([long])
        # When it is revoked with terminate
        assert pool.terminate(long.task_id, signal.SIGTERM)
        # Then its report says revoked, and the pool goes on with a new child
        [report] = collect(pool, 1)
        assert report.task_id == long.task_id
        assert isinstance(report.failure, TaskRevokedError)
        quick = job(app, 2, 0)
        pool.submit_many([quick])
        assert [r.state for r in collect(pool, 1)] == [states.SUCCESS]
    finally:
        pool.stop()


def test_terminate_follows_a_queued_task_to_the_next_child(app: Taskframe) -> None:
    # Given a child running a long task with another queued behind it
    pool = PreforkPool(app, 1, "prefork@test", depth=4)
    pool.start()
    try:
        first, second = job(app, 1, 30), job(app, 2, 30)
        pool.submit_many([first, second])
        time.sleep(0.3)
        # When the queued one is revoked with terminate, and then its child dies
        assert pool.terminate(second.task_id, signal.SIGTERM)
        [pid] = pool.pids()
        os.kill(pid, signal.SIGKILL)
        # Then the running one is lost and the queued one, started in the new child, is stopped
        reports = {report.task_id: report for report in collect(pool, 2)}
        assert isinstance(reports[first.task_id].failure, WorkerLostError)
        assert isinstance(reports[second.task_id].failure, TaskRevokedError)
    finally:
        pool.stop()
