"""Settling messages: what the consumer does with a delivery once its fate is known.

One :class:`AckMode` per task, derived once from Celery's booleans (``acks_late``,
``reject_on_worker_lost``, ``acks_on_failure_or_timeout``, each the task's option or else the
app's ``task_*`` setting). Acks are collected and sent in one ``ack_many`` per turn of the
consumer's loop.

Dead letters carry why they are there in headers: ``x-dead-letter-reason``,
``x-dead-letter-exception``, ``x-dead-letter-traceback``, ``x-dead-letter-time`` (ISO UTC);
``retries`` is reset to 0 (the old value kept in ``x-dead-letter-retries``) so that a replayed
message starts with its full retry budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskframe import signals, states
from taskframe.brokers.base import Delivery
from taskframe.exceptions import (
    ContentDisallowed,
    ProtocolError,
    SerializationError,
    TaskRevokedError,
    WorkerLostError,
)
from taskframe.execution import DEAD_LETTER, REQUEUE, fail_unfinished, revoked_outcome
from taskframe.protocol import TaskMessage, decode_task
from taskframe.timeutils import utcnow
from taskframe.worker.job import Report

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["AckMode", "Settler"]

logger = logging.getLogger("taskframe.worker")

ACK_BATCH = 64


@dataclass(frozen=True)
class AckMode:
    late: bool
    reject_on_worker_lost: bool
    ack_failures: bool


class Settler:
    """Acks, gives back, dead-letters or discards deliveries for one worker."""

    def __init__(self, app: Taskframe, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self.cold = False
        self._to_ack: list[Delivery] = []
        self._modes: dict[str, AckMode] = {}

    def mode(self, task_name: str) -> AckMode:
        """The ack mode of a task, from its options or the app's settings (computed once)."""
        mode = self._modes.get(task_name)
        if mode is None:
            conf = self.app.conf
            task = self.app.tasks.get(task_name)

            def option(name: str, setting: str) -> bool:
                value = getattr(task, name, None) if task is not None else None
                return bool(getattr(conf, setting) if value is None else value)

            mode = AckMode(
                late=option("acks_late", "task_acks_late"),
                reject_on_worker_lost=option("reject_on_worker_lost", "task_reject_on_worker_lost"),
                ack_failures=option(
                    "acks_on_failure_or_timeout", "task_acks_on_failure_or_timeout"
                ),
            )
            self._modes[task_name] = mode
        return mode

    def ack(self, delivery: Delivery) -> None:
        """Ack with the next batch (:meth:`flush`)."""
        self._to_ack.append(delivery)

    def flush(self, *, finish_receive: bool = False) -> None:
        """Send the acks due. ``finish_receive`` (before a hand-off to the pool, and after a
        receive): call the broker even with none, so it can finish what it left of a receive
        (see ``Broker.send_acks``)."""
        if self._to_ack or finish_receive:
            pending, self._to_ack = self._to_ack, []
            self.app.broker.send_acks([d for d in pending if not d.settled])

    def settle(self, report: Report, delivery: Delivery) -> None:
        """Settle ``delivery`` from its job's report."""
        mode = self.mode(report.task_name)
        if report.failure is not None:
            self._unfinished(report, delivery, mode)
        elif report.settle == DEAD_LETTER:
            if report.malformed:
                signals.task_rejected.send(sender=self, message=delivery.message, exc=None)
            self.dead_letter(delivery, report.reason or "unknown", report)
        elif report.settle == REQUEUE:
            self.give_back(delivery)
        elif mode.late and report.state == states.FAILURE and not mode.ack_failures:
            self.dead_letter(delivery, report.reason or "failed (acks_late)", report)
        elif not delivery.settled:
            self._to_ack.append(delivery)
        if len(self._to_ack) >= ACK_BATCH:
            self.flush()

    def _unfinished(self, report: Report, delivery: Delivery, mode: AckMode) -> None:
        """A job its pool could not finish: terminated, lost with its process, or killed at
        the hard time limit."""
        error = report.failure
        assert error is not None
        message = self._decode(delivery)
        if message is None:
            return
        if isinstance(error, TaskRevokedError):
            revoked_outcome(self.app, message, "terminated", terminated=True)
            if not delivery.settled:
                self._to_ack.append(delivery)
            return
        lost = isinstance(error, WorkerLostError)
        if lost and not delivery.settled and (self.cold or mode.reject_on_worker_lost):
            logger.warning(
                "Task %s[%s] given back to the queue: %r",
                report.task_name,
                report.task_id,
                error,
                extra={"task_name": report.task_name, "task_id": report.task_id},
            )
            delivery.reject(requeue=True)
            return
        outcome = fail_unfinished(
            self.app, message, error, hostname=self.hostname, delivery_info=delivery.delivery_info
        )
        if delivery.settled:
            return
        if mode.ack_failures:
            self._to_ack.append(delivery)
        else:
            self.dead_letter(delivery, outcome.reason or repr(error), report)

    def _decode(self, delivery: Delivery) -> TaskMessage | None:
        try:
            return decode_task(delivery.message, self.app.conf.accept_content)
        except (ProtocolError, SerializationError, ContentDisallowed) as exc:
            self.dead_letter(delivery, f"malformed message: {exc}", None)
            return None

    def discard(self, delivery: Delivery, reason: str) -> None:
        """Do not run a revoked or expired message: store REVOKED and ack it."""
        message = self._decode(delivery)
        if message is not None:
            revoked_outcome(self.app, message, reason)
            self._to_ack.append(delivery)

    def give_back(self, delivery: Delivery) -> None:
        """Put a message back on its queue (republished if it was already acked)."""
        if delivery.settled:
            self.app.broker.publish(
                delivery.queue, delivery.message, priority=delivery.message.priority
            )
        else:
            delivery.reject(requeue=True)

    def dead_letter(self, delivery: Delivery, reason: str, report: Report | None) -> None:
        headers = delivery.message.headers
        headers["x-dead-letter-reason"] = reason
        headers["x-dead-letter-time"] = utcnow().isoformat()
        if report is not None:
            headers["x-dead-letter-exception"] = report.exception or report.reason
            headers["x-dead-letter-traceback"] = report.traceback
        if "retries" in headers:
            headers["x-dead-letter-retries"] = headers["retries"]
            headers["retries"] = 0
        name = headers.get("task") or "?"
        task_id = headers.get("id") or "?"
        logger.warning(
            "Dead-lettered %s[%s] from %s: %s",
            name,
            task_id,
            delivery.queue,
            reason,
            extra={"task_name": name, "task_id": task_id},
        )
        self.app.broker.dead_letter(delivery, reason)
