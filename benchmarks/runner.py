"""The interface every framework's runner implements, and what they share.

A runner is the producer side of one framework on one broker, living in the harness process;
the consumer side is a worker subprocess started from :meth:`Runner.worker_command` with
:meth:`Runner.worker_env`. A workload the framework or broker cannot run raises
:class:`Unavailable`, shown as "n/a (reason)" in the table instead of a number.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from benchmarks.settings import (
    BENCH_QUEUE,
    ENV_BACKEND_URL,
    ENV_BROKER_URL,
    ENV_CONFIRM_PUBLISH,
    ENV_QUEUE,
    SQS_QUEUE_PREFIX,
    BenchConfig,
)
from benchmarks.sqs_server import CREDENTIALS
from benchmarks.stores import (
    clear_redis,
    delete_amqp_queues,
    delete_sqs_queues,
    purge_amqp_queues,
    purge_sqs_queues,
)
from benchmarks.task_counter import COUNTER_URL_ENV

__all__ = ["BIN", "REPO", "Runner", "Unavailable"]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


class Unavailable(Exception):
    """This framework cannot run this workload on this broker; the message says why."""


class Runner(ABC):
    """Producer side of ``framework`` on ``broker``; subclasses fill in the framework calls."""

    framework: ClassVar[str]
    amqp_queues: ClassVar[tuple[str, ...]] = (BENCH_QUEUE,)
    """Every RabbitMQ queue this framework declares for the benchmark queue."""

    def __init__(self, broker: str, config: BenchConfig, scratch: Path) -> None:
        self.broker = broker
        self.config = config
        self.scratch = scratch
        self.queue = BENCH_QUEUE

    @property
    def broker_url(self) -> str:
        if self.broker == "redis":
            return self.config.redis_url()
        if self.broker == "rabbitmq":
            return self.config.amqp_url
        if self.broker == "sqs":
            return f"sqs://test:test@{self.config.sqs_endpoint}"
        raise Unavailable(f"{self.broker}: taskframe only")

    @property
    def backend_url(self) -> str:
        """Results live in the run's Redis db on every broker (Celery's chords need Redis)."""
        return self.config.redis_url()

    def check(self) -> None:
        """Raise :class:`Unavailable` when this framework cannot run on this broker at all."""
        self.broker_url  # noqa: B018 - raises Unavailable for an unsupported broker

    # -- producer calls ----------------------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Make the app/broker objects and open connections (not timed)."""

    @abstractmethod
    def enqueue_delay(self, count: int) -> None:
        """Send ``count`` no-op tasks one at a time through the single-task API."""

    @abstractmethod
    def enqueue_delay_confirmed(self, count: int) -> None:
        """Like :meth:`enqueue_delay`, from a producer that waits for RabbitMQ's publisher
        confirms (made by :meth:`connect` on RabbitMQ only)."""

    @abstractmethod
    def enqueue_batch(self, count: int) -> None:
        """Send ``count`` no-op tasks through the framework's batch API."""

    @abstractmethod
    def round_trip(self, number: int, timeout: float) -> None:
        """Send ``echo(number)`` and wait for its result."""

    @abstractmethod
    def chord(self, size: int) -> None:
        """Publish a chord of ``size`` echo tasks whose body is ``chord_done`` (no waiting)."""

    @abstractmethod
    def worker_command(self) -> list[str]: ...

    @abstractmethod
    def worker_config(self) -> str:
        """The worker's configuration in one line, for the report."""

    # -- stores --------------------------------------------------------------------------------

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                ENV_BROKER_URL: self.broker_url,
                ENV_BACKEND_URL: self.backend_url,
                ENV_QUEUE: self.queue,
                ENV_CONFIRM_PUBLISH: "0",
                COUNTER_URL_ENV: self.config.redis_url(),
                **CREDENTIALS,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            }
        )
        return env

    def purge(self) -> None:
        """Empty the queue, results and counters between workloads."""
        if self.broker == "rabbitmq":
            purge_amqp_queues(self.config.amqp_url, self.amqp_queues)
        if self.broker == "sqs":
            purge_sqs_queues(self.config.sqs_endpoint, SQS_QUEUE_PREFIX)
        clear_redis(self.config.redis_url())

    def close(self) -> None:
        """Close connections; on RabbitMQ also delete the benchmark's queues."""
        if self.broker == "rabbitmq":
            delete_amqp_queues(self.config.amqp_url, self.amqp_queues)
        if self.broker == "sqs":
            delete_sqs_queues(self.config.sqs_endpoint, SQS_QUEUE_PREFIX)
