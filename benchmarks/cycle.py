"""One framework on one broker, once: every workload, in an order that reuses the queue.

1. enqueue via ``delay`` (timed), then purge; on RabbitMQ again from a producer with publisher
   confirms (at most ``CONFIRMED_TASKS``), then purge;
2. a fresh worker: 20 warm-up round trips, 1 s idle, RSS of the whole process tree; then the
   timed round trips (p50/p99) and the chord (publish until the body ran); stop it;
3. enqueue through the batch API (timed); the queue now holds ``batch_tasks`` tasks;
4. a fresh worker drains them: tasks/s between the first and the last completion as stamped
   by Redis (so interpreter start-up is not counted; the start-up-inclusive time is kept in
   the JSON as ``drain_wall``); stop it and purge.

A workload that fails records ``error: ...`` (with the worker log's last lines) and the cycle
goes on; one the framework cannot do records ``n/a (reason)``.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

from benchmarks.counter import Counter
from benchmarks.processes import WorkerProcess
from benchmarks.runner import REPO, Runner, Unavailable
from benchmarks.settings import CONFIRMED_TASKS, BenchConfig

__all__ = ["Outcome", "run_cycle"]

Outcome = float | str
"""A measured number, or the text shown instead of one ("n/a (...)", "error: ...")."""

WARM_UP_ROUND_TRIPS = 20
IDLE_SETTLE_SECONDS = 1.0
FIRST_RESULT_TIMEOUT = 60.0
FIRST_RESULT_POLL = 2.0
ROUND_TRIP_TIMEOUT = 10.0

log = logging.getLogger("benchmarks")

_ALL = (
    "enqueue_delay",
    "enqueue_delay_confirmed",
    "enqueue_batch",
    "drain",
    "drain_wall",
    "round_trip_p50",
    "round_trip_p99",
    "chord",
    "idle_rss",
    "idle_processes",
)
"""Every key a cycle reports: the table's workloads plus ``drain_wall`` and ``idle_processes``
(``enqueue_delay_confirmed`` on RabbitMQ only)."""


def run_cycle(runner: Runner, config: BenchConfig, counter: Counter) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    confirmed = runner.broker == "rabbitmq"
    keys = _ALL if confirmed else tuple(key for key in _ALL if key != "enqueue_delay_confirmed")
    try:
        runner.check()
        runner.connect()
        runner.purge()
        runner.enqueue_delay(1)
        if confirmed:
            runner.enqueue_delay_confirmed(1)
        runner.purge()
    except Unavailable as exc:
        return dict.fromkeys(keys, f"n/a ({exc})")
    except Exception as exc:
        return dict.fromkeys(keys, f"error: {exc!r}"[:300])
    _measure(
        outcomes,
        ("enqueue_delay",),
        lambda: {"enqueue_delay": _rate(runner.enqueue_delay, config.tasks)},
    )
    runner.purge()
    if confirmed:
        count = min(config.tasks, CONFIRMED_TASKS)
        _measure(
            outcomes,
            ("enqueue_delay_confirmed",),
            lambda: {"enqueue_delay_confirmed": _rate(runner.enqueue_delay_confirmed, count)},
        )
        runner.purge()
    _measure(
        outcomes,
        ("idle_rss", "idle_processes", "round_trip_p50", "round_trip_p99", "chord"),
        lambda: _with_worker(runner, config, counter, _served),
    )
    runner.purge()
    counter.reset(config.batch_tasks)
    _measure(
        outcomes,
        ("enqueue_batch",),
        lambda: {"enqueue_batch": _rate(runner.enqueue_batch, config.batch_tasks)},
    )
    if isinstance(outcomes["enqueue_batch"], float):
        _measure(
            outcomes,
            ("drain", "drain_wall"),
            lambda: _with_worker(runner, config, counter, _drained),
        )
    else:
        outcomes["drain"] = outcomes["drain_wall"] = "n/a (the batch enqueue failed)"
    runner.purge()
    return outcomes


def _measure(
    outcomes: dict[str, Outcome], keys: tuple[str, ...], measure: Callable[[], dict[str, Outcome]]
) -> None:
    try:
        outcomes.update(measure())
    except Unavailable as exc:
        outcomes.update(dict.fromkeys(keys, f"n/a ({exc})"))
    except Exception as exc:
        log.warning("  %s failed: %r", "/".join(keys), exc)
        outcomes.update(dict.fromkeys(keys, f"error: {exc!r}"[:300]))


def _rate(send: Callable[[int], None], count: int) -> float:
    started = time.perf_counter()
    send(count)
    return count / (time.perf_counter() - started)


Session = Callable[[Runner, BenchConfig, Counter, WorkerProcess], dict[str, Outcome]]


def _with_worker(
    runner: Runner, config: BenchConfig, counter: Counter, session: Session
) -> dict[str, Outcome]:
    log_path = runner.scratch / f"{runner.framework}-{runner.broker}-worker.log"
    worker = WorkerProcess(runner.worker_command(), runner.worker_env(), log_path, REPO)
    worker.start()
    try:
        return session(runner, config, counter, worker)
    except Exception as exc:
        raise RuntimeError(f"{exc!r}; worker log: {worker.log_tail()}") from exc
    finally:
        worker.stop()


def _served(
    runner: Runner, config: BenchConfig, counter: Counter, worker: WorkerProcess
) -> dict[str, Outcome]:
    """RSS after warm-up, then round trips, then the chord, on one warm worker."""
    _first_result(runner, worker)
    for number in range(WARM_UP_ROUND_TRIPS):
        runner.round_trip(number, ROUND_TRIP_TIMEOUT)
    time.sleep(IDLE_SETTLE_SECONDS)
    rss, processes = worker.rss()
    outcomes: dict[str, Outcome] = {"idle_rss": rss, "idle_processes": float(processes)}
    timings = []
    for number in range(config.round_trips):
        started = time.perf_counter()
        runner.round_trip(number, ROUND_TRIP_TIMEOUT)
        timings.append((time.perf_counter() - started) * 1000)
    outcomes["round_trip_p50"] = statistics.median(timings)
    outcomes["round_trip_p99"] = _percentile(timings, 0.99)
    try:
        started = time.perf_counter()
        runner.chord(config.chord_size)
        counter.wait_chord(config.timeout)
        outcomes["chord"] = time.perf_counter() - started
    except Unavailable as exc:
        outcomes["chord"] = f"n/a ({exc})"
    return outcomes


def _first_result(runner: Runner, worker: WorkerProcess) -> None:
    """Wait for the worker to answer, giving up as soon as it exits."""
    deadline = time.monotonic() + FIRST_RESULT_TIMEOUT
    while True:
        try:
            runner.round_trip(0, FIRST_RESULT_POLL)
            return
        except Exception:
            if not worker.alive() or time.monotonic() > deadline:
                raise


def _drained(
    runner: Runner, config: BenchConfig, counter: Counter, worker: WorkerProcess
) -> dict[str, Outcome]:
    first, last = counter.wait(config.batch_tasks, config.timeout, worker.alive)
    if config.batch_tasks > 1 and last > first:
        rate = (config.batch_tasks - 1) / (last - first)
    else:
        rate = config.batch_tasks / max(last - worker.started_at, 1e-6)
    return {"drain": rate, "drain_wall": last - worker.started_at}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]
