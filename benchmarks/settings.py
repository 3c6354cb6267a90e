"""What one benchmark run measures, and the names shared by the harness and the workers.

Redis: the run uses one db of its own (10 by default; the test suite's is 9, and the tiny
configuration in ``tests/test_benchmarks.py`` uses 11) and clears it, except kombu's queue
bindings, between frameworks. RabbitMQ: the queue ``BENCH_QUEUE`` (and Dramatiq's ``.DQ`` and
``.XQ``) on the default vhost, purged between frameworks and deleted at the end. SQLite: a file
in the run's scratch directory.

Publisher confirms on RabbitMQ: the main rows run every framework without them, Celery's and
Dramatiq's default (taskframe's own default is confirms on); ``enqueue_delay_confirmed`` runs
every producer with them. Workers learn the setting from ``BENCH_CONFIRM_PUBLISH`` (``1``/``0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BROKERS",
    "CONFIRMED_TASKS",
    "DEFAULT_BROKERS",
    "FRAMEWORKS",
    "SQS_QUEUE_PREFIX",
    "WORKLOADS",
    "BenchConfig",
    "Workload",
]

BROKERS = ("redis", "rabbitmq", "sqs", "sqlite")
DEFAULT_BROKERS = ("redis", "rabbitmq", "sqlite")
"""SQS runs on request (``--brokers sqs``): on moto a run there takes minutes and says more
about moto than about the frameworks."""
FRAMEWORKS = ("taskframe", "celery", "dramatiq")
BENCH_QUEUE = "taskframe-bench"

ENV_BROKER_URL = "BENCH_BROKER_URL"
ENV_BACKEND_URL = "BENCH_BACKEND_URL"
ENV_QUEUE = "BENCH_QUEUE"
ENV_CONFIRM_PUBLISH = "BENCH_CONFIRM_PUBLISH"
SQS_QUEUE_PREFIX = "tfbench-"
"""Every SQS queue of the run starts with this (kombu's ``queue_name_prefix``)."""
CONFIRMED_TASKS = 5_000
"""At most this many tasks in the confirmed row: a confirm costs a round trip per message."""


@dataclass(frozen=True)
class Workload:
    """One row kind of the table."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    brokers: tuple[str, ...] = BROKERS
    """The brokers this row is measured on."""


WORKLOADS = (
    Workload("enqueue_delay", "enqueue, delay", "tasks/s", True),
    Workload(
        "enqueue_delay_confirmed",
        "enqueue, delay, confirmed",
        "tasks/s",
        True,
        brokers=("rabbitmq",),
    ),
    Workload("enqueue_batch", "enqueue, batch", "tasks/s", True),
    Workload("drain", "drain, 2 processes", "tasks/s", True),
    Workload("round_trip_p50", "round trip p50", "ms", False),
    Workload("round_trip_p99", "round trip p99", "ms", False),
    Workload("chord", "chord", "s", False),
    Workload("idle_rss", "idle worker RSS, 3 processes", "MiB", False),
)


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and places of one run; the defaults are the issue's full configuration.

    The drain runs the ``batch_tasks`` that the batch enqueue left queued.
    """

    tasks: int = 20_000
    batch_tasks: int = 20_000
    round_trips: int = 500
    chord_size: int = 1_000
    repeats: int = 3
    brokers: tuple[str, ...] = DEFAULT_BROKERS
    frameworks: tuple[str, ...] = FRAMEWORKS
    floors: bool = True
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 10
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    sqs_endpoint: str = ""
    """``host:port`` of the moto server the harness started (empty until then)."""
    results_dir: Path = field(default_factory=lambda: Path(__file__).parent / "results")
    timeout: float = 300.0

    def redis_url(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def __post_init__(self) -> None:
        if self.redis_db == 0:
            raise ValueError("db 0 is never used by the benchmark; pick another --redis-db")
        unknown = set(self.brokers) - set(BROKERS) | set(self.frameworks) - set(FRAMEWORKS)
        if unknown:
            raise ValueError(f"unknown broker or framework: {', '.join(sorted(unknown))}")
        if min(self.tasks, self.batch_tasks, self.round_trips, self.chord_size, self.repeats) < 1:
            raise ValueError("sizes and repeats must be at least 1")
