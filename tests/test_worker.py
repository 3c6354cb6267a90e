"""The worker suite, run in-process on every contract broker (``broker_url``).

Broker engineers add their URL to ``CONTRACT_BROKERS`` and these tests run on their store.
Each test sends tasks, runs ``app.test_worker()`` and checks what the store and the result
backend hold afterwards: states, dead letters, acks, redeliveries.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest.mock import ANY

import pytest
from conftest import wait_for

from taskframe import Taskframe, states
from taskframe.brokers.base import BACKEND_SCHEMES
from taskframe.exceptions import BrokerError, Reject, SoftTimeLimitExceeded, TaskRevokedError
from taskframe.signals import (
    Signal,
    task_failure,
    task_postrun,
    task_prerun,
    task_received,
    task_rejected,
    task_retry,
    task_revoked,
    task_success,
    task_unknown,
    worker_init,
    worker_ready,
    worker_shutdown,
)
from taskframe.worker import Worker


def require_broadcast(app: Taskframe) -> None:
    """Remote control travels by broadcast, which some stores (SQS) do not have."""
    if not app.broker.capabilities.broadcast:
        pytest.skip(f"{app.broker.scheme}:// has no broadcast, so no remote control")


def make_app(broker_url: str, **settings: Any) -> Taskframe:
    """An app on ``broker_url``; results in the same store when it keeps results, else in
    memory (the worker runs in this process)."""
    scheme = broker_url.split("://", 1)[0]
    backend = broker_url if scheme in BACKEND_SCHEMES else "memory://"
    return Taskframe("tw", broker=broker_url, backend=backend, set_as_current=False, **settings)


@pytest.fixture
def app(broker_url: str) -> Iterator[Taskframe]:
    app = make_app(broker_url)
    yield app
    app.close()


@contextmanager
def receiving(signal: Signal, receiver: Callable[..., Any]) -> Iterator[None]:
    signal.connect(receiver, weak=False)
    try:
        yield
    finally:
        signal.disconnect(receiver)


def dead_letters(app: Taskframe, queue: str = "celery") -> list[Any]:
    return app.broker.dead_letters(queue)


@pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])
def test_tasks_run_on_every_in_process_pool(app: Taskframe, pool: str) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def async_add(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    with app.test_worker(pool=pool, concurrency=2):
        results = [add.delay(i, i) for i in range(10)] + [async_add.delay(1, 2)]
        values = [result.get(timeout=10) for result in results]
    assert values == [i + i for i in range(10)] + [3]


def test_async_tasks_run_concurrently_on_the_asyncio_pool(app: Taskframe) -> None:
    gate = threading.Event()
    running: list[int] = []

    @app.task
    async def wait_together(number: int) -> int:
        running.append(number)
        while len(running) < 5:
            await asyncio.sleep(0.005)
        return number

    @app.task
    def blocking() -> str:
        gate.wait(10)
        return "thread"

    with app.test_worker(pool="asyncio", concurrency=10):
        stuck = blocking.delay()
        results = [wait_together.delay(i) for i in range(5)]
        assert sorted(result.get(timeout=10) for result in results) == [0, 1, 2, 3, 4]
        gate.set()
        assert stuck.get(timeout=10) == "thread"


def test_retry_keeps_ids_counts_retries_and_stores_retry(app: Taskframe) -> None:
    seen: list[tuple[str | None, int, str | None, str | None]] = []

    @app.task(bind=True, max_retries=3)
    def flaky(self: Any) -> str:
        request = self.request
        seen.append((request.id, request.retries, request.root_id, request.parent_id))
        if request.retries < 2:
            raise self.retry(exc=ValueError("not yet"), countdown=0.05)
        return "done"

    retry_states: list[str] = []
    with (
        receiving(task_retry, lambda **kw: retry_states.append(kw["request"].id)),
        app.test_worker(),
    ):
        result = flaky.delay()
        assert result.get(timeout=10) == "done"
    assert [entry[1] for entry in seen] == [0, 1, 2]
    assert {entry[0] for entry in seen} == {result.id}
    assert {entry[2] for entry in seen} == {result.id}
    assert [entry[3] for entry in seen] == [None, result.id, result.id]
    assert retry_states == [result.id, result.id]


def test_autoretry_with_backoff_dead_letters_with_last_error(app: Taskframe) -> None:
    attempts: list[int] = []

    @app.task(
        bind=True,
        autoretry_for=(ConnectionError,),
        max_retries=2,
        retry_backoff=0.01,
        retry_jitter=False,
    )
    def unreachable(self: Any) -> None:
        attempts.append(self.request.retries)
        raise ConnectionError(f"attempt {self.request.retries}")

    with app.test_worker() as worker:
        result = unreachable.delay()
        wait_for(lambda: dead_letters(app), timeout=10)
        worker.join()
    assert attempts == [0, 1, 2]
    assert result.state == states.FAILURE
    (parked,) = dead_letters(app)
    headers = parked.message.headers
    assert headers["id"] == result.id
    assert "retries exhausted" in parked.reason
    assert "attempt 2" in headers["x-dead-letter-exception"]
    assert "ConnectionError" in headers["x-dead-letter-traceback"]
    assert headers["x-dead-letter-retries"] == 2
    assert headers["retries"] == 0
    assert headers["x-dead-letter-time"]


def test_custom_backoff_strategy_and_dont_autoretry_for(app: Taskframe) -> None:
    countdowns: list[int] = []

    def strategy(retries: int) -> float:
        countdowns.append(retries)
        return 0.01

    @app.task(
        autoretry_for=(Exception,),
        dont_autoretry_for=(KeyError,),
        max_retries=1,
        backoff_strategy=strategy,
    )
    def fails(kind: str) -> None:
        raise KeyError(kind) if kind == "key" else ValueError(kind)

    with app.test_worker() as worker:
        key_error = fails.delay("key")
        value_error = fails.delay("value")
        with pytest.raises(KeyError):
            key_error.get(timeout=10)
        with pytest.raises(ValueError):
            value_error.get(timeout=10)
        worker.join()
    assert countdowns == [0, 1]
    assert [parked.message.headers["id"] for parked in dead_letters(app)] == [value_error.id]


def test_reject_dead_letters_and_replay_resets_retries(app: Taskframe) -> None:
    calls: list[int] = []

    @app.task(bind=True)
    def picky(self: Any) -> str:
        calls.append(self.request.retries)
        if len(calls) == 1:
            raise Reject("bad input", requeue=False)
        return "accepted"

    with app.test_worker() as worker:
        result = picky.apply_async(retries=1)
        wait_for(lambda: dead_letters(app), timeout=10)
        (parked,) = dead_letters(app)
        assert parked.reason.startswith("rejected")
        assert app.broker.replay_dead_letters("celery") == 1
        assert result.get(timeout=10) == "accepted"
        worker.join()
    assert calls == [1, 0]
    assert dead_letters(app) == []


def test_poison_messages_are_dead_lettered_and_the_worker_goes_on(app: Taskframe) -> None:
    @app.task
    def ok() -> str:
        return "ok"

    rejected: list[Any] = []
    unknown: list[str] = []
    queue, _, good = app.build_message("test_worker.ok")
    _, _, ghost = app.build_message("test_worker.no_such_task")
    _, _, garbage = app.build_message("test_worker.ok")
    garbage.body = b"{not json"
    app.broker.publish_many([(queue, m, 0.0, None) for m in (garbage, ghost, good)])
    with (
        receiving(task_rejected, lambda **kw: rejected.append(kw["message"])),
        receiving(task_unknown, lambda **kw: unknown.append(kw["name"])),
        app.test_worker() as worker,
    ):
        worker.join()
        assert app.AsyncResult(good.headers["id"]).get(timeout=10) == "ok"
    reasons = sorted(parked.reason.split(":")[0] for parked in dead_letters(app))
    assert reasons == ["malformed message", "unknown task"]
    assert len(rejected) == 1
    assert unknown == ["test_worker.no_such_task"]


def test_expired_message_is_revoked_without_running(app: Taskframe) -> None:
    ran: list[int] = []

    @app.task
    def late() -> None:
        ran.append(1)

    revoked: list[dict[str, Any]] = []
    result = late.apply_async(expires=0.0)
    with receiving(task_revoked, lambda **kw: revoked.append(kw)), app.test_worker() as worker:
        worker.join()
        wait_for(lambda: result.state == states.REVOKED)
    assert ran == []
    assert revoked[0]["expired"] is True
    assert "expired" in str(result.info)


def test_revoke_before_start_is_kept_across_worker_restarts(app: Taskframe) -> None:
    ran: list[str] = []

    @app.task
    def job(name: str) -> str:
        ran.append(name)
        return name

    doomed = job.delay("doomed")
    app.control.revoke(doomed.id)
    kept = job.delay("kept")
    with app.test_worker() as worker:
        assert kept.get(timeout=10) == "kept"
        worker.join()
    assert doomed.state == states.REVOKED
    assert ran == ["kept"]
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=1)


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_revoke_with_terminate_stops_a_running_task(app: Taskframe, pool: str) -> None:
    started = threading.Event()

    @app.task
    async def forever_async() -> None:
        started.set()
        await asyncio.sleep(60)

    @app.task
    def forever_sync() -> None:
        started.set()
        for _ in range(6000):
            time.sleep(0.01)

    forever = forever_async if pool == "asyncio" else forever_sync
    require_broadcast(app)
    with app.test_worker(pool=pool, hostname="terminator@test"):
        result = forever.delay()
        assert started.wait(10)
        inspect = app.control.inspect(destination=["terminator@test"])
        wait_for(lambda: inspect.active() == {"terminator@test": [ANY]})
        app.control.revoke(result.id, terminate=True)
        wait_for(lambda: result.state == states.REVOKED, timeout=10)


def test_rate_limited_task_does_not_block_others(app: Taskframe) -> None:
    limited_at: list[float] = []
    free_done: list[float] = []

    @app.task(rate_limit="20/s")
    def limited() -> None:
        limited_at.append(time.monotonic())

    @app.task
    def free() -> None:
        free_done.append(time.monotonic())

    with app.test_worker(concurrency=2, prefetch_multiplier=10) as worker:
        for _ in range(6):
            limited.delay()
        for _ in range(6):
            free.delay()
        worker.join()
    assert len(limited_at) == 6 and len(free_done) == 6
    # 20/s: six runs span at least five intervals (0.25 s; start times jitter by the ack
    # round trip on remote brokers), and no two run in a burst
    gaps = [later - earlier for earlier, later in itertools.pairwise(limited_at)]
    assert limited_at[-1] - limited_at[0] >= 0.2
    assert min(gaps) >= 0.02
    assert max(free_done) < limited_at[-1]


def test_soft_time_limit_is_raised_inside_a_thread_task(app: Taskframe) -> None:
    @app.task(soft_time_limit=0.2)
    def slow() -> str:
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "finished"

    with app.test_worker():
        assert slow.delay().get(timeout=10) == "cleaned up"


def test_asyncio_soft_limit_is_catchable_and_hard_limit_fails(app: Taskframe) -> None:
    @app.task(soft_time_limit=0.1)
    async def soft() -> str:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            await asyncio.sleep(0)
            return "cleaned up"
        return "finished"

    @app.task(time_limit=0.1)
    async def hard() -> None:
        await asyncio.sleep(30)

    with app.test_worker(pool="asyncio"):
        assert soft.delay().get(timeout=10) == "cleaned up"
        failed = hard.delay()
        wait_for(lambda: failed.state == states.FAILURE, timeout=10)
    assert "TimeLimitExceeded" in repr(failed.info)


def test_late_ack_failure_is_dead_lettered_when_failures_are_not_acked(app: Taskframe) -> None:
    @app.task(acks_late=True, acks_on_failure_or_timeout=False)
    def breaks() -> None:
        raise RuntimeError("boom")

    with app.test_worker() as worker:
        result = breaks.delay()
        wait_for(lambda: dead_letters(app), timeout=10)
        worker.join()
    assert result.state == states.FAILURE
    assert dead_letters(app)[0].message.headers["id"] == result.id


def test_visibility_is_extended_while_a_late_ack_task_runs(broker_url: str) -> None:
    app = make_app(broker_url, broker_transport_options={"visibility_timeout": 0.3})
    runs: list[str] = []

    @app.task(acks_late=True)
    def long_task() -> None:
        runs.append("run")
        time.sleep(1.0)

    with app.test_worker(concurrency=2) as worker:
        result = long_task.delay()
        result.get(timeout=10)
        worker.join()
    assert runs == ["run"]
    app.close()


def test_a_refused_visibility_extension_is_a_warning_not_a_dead_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a store that refuses to extend (SQS does, for a message delivered again)
    from taskframe.brokers.memory import _MemoryDelivery

    def refuse(self: _MemoryDelivery, seconds: float) -> None:
        raise BrokerError("the receipt handle is no longer valid")

    monkeypatch.setattr(_MemoryDelivery, "extend", refuse)
    app = make_app("memory://", broker_transport_options={"visibility_timeout": 0.3})

    @app.task(acks_late=True)
    def long_task() -> str:
        time.sleep(0.5)
        return "done"

    # Then the worker warns and goes on running what it is sent
    with app.test_worker(concurrency=1):
        assert long_task.delay().get(timeout=10) == "done"
        assert long_task.delay().get(timeout=10) == "done"
    assert "could not keep a message from celery invisible" in caplog.text
    app.close()


def test_prefetch_limit_bounds_the_messages_held(app: Taskframe) -> None:
    gate = threading.Event()

    @app.task
    def blocked() -> None:
        gate.wait(10)

    for _ in range(20):
        blocked.delay()
    with app.test_worker(concurrency=2, prefetch_multiplier=3) as worker:
        wait_for(lambda: worker.stats()["held"] == 6)
        left = app.broker.size("celery")
        if app.broker.scheme == "amqp":  # RabbitMQ pushes ahead, up to the window unacked
            assert 14 - 6 <= left <= 14
        else:
            assert left == 14
        gate.set()
        worker.join()


def test_warm_stop_returns_unstarted_messages_at_once(app: Taskframe) -> None:
    gate = threading.Event()
    done: list[int] = []

    @app.task
    def blocked(number: int) -> None:
        gate.wait(10)
        done.append(number)

    for number in range(10):
        blocked.delay(number)
    worker = Worker(app, pool="threads", concurrency=2, prefetch_multiplier=4)
    thread = threading.Thread(target=worker.start)
    thread.start()
    wait_for(lambda: worker.stats()["held"] == 8)
    worker.stop()
    # another consumer sees them: none stays with this worker (RabbitMQ pushed it more ahead);
    # a memory:// store lives in its broker object, so there the same broker looks
    shared = app.broker.capabilities.persistent
    other = make_app(app.conf.broker_url) if shared else app
    try:
        wait_for(lambda: other.broker.size("celery") == 8)
    finally:
        if shared:
            other.close()
    gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert len(done) == 2


def test_worker_and_task_signals_are_sent(app: Taskframe) -> None:
    @app.task
    def good() -> int:
        return 1

    @app.task
    def bad() -> None:
        raise ValueError("bad")

    seen: list[str] = []
    hooked = [
        (worker_init, "worker_init"),
        (worker_ready, "worker_ready"),
        (worker_shutdown, "worker_shutdown"),
        (task_received, "task_received"),
        (task_prerun, "task_prerun"),
        (task_postrun, "task_postrun"),
        (task_success, "task_success"),
        (task_failure, "task_failure"),
    ]
    with ExitStack() as stack:
        for signal, name in hooked:
            stack.enter_context(receiving(signal, lambda name=name, **kw: seen.append(name)))
        with app.test_worker(concurrency=1) as worker:
            good.delay().get(timeout=10)
            bad.delay().get(timeout=10, propagate=False)
            worker.join()
    assert seen[:2] == ["worker_init", "worker_ready"]
    assert seen[-1] == "worker_shutdown"
    for name in ("task_received", "task_prerun", "task_postrun"):
        assert seen.count(name) == 2
    assert seen.count("task_success") == 1 and seen.count("task_failure") == 1


def test_control_ping_inspect_and_rate_limit(app: Taskframe) -> None:
    require_broadcast(app)

    @app.task
    def noop() -> None:
        return None

    with app.test_worker(hostname="alpha@test") as worker:
        pong = app.control.ping(destination=["alpha@test"], timeout=5)
        assert pong == [{"alpha@test": {"ok": "pong"}}]
        inspect = app.control.inspect(destination=["alpha@test"], timeout=5)
        stats = inspect.stats()
        assert stats is not None and stats["alpha@test"]["pool"]["implementation"] == "threads"
        # shared tasks defined by other test modules are registered on every app, as in Celery
        user_tasks = sorted(name for name in app.tasks if not name.startswith("celery."))
        assert inspect.registered() == {"alpha@test": user_tasks}
        assert "test_worker.noop" in user_tasks
        assert inspect.active() == {"alpha@test": []}
        app.control.rate_limit("test_worker.noop", "5/s", destination=["alpha@test"])
        wait_for(lambda: worker.rate_limits.rate("test_worker.noop") == 5.0)
        assert app.control.inspect(destination=["nobody@test"], timeout=0.2).ping() is None
