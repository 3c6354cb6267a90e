"""The Redis interop matrix: real Celery 5 workers and taskframe workers, one real Redis.

Celery→taskframe: a Celery app sends, a taskframe worker subprocess runs, Celery's AsyncResult
reads. taskframe→Celery: the reverse. Each direction covers plain calls, countdown, priority,
retry and reading results (values and failures); the matrix is printed at the end of the
module and every cell is asserted. The tasks record their runs in Redis themselves
(``interop_apps.tasks``), so run counts and run times do not rely on either framework.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from conftest import REDIS_HOST, REDIS_PORT, require_server, wait_for
from interop_apps.processes import celery_worker, taskframe_worker

from taskframe import Taskframe
from taskframe.brokers.redis import RedisBroker

pytestmark = [pytest.mark.redis, pytest.mark.interop, pytest.mark.slow]

INTEROP_DB = 13
CELLS = ("plain", "countdown", "priority", "retry", "result read")
DIRECTIONS = ("Celery → taskframe", "taskframe → Celery")
COUNTDOWN = 2.0
PRIORITY_QUEUE = "interop.prio"
MATRIX: dict[str, dict[str, str]] = {direction: {} for direction in DIRECTIONS}
SYMBOLS = {"ok": "✓", "-": "-"}


@pytest.fixture(scope="module", autouse=True)
def print_matrix(request: pytest.FixtureRequest) -> Iterator[None]:
    """Write the matrix to the terminal once both directions have run."""
    yield
    lines = ["", "Redis interop matrix (✓ passed, ✗ failed, - not run)"]
    lines.append(f"{'':22}" + "".join(f"{cell:>13}" for cell in CELLS))
    for direction in DIRECTIONS:
        marks = [SYMBOLS.get(MATRIX[direction].get(cell, "-"), "✗") for cell in CELLS]
        lines.append(f"{direction:22}" + "".join(f"{mark:>13}" for mark in marks))
    for direction in DIRECTIONS:
        for cell, outcome in MATRIX[direction].items():
            if outcome != "ok":
                lines.append(f"  {direction} / {cell}: {outcome}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    assert capture is not None
    with capture.global_and_fixture_disabled():
        print("\n".join(lines), flush=True)


@pytest.fixture
def interop_url() -> Iterator[str]:
    """Database 13 of the shared Redis, emptied before and after: the workers' and apps' own."""
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=INTEROP_DB)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{INTEROP_DB}"
    client.flushdb()
    client.close()


@pytest.fixture
def client(interop_url: str) -> Iterator[redis.Redis[bytes]]:
    connection: redis.Redis[bytes] = redis.Redis.from_url(interop_url)
    yield connection
    connection.close()


@pytest.fixture
def celery_client(interop_url: str) -> Iterator[Celery]:
    app = Celery("interop-client", broker=interop_url, backend=interop_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    yield app
    app.close()


@pytest.fixture
def taskframe_client(interop_url: str) -> Iterator[Taskframe]:
    app = Taskframe("interop-client", broker=interop_url, backend=interop_url)
    yield app
    app.broker.close()


def check(direction: str, cell: str, run: Callable[[], None]) -> None:
    """Run one cell, recording ✓ or the failure; the test asserts all cells at its end."""
    try:
        run()
    except Exception as exc:  # every failure of a cell is reported in the matrix
        MATRIX[direction][cell] = f"{type(exc).__name__}: {exc}"[:400]
    else:
        MATRIX[direction][cell] = "ok"


def assert_all_cells(direction: str) -> None:
    failed = {cell: outcome for cell, outcome in MATRIX[direction].items() if outcome != "ok"}
    assert set(MATRIX[direction]) == set(CELLS)
    assert failed == {}


def stamps(client: redis.Redis[bytes], key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def key(name: str) -> str:
    return f"interop:{name}:{uuid.uuid4().hex[:8]}"


def test_celery_sends_taskframe_runs(
    celery_client: Celery, client: redis.Redis[bytes], interop_url: str, tmp_path: Path
) -> None:
    direction, ran_once = DIRECTIONS[0], []
    # Given priority messages Celery queued before any worker consumed their queue
    order_key = key("prio")
    for level in (9, 6, 3, 0):
        celery_client.send_task(
            "interop.record", (order_key, f"p{level}"), queue=PRIORITY_QUEUE, priority=level
        )
    # And a taskframe worker on the default queue
    worker = taskframe_worker(tmp_path / "taskframe.log", interop_url, "-c", "2")
    try:
        worker.wait_ready()

        def plain() -> None:
            assert celery_client.send_task("interop.add", (2, 3)).get(timeout=20) == 5

        def countdown() -> None:
            stamp_key = key("stamp")
            sent_at = time.time()
            result = celery_client.send_task("interop.stamp", (stamp_key,), countdown=COUNTDOWN)
            # The ETA message arrives at once; the taskframe worker parks it in Redis
            wait_for(lambda: client.zcard("taskframe.delayed") == 1, timeout=COUNTDOWN)
            ran_at = result.get(timeout=20)
            assert ran_at >= sent_at + COUNTDOWN - 0.01
            assert client.zcard("taskframe.delayed") == 0
            [run] = stamps(client, stamp_key)
            assert (run["at"], run["side"]) == (ran_at, "taskframe")
            ran_once.append(stamp_key)

        check(direction, "plain", plain)
        check(direction, "countdown", countdown)
        attempts = key("attempts")
        check(direction, "retry", lambda: check_retry(celery_client, client, attempts, "taskframe"))
        check(direction, "result read", lambda: check_result_read(celery_client, "taskframe"))
    finally:
        worker.stop()

    def priority() -> None:
        # When one taskframe worker, one message at a time, drains the priority queue
        drainer = taskframe_worker(
            tmp_path / "taskframe-prio.log", interop_url,
            "-Q", PRIORITY_QUEUE, "-c", "1", "-P", "threads", "--prefetch-multiplier", "1",
            "--burst",
        )  # fmt: skip
        assert drainer.wait_exit(timeout=30) == 0, drainer.output()
        # Then lower numbers ran first, Celery's meaning of priority on Redis
        assert client.lrange(order_key, 0, -1) == [b"p0", b"p3", b"p6", b"p9"]

    check(direction, "priority", priority)
    # Long after it was due, the countdown task still ran exactly once
    assert [len(stamps(client, stamp_key)) for stamp_key in ran_once] == [1] * len(ran_once)
    assert_all_cells(direction)


def test_taskframe_sends_celery_runs(
    taskframe_client: Taskframe,
    client: redis.Redis[bytes],
    interop_url: str,
    tmp_path: Path,
) -> None:
    direction, ran_once = DIRECTIONS[1], []
    broker = taskframe_client.broker
    assert isinstance(broker, RedisBroker)
    # Given priority messages taskframe queued before any worker consumed their queue
    order_key = key("prio")
    for level in (9, 6, 3, 0):
        taskframe_client.send_task(
            "interop.record", (order_key, f"p{level}"), queue=PRIORITY_QUEUE, priority=level
        )
    # And a Celery worker on the default queue
    worker = celery_worker(tmp_path / "celery.log", interop_url, "-c", "2", "-P", "prefork")
    try:
        worker.wait_ready()

        def plain() -> None:
            assert taskframe_client.send_task("interop.add", (2, 3)).get(timeout=20) == 5

        def countdown() -> None:
            # Durable (default): the message waits in Redis until a taskframe process moves it
            durable_key, held_key = key("durable"), key("held")
            sent_at = time.time()
            durable = taskframe_client.send_task("interop.stamp", (durable_key,), countdown=2)
            assert client.zcard("taskframe.delayed") == 1
            # durable_delays=False: sent at once with its eta; the Celery worker holds it
            held_app = Taskframe(
                "interop-held",
                broker=interop_url,
                backend=interop_url,
                broker_transport_options={"durable_delays": False},
            )
            held = held_app.send_task("interop.stamp", (held_key,), countdown=COUNTDOWN)
            held_app.broker.close()
            assert client.zcard("taskframe.delayed") == 1

            def moved_and_ran() -> bool:
                broker.promote_due()
                return durable.ready()

            wait_for(moved_and_ran, timeout=20)
            for result, stamp_key in ((durable, durable_key), (held, held_key)):
                ran_at = result.get(timeout=20)
                assert ran_at >= sent_at + COUNTDOWN - 0.01
                [run] = stamps(client, stamp_key)
                assert (run["at"], run["side"]) == (ran_at, "celery")
            ran_once.append(durable_key)

        check(direction, "plain", plain)
        check(direction, "countdown", countdown)
        attempts = key("attempts")
        check(direction, "retry", lambda: check_retry(taskframe_client, client, attempts, "celery"))
        check(direction, "result read", lambda: check_result_read(taskframe_client, "celery"))
    finally:
        worker.stop()

    def priority() -> None:
        # When one Celery worker, one message at a time, drains the priority queue
        drainer = celery_worker(
            tmp_path / "celery-prio.log", interop_url,
            "-Q", PRIORITY_QUEUE, "-c", "1", "-P", "solo", "--prefetch-multiplier", "1",
        )  # fmt: skip
        try:
            wait_for(lambda: client.llen(order_key) == 4, timeout=30)
        finally:
            drainer.stop()
        # Then lower numbers ran first, as taskframe's Redis broker serves them too
        assert client.lrange(order_key, 0, -1) == [b"p0", b"p3", b"p6", b"p9"]

    check(direction, "priority", priority)
    # Long after it was due, the countdown task still ran exactly once
    assert [len(stamps(client, stamp_key)) for stamp_key in ran_once] == [1] * len(ran_once)
    assert_all_cells(direction)


def check_retry(sender: Any, client: Any, attempts_key: str, side: str) -> None:
    """A task that fails twice then succeeds: retried by the worker on ``side``."""
    result = sender.send_task("interop.flaky", (attempts_key, 2))
    assert result.get(timeout=20) == {"attempts": 3, "retries": 2, "side": side}
    assert int(client.get(attempts_key) or 0) == 3


def check_result_read(sender: Any, side: str) -> None:
    """A nested value and a failure, stored by ``side``, read by the sender's AsyncResult."""
    value = {"nested": [1, {"two": 2.5}], "text": "ünïcode"}
    described = sender.send_task("interop.describe", (value,)).get(timeout=20)
    assert described == {"echo": value, "side": side, "items": [1, 2.5, "three", None, True]}
    failing = sender.send_task("interop.fail", ("boom",))
    with pytest.raises(ValueError, match="boom"):
        failing.get(timeout=20)
    assert failing.state == "FAILURE"
