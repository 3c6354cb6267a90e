"""The run: every repeat walks the brokers, and on each broker the frameworks in an order that
rotates by repeat, so no framework always runs first on a cold (or warm) machine.

SQLite rows are taskframe's alone. SQS rows run on a moto server the run starts, at a twentieth
of the sizes (moto is slow), for taskframe and Celery (Dramatiq has no SQS broker of its own).
Floors run once per repeat, after the frameworks. Whatever
happens, every worker started is stopped and the run's Redis db is cleared at the end; the
scratch directory (sqlite file, worker logs) is kept only when something failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from benchmarks import floor
from benchmarks.celery_runner import CeleryRunner
from benchmarks.counter import Counter
from benchmarks.cycle import Outcome, run_cycle
from benchmarks.dramatiq_runner import DramatiqRunner
from benchmarks.processes import stop_all
from benchmarks.runner import Runner
from benchmarks.settings import BenchConfig
from benchmarks.sqs_server import CREDENTIALS, MotoServer, scaled
from benchmarks.stores import amqp_available, clear_redis
from benchmarks.taskframe_runner import TaskframeRunner, sample_payload

__all__ = ["RunResult", "run"]

RUNNERS: dict[str, type[Runner]] = {
    "taskframe": TaskframeRunner,
    "celery": CeleryRunner,
    "dramatiq": DramatiqRunner,
}
FLOOR_BROKERS = ("redis", "rabbitmq")

log = logging.getLogger("benchmarks")


@dataclass
class RunResult:
    """Every sample of one run, keyed ``(broker, framework, workload)`` and ``(broker, floor)``."""

    config: BenchConfig
    started: float
    duration: float = 0.0
    samples: dict[tuple[str, str, str], list[Outcome]] = field(default_factory=dict)
    floors: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    worker_configs: dict[str, str] = field(default_factory=dict)
    payload_bytes: int = 0
    scratch: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, broker: str, framework: str, outcomes: dict[str, Outcome]) -> None:
        for workload, outcome in outcomes.items():
            self.samples.setdefault((broker, framework, workload), []).append(outcome)

    def errors(self) -> list[str]:
        """Each distinct failure once: ``broker/framework (workloads): error``."""
        failed: dict[tuple[str, str, str], list[str]] = {}
        for (broker, framework, workload), values in self.samples.items():
            for value in values:
                if isinstance(value, str) and value.startswith("error"):
                    workloads = failed.setdefault((broker, framework, value), [])
                    if workload not in workloads:
                        workloads.append(workload)
        return [
            f"{broker}/{framework} ({', '.join(workloads)}): {error}"
            for (broker, framework, error), workloads in failed.items()
        ]


def run(config: BenchConfig) -> RunResult:
    result = RunResult(config=config, started=time.time())
    scratch = Path(tempfile.mkdtemp(prefix="taskframe-bench-"))
    redis.Redis.from_url(config.redis_url()).ping()
    counter = Counter(config.redis_url())
    brokers = list(config.brokers)
    if "rabbitmq" in brokers and (reason := amqp_available(config.amqp_url)):
        result.skipped["rabbitmq"] = reason
        brokers.remove("rabbitmq")
    payload = sample_payload()
    result.payload_bytes = len(payload)
    moto = MotoServer()
    try:
        if "sqs" in brokers:
            os.environ.update(CREDENTIALS)
            try:
                config = replace(config, sqs_endpoint=moto.start())
            except RuntimeError as exc:
                result.skipped["sqs"] = str(exc)
                brokers.remove("sqs")
        clear_redis(config.redis_url())
        for repeat in range(config.repeats):
            for broker in brokers:
                _one_broker(result, _sized_for(config, broker), scratch, counter, broker, repeat)
            if config.floors:
                _floors(result, config, brokers, payload)
    finally:
        stop_all()
        moto.stop()
        clear_redis(config.redis_url())
        counter.close()
        result.duration = time.time() - result.started
        if result.errors():
            result.scratch = str(scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def _one_broker(
    result: RunResult,
    config: BenchConfig,
    scratch: Path,
    counter: Counter,
    broker: str,
    repeat: int,
) -> None:
    alone = {"sqlite": ("taskframe",), "sqs": ("taskframe", "celery")}
    frameworks = [fw for fw in config.frameworks if fw in alone.get(broker, (fw,))]
    shift = repeat % max(1, len(frameworks))
    for framework in frameworks[shift:] + frameworks[:shift]:
        runner = RUNNERS[framework](broker, config, scratch)
        result.worker_configs.setdefault(framework, runner.worker_config())
        started = time.monotonic()
        try:
            outcomes = run_cycle(runner, config, counter)
        finally:
            _close(runner)
        result.add(broker, framework, outcomes)
        log.info(
            "repeat %d %-8s %-9s %5.1fs %s",
            repeat + 1,
            broker,
            framework,
            time.monotonic() - started,
            _brief(outcomes),
        )


def _sized_for(config: BenchConfig, broker: str) -> BenchConfig:
    if broker != "sqs":
        return config
    return replace(
        config,
        tasks=scaled(config.tasks),
        batch_tasks=scaled(config.batch_tasks),
        round_trips=scaled(config.round_trips),
        chord_size=scaled(config.chord_size),
    )


def _close(runner: Runner) -> None:
    try:
        runner.close()
    except Exception as exc:
        log.warning("closing %s on %s failed: %r", runner.framework, runner.broker, exc)


def _floors(result: RunResult, config: BenchConfig, brokers: list[str], payload: bytes) -> None:
    measured: dict[str, dict[str, float]] = {}
    for broker in (b for b in brokers if b in FLOOR_BROKERS):
        try:
            if broker == "redis":
                measured[broker] = floor.redis_floors(config.redis_url(), payload, config.tasks)
            else:
                measured[broker] = floor.amqp_floors(
                    config.amqp_url, config.redis_url(), payload, config.tasks
                )
        except Exception as exc:
            log.warning("floor on %s failed: %r", broker, exc)
            continue
        for name, value in measured[broker].items():
            result.floors.setdefault((broker, name), []).append(value)
    log.info("floors %s", {b: {k: round(v) for k, v in m.items()} for b, m in measured.items()})


def _brief(outcomes: dict[str, Any]) -> str:
    return " ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value[:40]!r}"
        for key, value in outcomes.items()
    )
