"""Celery 5's runner (the anchor): ``delay``; ``group(...).apply_async()`` for the batch;
``chord(header)(body)`` on the Redis result backend.

RabbitMQ URLs are kombu's (vhost ``//``); results stay in the run's Redis db on every broker.
"""

from __future__ import annotations

from typing import Any

import celery

from benchmarks.apps import celery_app
from benchmarks.runner import BIN, Runner

__all__ = ["CeleryRunner"]


class CeleryRunner(Runner):
    framework = "celery"

    @property
    def broker_url(self) -> str:
        url = super().broker_url
        if self.broker == "rabbitmq":
            return url.rstrip("/").removesuffix("/%2F") + "//"
        return url

    def connect(self) -> None:
        self.app = celery_app.build(self.broker_url, self.backend_url, self.queue)
        self.noop: Any = self.app.tasks["bench.noop"]
        self.echo: Any = self.app.tasks["bench.echo"]
        self.chord_done: Any = self.app.tasks["bench.chord_done"]
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
        if self.broker == "rabbitmq":
            self.confirmed = celery_app.build(
                self.broker_url, self.backend_url, self.queue, confirm_publish=True
            )

    def enqueue_delay(self, count: int) -> None:
        delay = self.noop.delay
        for number in range(count):
            delay(number)

    def enqueue_delay_confirmed(self, count: int) -> None:
        delay = self.confirmed.tasks["bench.noop"].delay
        for number in range(count):
            delay(number)

    def enqueue_batch(self, count: int) -> None:
        celery.group(self.noop.s(number) for number in range(count)).apply_async()

    def round_trip(self, number: int, timeout: float) -> None:
        self.echo.delay(number).get(timeout=timeout)

    def chord(self, size: int) -> None:
        celery.chord(self.echo.s(number) for number in range(size))(self.chord_done.s())

    def worker_command(self) -> list[str]:
        return [
            str(BIN / "celery"),
            "-A",
            "benchmarks.apps.celery_app",
            "worker",
            "-c",
            "2",
            "--pool",
            "prefork",
            "-l",
            "WARNING",
            "-Q",
            self.queue,
        ]

    def worker_config(self) -> str:
        return (
            f"celery {celery.__version__} worker -c 2 --pool prefork, Celery's defaults "
            "(prefetch multiplier 4, early acks, gossip/mingle/heartbeat on)"
        )

    def close(self) -> None:
        for app in (getattr(self, "app", None), getattr(self, "confirmed", None)):
            if app is not None:
                app.close()
        super().close()
