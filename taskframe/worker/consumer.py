"""The worker: receive messages, hand them to a pool, settle them from the pool's reports.

``Worker.start()`` reads top to bottom: finalize the app, connect, start the pool, then loop.
One thread receives and settles every message (pika connections are not thread-safe), so
the loop alternates between asking the broker for more work, up to the prefetch limit, and
waiting on the pool for finished jobs; it never holds more than
``prefetch_multiplier * concurrency`` messages.

Acknowledgement, derived once per task from Celery's booleans:

* early (default): the message is acked when its job starts, so a crash while prefetched
  but unstarted loses nothing (the broker redelivers it after the visibility timeout);
* late (``acks_late``): acked after the outcome is stored and follow-ups are sent;
  ``task_acks_on_failure_or_timeout=False`` dead-letters a failed late-ack task instead.

Messages that cannot run (undecodable, content type refused, unknown task, rejected,
retries exhausted) are dead-lettered with a reason, in one log line each.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskframe import signals, states
from taskframe.brokers.base import Delivery
from taskframe.execution import ACK, DEAD_LETTER, REQUEUE
from taskframe.timeutils import utcnow
from taskframe.worker.job import Job, Report
from taskframe.worker.pools import Pool, SoloPool, ThreadPool

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["Worker"]

logger = logging.getLogger("taskframe.worker")

IDLE_RECEIVE_TIMEOUT = 1.0
BUSY_RECEIVE_TIMEOUT = 0.02


class Worker:
    """A worker for ``app``: ``Worker(app, concurrency=2).start()`` runs until stopped."""

    def __init__(
        self,
        app: Taskframe,
        *,
        concurrency: int | None = None,
        pool: str = "prefork",
        queues: Sequence[str] | None = None,
        exclude_queues: Sequence[str] = (),
        hostname: str | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        burst: bool = False,
    ) -> None:
        conf = app.conf
        self.app = app
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self.hostname = hostname or f"taskframe@{socket.gethostname()}"
        selected = list(queues or [conf.task_default_queue])
        self.queues = [queue for queue in selected if queue not in set(exclude_queues)]
        multiplier = conf.worker_prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier
        self.prefetch_limit = max(1, int(multiplier) * self.concurrency) if multiplier else 10_000
        self.burst = burst
        self.pool = _make_pool(
            pool, app, self.concurrency, self.hostname,
            max_tasks_per_child=max_tasks_per_child or conf.worker_max_tasks_per_child,
            max_memory_per_child=max_memory_per_child or conf.worker_max_memory_per_child,
            time_limit=time_limit or conf.task_time_limit,
            soft_time_limit=soft_time_limit or conf.task_soft_time_limit,
        )
        self._held: dict[int, Delivery] = {}
        self._late: dict[int, bool] = {}
        self._buffer: deque[Job] = deque()
        self._next_job_id = 0
        self._to_ack: list[Delivery] = []
        self._stopping = False
        self.processed = 0

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, start the pool and consume until :meth:`stop` (or, in burst mode, until
        the queues are empty)."""
        self.app.finalize()
        broker = self.app.broker
        broker.ensure_connection()
        signals.worker_init.send(sender=self)
        self.pool.start()
        signals.worker_ready.send(sender=self)
        logger.info("%s ready: queues %s, concurrency %s (%s)", self.hostname,
                    ",".join(self.queues), self.concurrency, self.pool.name)
        try:
            self._loop()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop taking work; running jobs finish and are settled (warm shutdown)."""
        self._stopping = True

    def _shutdown(self) -> None:
        signals.worker_shutting_down.send(sender=self.hostname, sig="stop", how="warm", exitcode=0)
        for job in self._buffer:
            delivery = self._held.pop(job.id)
            delivery.reject(requeue=True)
        self._buffer.clear()
        while self.pool.in_flight():
            self._settle(self.pool.poll(1.0))
        self._flush_acks()
        self.pool.stop(wait=True)
        for delivery in self._held.values():
            delivery.reject(requeue=True)
        self._held.clear()
        signals.worker_shutdown.send(sender=self)

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        broker = self.app.broker
        while not self._stopping:
            self._dispatch()
            room = self.prefetch_limit - len(self._held)
            busy = self.pool.in_flight() > 0
            if room > 0:
                if self._buffer:
                    timeout = 0.0
                else:
                    timeout = BUSY_RECEIVE_TIMEOUT if busy else IDLE_RECEIVE_TIMEOUT
                received = broker.receive(self.queues, room, timeout)
                for delivery in received:
                    self._accept(delivery)
                if self.burst and not received and not busy and not self._buffer:
                    break
                self._dispatch()
            if not self._buffer:
                self._flush_acks()
            if self.pool.in_flight():
                blocked = room <= 0 or (self._buffer and not self.pool.free_slots())
                self._settle(self.pool.poll(0.2 if blocked else 0.0))

    def _accept(self, delivery: Delivery) -> None:
        headers = delivery.message.headers
        task_name = str(headers.get("task") or "")
        task_id = str(headers.get("id") or "")
        eta = headers.get("eta")
        if eta and self._defer_until_due(delivery, eta):
            return
        self._next_job_id += 1
        job = Job(
            self._next_job_id, delivery.message, delivery.delivery_info,
            task_name=task_name, task_id=task_id,
        )
        self._held[job.id] = delivery
        self._late[job.id] = self._acks_late(task_name)
        self._buffer.append(job)

    def _defer_until_due(self, delivery: Delivery, eta: Any) -> bool:
        """A message whose eta is ahead (sent by a peer that holds ETAs in memory) goes back
        to the store as a delayed message, so no worker holds it in memory."""
        from datetime import datetime, timezone

        try:
            due = datetime.fromisoformat(str(eta))
        except ValueError:
            return False
        if due.tzinfo is None:
            due = due.replace(tzinfo=timezone.utc)
        delay = (due - utcnow()).total_seconds()
        if delay <= 0.05:
            return False
        self.app.broker.publish(delivery.queue, delivery.message, delay=delay,
                                priority=delivery.message.priority)
        delivery.ack()
        return True

    def _acks_late(self, task_name: str) -> bool:
        task = self.app.tasks.get(task_name)
        if task is not None and task.acks_late is not None:
            return bool(task.acks_late)
        return bool(self.app.conf.task_acks_late)

    def _dispatch(self) -> None:
        while self._buffer and self.pool.free_slots() > 0:
            job = self._buffer.popleft()
            if not self._late[job.id]:
                self._to_ack.append(self._held[job.id])
            self.pool.submit(job)
            if isinstance(self.pool, SoloPool):
                self._settle(self.pool.poll(0.0))
        if len(self._to_ack) >= 32 or (self._to_ack and not self._buffer):
            self._flush_acks()

    def _flush_acks(self) -> None:
        if self._to_ack:
            pending, self._to_ack = self._to_ack, []
            self.app.broker.ack_many([d for d in pending if not d.settled])

    def _settle(self, reports: list[Report]) -> None:
        for report in reports:
            delivery = self._held.pop(report.job_id, None)
            late = self._late.pop(report.job_id, False)
            if delivery is None:
                continue
            self.processed += 1
            self._log(report)
            if report.settle == DEAD_LETTER:
                self._flush_acks()
                logger.warning("Dead-lettered %s[%s] from %s: %s", report.task_name or "?",
                               report.task_id or "?", delivery.queue, report.reason)
                self.app.broker.dead_letter(delivery, report.reason or "unknown")
            elif report.settle == REQUEUE and late:
                delivery.reject(requeue=True)
            elif late and report.state == states.FAILURE and not self._ack_failures():
                self.app.broker.dead_letter(delivery, report.reason or "failed (acks_late)")
            elif late:
                self._to_ack.append(delivery)
            elif report.settle == ACK and not delivery.settled:
                self._to_ack.append(delivery)

    def _ack_failures(self) -> bool:
        return bool(self.app.conf.task_acks_on_failure_or_timeout)

    def _log(self, report: Report) -> None:
        if report.state == states.SUCCESS:
            logger.info("Task %s[%s] succeeded in %.6fs: %s", report.task_name, report.task_id,
                        report.runtime, report.summary)


def _make_pool(name: str, app: Taskframe, concurrency: int, hostname: str, **options: Any) -> Pool:
    if name == "prefork":
        from taskframe.worker.prefork import PreforkPool

        return PreforkPool(app, concurrency, hostname, **options)
    if name == "threads":
        return ThreadPool(app, concurrency, hostname, **options)
    if name == "solo":
        return SoloPool(app, concurrency, hostname, **options)
    raise ValueError(f"unknown pool {name!r}; choose one of prefork, threads, solo")
