"""Canvas interop on one real Redis: chains and chords started by Celery complete on a
taskframe worker subprocess, and the reverse with a real Celery worker subprocess. Both sides
read the other's results, including a chord whose header task fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery import chain as celery_chain
from celery import chord as celery_chord
from celery import group as celery_group
from conftest import REDIS_HOST, REDIS_PORT, require_server
from interop_apps.processes import WorkerProcess, celery_worker, taskframe_worker

from taskframe import Taskframe, chain, chord, group

pytestmark = [pytest.mark.redis, pytest.mark.interop, pytest.mark.slow]

CANVAS_DB = 12
TIMEOUT = 30


@pytest.fixture
def canvas_url() -> Iterator[str]:
    """Database 12 of the shared Redis, emptied before and after."""
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=CANVAS_DB)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{CANVAS_DB}"
    client.flushdb()
    client.close()


@pytest.fixture
def celery_client(canvas_url: str) -> Iterator[Celery]:
    app = Celery("canvas-client", broker=canvas_url, backend=canvas_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    yield app
    app.close()


@pytest.fixture
def taskframe_client(canvas_url: str) -> Iterator[Taskframe]:
    app = Taskframe("canvas-client", broker=canvas_url, backend=canvas_url)
    yield app
    app.close()


def running(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def taskframe_peer(canvas_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    yield from running(taskframe_worker(tmp_path / "taskframe.log", canvas_url, "-c", "2"))


@pytest.fixture
def celery_peer(canvas_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    yield from running(
        celery_worker(tmp_path / "celery.log", canvas_url, "-c", "2", "-P", "threads")
    )


def test_celery_chains_run_on_taskframe(
    celery_client: Celery, taskframe_peer: WorkerProcess
) -> None:
    add = celery_client.signature("interop.add")

    steps = celery_chain(add.clone((1, 2)), add.clone((3,)), add.clone((4,)))()
    assert steps.get(timeout=TIMEOUT) == 10
    assert steps.parent.get(timeout=TIMEOUT) == 6
    linked = add.clone((1, 1), link=add.clone((10,))).apply_async()
    assert linked.get(timeout=TIMEOUT) == 2


def test_celery_chords_run_on_taskframe(
    celery_client: Celery, taskframe_peer: WorkerProcess
) -> None:
    """Celery 5.7 sets the chord size (``.s``) just before it publishes the last header task,
    so the first header tasks may finish before the size exists."""
    add = celery_client.signature("interop.add")
    describe = celery_client.signature("interop.describe")
    fail = celery_client.signature("interop.fail")

    joined = celery_chord([add.clone((i, i)) for i in range(4)])(describe.clone())
    assert joined.get(timeout=TIMEOUT)["echo"] == [0, 2, 4, 6]

    upgraded = (celery_group(add.clone((1, 1)), add.clone((2, 2))) | describe.clone())()
    assert upgraded.get(timeout=TIMEOUT)["echo"] == [2, 4]

    failing = celery_chord([add.clone((1, 1)), fail.clone(("header broke",))])(describe.clone())
    with pytest.raises(ValueError, match="header broke"):
        failing.get(timeout=TIMEOUT)
    error = failing.get(timeout=TIMEOUT, propagate=False)
    assert type(error).__name__ == "ChordError" and "Dependency" in str(error)


def test_taskframe_canvas_runs_on_celery(
    taskframe_client: Taskframe, celery_peer: WorkerProcess
) -> None:
    add = taskframe_client.signature("interop.add")
    describe = taskframe_client.signature("interop.describe")
    fail = taskframe_client.signature("interop.fail")

    steps = chain(add.clone((1, 2)), add.clone((3,)), add.clone((4,)))()
    assert steps.get(timeout=TIMEOUT) == 10
    assert steps.parent.get(timeout=TIMEOUT) == 6

    joined = chord([add.clone((i, i)) for i in range(4)])(describe.clone())
    assert joined.get(timeout=TIMEOUT)["echo"] == [0, 2, 4, 6]

    upgraded = (group(add.clone((1, 1)), add.clone((2, 2))) | describe.clone())()
    assert upgraded.get(timeout=TIMEOUT)["echo"] == [2, 4]

    nested = (add.clone((1, 1)) | group(add.clone((1,)), add.clone((2,))) | describe.clone())()
    assert nested.get(timeout=TIMEOUT)["echo"] == [3, 4]

    failing = chord([add.clone((1, 1)), fail.clone(("header broke",))])(describe.clone())
    with pytest.raises(ValueError, match="header broke"):
        failing.get(timeout=TIMEOUT)
    error = failing.get(timeout=TIMEOUT, propagate=False)
    assert type(error).__name__ == "ChordError" and "Dependency" in str(error)


def test_mixed_fleet_completes_chords(
    taskframe_client: Taskframe, taskframe_peer: WorkerProcess, celery_peer: WorkerProcess
) -> None:
    """Header tasks split between a Celery and a taskframe worker still count as one chord."""
    add = taskframe_client.signature("interop.add")
    describe = taskframe_client.signature("interop.describe")
    joined = chord([add.clone((i, 1)) for i in range(20)])(describe.clone())
    assert joined.get(timeout=TIMEOUT)["echo"] == [i + 1 for i in range(20)]
