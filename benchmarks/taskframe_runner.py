"""taskframe's runner: ``delay``; ``group(...).apply_async()`` for the batch; ``chord``.

Brokers: Redis, RabbitMQ, SQS, and sqlite (a file in the run's scratch directory, also the
result backend).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import taskframe
from benchmarks.apps import tasks, tf_app
from benchmarks.runner import BIN, Runner, Unavailable
from benchmarks.settings import SQS_QUEUE_PREFIX
from taskframe.brokers.redis import envelope

__all__ = ["TaskframeRunner", "sample_payload"]


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


class TaskframeRunner(Runner):
    framework = "taskframe"

    @property
    def broker_url(self) -> str:
        if self.broker == "sqlite":
            return f"sqlite:///{self.scratch / 'bench.sqlite3'}"
        if self.broker == "sqs":
            return f"{super().broker_url}/?queue_name_prefix={SQS_QUEUE_PREFIX}&region=us-east-1"
        return super().broker_url

    @property
    def backend_url(self) -> str:
        return self.broker_url if self.broker == "sqlite" else super().backend_url

    def check(self) -> None:
        module = {
            "redis": "taskframe.brokers.redis",
            "rabbitmq": "taskframe.brokers.rabbitmq",
            "sqs": "taskframe.brokers.sqs",
        }
        name = module.get(self.broker)
        if name is not None and not _module_exists(name):
            raise Unavailable("broker not implemented")
        if name is not None:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise Unavailable(f"broker does not import: {exc}") from exc

    def connect(self) -> None:
        self.app = tf_app.build(self.broker_url, self.backend_url, self.queue)
        self.noop: Any = self.app.tasks[tasks.NAMES["noop"]]
        self.echo: Any = self.app.tasks[tasks.NAMES["echo"]]
        self.chord_done: Any = self.app.tasks[tasks.NAMES["chord_done"]]
        self.app.broker.ensure_connection()
        if self.broker == "rabbitmq":
            self.confirmed = tf_app.build(
                self.broker_url, self.backend_url, self.queue, confirm_publish=True
            )
            self.confirmed.broker.ensure_connection()

    def enqueue_delay(self, count: int) -> None:
        delay = self.noop.delay
        for number in range(count):
            delay(number)

    def enqueue_delay_confirmed(self, count: int) -> None:
        delay: Any = self.confirmed.tasks[tasks.NAMES["noop"]].delay
        for number in range(count):
            delay(number)

    def enqueue_batch(self, count: int) -> None:
        taskframe.group(self.noop.s(number) for number in range(count)).apply_async()

    def round_trip(self, number: int, timeout: float) -> None:
        self.echo.delay(number).get(timeout=timeout)

    def chord(self, size: int) -> None:
        taskframe.chord(self.echo.s(number) for number in range(size))(self.chord_done.s())

    def purge(self) -> None:
        if self.broker == "sqlite":
            self.app.broker.purge(self.queue)
        super().purge()

    def worker_command(self) -> list[str]:
        return [
            str(BIN / "taskframe"),
            "-A",
            "benchmarks.apps.tf_app",
            "worker",
            "-c",
            "2",
            "-l",
            "WARNING",
            "-Q",
            self.queue,
        ]

    def worker_config(self) -> str:
        return (
            "taskframe worker -c 2 (prefork), default prefetch multiplier 4, early acks; "
            "publisher confirms off on RabbitMQ (Celery's default)"
        )

    def close(self) -> None:
        for app in (getattr(self, "app", None), getattr(self, "confirmed", None)):
            if app is not None:
                app.close()
        super().close()


def sample_payload() -> bytes:
    """What taskframe writes to Redis for ``noop(1)``: the floors push payloads of this size."""
    app = tf_app.build("memory://", "memory://", "taskframe-bench")
    _queue, _delay, message = app.build_message(tasks.NAMES["noop"], (1,))
    return envelope.to_json(envelope.encode("taskframe-bench", message, 0)[1]).encode()
