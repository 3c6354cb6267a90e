"""Dramatiq's runner: ``actor.send``; ``group(...).run()`` for the batch (Dramatiq has no
batch publish, so a group enqueues message by message); a group with a completion callback
(``GroupCallbacks``) for the chord; ``message.get_result(block=True)`` for the round trip.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from benchmarks.apps import dramatiq_app
from benchmarks.runner import BIN, Runner
from benchmarks.settings import BENCH_QUEUE

__all__ = ["DramatiqRunner"]

group: Any = dramatiq.group
"""Dramatiq's composition API carries no annotations."""


class DramatiqRunner(Runner):
    framework = "dramatiq"
    amqp_queues = (BENCH_QUEUE, f"{BENCH_QUEUE}.DQ", f"{BENCH_QUEUE}.XQ")

    def connect(self) -> None:
        self.actors = dramatiq_app.build(self.broker_url, self.backend_url, self.queue)
        if self.broker == "rabbitmq":
            self.confirmed = dramatiq_app.build(
                self.broker_url, self.backend_url, self.queue, confirm_publish=True
            )
        dramatiq.set_broker(self.actors.broker)

    def enqueue_delay(self, count: int) -> None:
        send = self.actors.noop.send
        for number in range(count):
            send(number)

    def enqueue_delay_confirmed(self, count: int) -> None:
        send = self.confirmed.noop.send
        for number in range(count):
            send(number)

    def enqueue_batch(self, count: int) -> None:
        message = self.actors.noop.message
        group(message(number) for number in range(count)).run()

    def round_trip(self, number: int, timeout: float) -> None:
        sent = self.actors.echo.send(number)
        sent.get_result(block=True, timeout=int(timeout * 1000))

    def chord(self, size: int) -> None:
        header = group(self.actors.echo.message(number) for number in range(size))
        header.add_completion_callback(self.actors.chord_done.message())
        header.run()

    def worker_command(self) -> list[str]:
        return [
            str(BIN / "dramatiq"),
            "benchmarks.apps.dramatiq_app:broker",
            "-p",
            "2",
            "-t",
            "1",
            "-Q",
            self.queue,
        ]

    def worker_config(self) -> str:
        return (
            f"dramatiq {dramatiq.__version__} -p 2 -t 1 (2 worker processes, 1 thread each), "
            "default middleware + Results + GroupCallbacks"
        )

    def close(self) -> None:
        for actors in (getattr(self, "actors", None), getattr(self, "confirmed", None)):
            if actors is not None:
                actors.broker.close()
        super().close()
