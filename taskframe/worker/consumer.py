"""The worker: receive messages, hand them to a pool, settle them from the pool's reports.

``Worker.start()`` reads top to bottom: finalize the app, connect, listen for remote control,
start the pool, then loop. One thread receives and settles every message (pika connections are
not thread-safe). Each turn of the loop hands ready jobs to free pool slots, fetches more
messages up to the prefetch limit (``prefetch_multiplier * concurrency`` messages held at
most, running or not, plus what the pool queues beyond its running jobs: the prefork
children's queues), and settles finished jobs; acks of one turn go out in one batch. Fetches
wait until half the window is free (or the pool has nothing to run), so each receive brings
a batch, not one message. A store that pushes (RabbitMQ) is told the same limit as its
standing prefetch (``Broker.set_prefetch``, Celery's basic.qos): it sends the next messages
while these run, so a receive finds them waiting; they go back at shutdown.

Acknowledgement, derived once per task from Celery's booleans
(:class:`~taskframe.worker.settle.AckMode`):

* early (default): acked just before the job is handed to the pool (the batch of acks is
  flushed first), so a message held in the prefetch buffer is never acked: a worker that dies
  loses none of them (the store redelivers them after the visibility timeout), and a started
  task is not run twice;
* late (``acks_late``): acked after the outcome is stored and follow-ups are sent. A job whose
  process died is failed (WorkerLostError), or given back when ``reject_on_worker_lost`` is
  set; with ``acks_on_failure_or_timeout=False`` a failed or timed-out job is dead-lettered.

Before running, a message is checked: revoked (in-memory set, fed by broadcast and the
persistent set), expired (stored REVOKED, reason ``expired``), rate limit (waits in the buffer,
other tasks go on). Messages that cannot run (undecodable, refused content type, unknown task,
rejected, retries exhausted) are dead-lettered with their reason, exception and traceback in
``x-dead-letter-*`` headers and ``retries`` reset (so a replay starts afresh), in one log line.

While a message is held (buffered, or running with late ack), its visibility is extended every
third of the broker's ``visibility_timeout``, so a long task is not delivered twice.

Shutdown: :meth:`stop` is warm (stop fetching, give unstarted messages back at once, wait up to
``worker_shutdown_timeout`` for running jobs, then go cold); ``stop(cold=True)`` cuts running
jobs short: late-ack ones are given back to the queue, early-ack ones are stored as failed
(WorkerLostError).
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import queue
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from taskframe import signals, states
from taskframe.brokers.base import Delivery
from taskframe.connection_retry import RetryPolicy, connect_with_retry, reconnect
from taskframe.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
)
from taskframe.timeutils import utcnow
from taskframe.worker.job import Job, Report
from taskframe.worker.pools import Pool, SoloPool, ThreadPool
from taskframe.worker.ratelimit import RateLimits
from taskframe.worker.remote import ControlListener
from taskframe.worker.revoke import Revoked
from taskframe.worker.settle import Settler

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["Worker"]

logger = logging.getLogger("taskframe.worker")

IDLE_RECEIVE_TIMEOUT = 0.2
BUSY_RECEIVE_TIMEOUT = 0.02
POOL_WAIT = 0.2
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
POOLS = ("prefork", "threads", "solo", "asyncio")


class Worker:
    """A worker for ``app``: ``Worker(app, concurrency=2).start()`` runs until stopped."""

    def __init__(
        self,
        app: Taskframe,
        *,
        concurrency: int | None = None,
        pool: str | None = None,
        queues: Sequence[str] | None = None,
        exclude_queues: Sequence[str] = (),
        hostname: str | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        optimization: str = "default",
        shutdown_timeout: float | None = None,
        burst: bool = False,
    ) -> None:
        conf = app.conf
        pool_name = pool or conf.worker_pool or "prefork"
        if pool_name not in POOLS:
            raise ImproperlyConfigured(
                f"unknown pool {pool_name!r}; choose one of {', '.join(POOLS)}"
            )
        if pool_name == "prefork" and app.broker_url.startswith("memory:"):
            raise ImproperlyConfigured(
                "the memory:// broker lives inside one process, so prefork children cannot "
                "reach it; use pool='threads', 'solo' or 'asyncio', or a sqlite:// broker"
            )
        self.app = app
        default_concurrency = 100 if pool_name == "asyncio" else os.cpu_count() or 1
        self.concurrency = concurrency or conf.worker_concurrency or default_concurrency
        if pool_name == "solo":
            self.concurrency = 1
        self.hostname = hostname or f"taskframe@{socket.gethostname()}"
        excluded = set(exclude_queues)
        self.queues = [q for q in (queues or [conf.task_default_queue]) if q not in excluded]
        if not self.queues:
            raise ImproperlyConfigured("no queues left to consume after -X/--exclude-queues")
        multiplier = (
            conf.worker_prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier
        )
        self.prefetch_limit = max(1, int(multiplier) * self.concurrency) if multiplier else 10_000
        self.optimization = optimization
        self.burst = burst
        self.shutdown_timeout = float(
            conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        )
        self.pool = _make_pool(
            pool_name,
            app,
            self.concurrency,
            self.hostname,
            optimization == "fair",
            max(1, self.prefetch_limit // self.concurrency),
            max_tasks_per_child=max_tasks_per_child or conf.worker_max_tasks_per_child,
            max_memory_per_child=max_memory_per_child or conf.worker_max_memory_per_child,
            time_limit=time_limit or conf.task_time_limit,
            soft_time_limit=soft_time_limit or conf.task_soft_time_limit,
        )
        self._window = self.prefetch_limit
        self._low_water = max(1, self._window // 2)
        self.revoked = Revoked()
        self.rate_limits = RateLimits(app)
        self.commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.control = ControlListener(self)
        self.pool.fork_lock = self.control.fork_lock
        self.ready = threading.Event()
        self.processed = 0
        self.totals: Counter[str] = Counter()
        self.started_at = 0.0
        self._held: dict[int, Delivery] = {}
        self._touched: dict[int, float] = {}
        self._jobs: dict[int, Job] = {}
        self._ready: deque[Job] = deque()
        self._waiting: list[tuple[float, int, Job]] = []
        self.settler = Settler(app, self.hostname)
        self._next_number = 0
        self._stopping = False
        visibility = _visibility_timeout(app)
        self._extend_every = visibility / 3 if app.broker.capabilities.extend_visibility else None
        self._visibility = visibility
        self._next_housekeeping = 0.0

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, start the pool and consume until :meth:`stop` (or, in burst mode, until
        the queues are empty)."""
        self.app.finalize()
        connect_with_retry(
            self.app.broker,
            RetryPolicy.from_conf(self.app.conf, startup=True),
            logger,
            stopping=lambda: self._stopping,
        )
        signals.worker_init.send(sender=self)
        self.control.start()
        self.pool.start()
        self.app.broker.set_prefetch(self.prefetch_limit)
        self.started_at = time.monotonic()
        self.ready.set()
        signals.worker_ready.send(sender=self)
        logger.info(
            "%s ready: queues %s, concurrency %s (%s)",
            self.hostname,
            ",".join(self.queues),
            self.concurrency,
            self.pool.name,
        )
        try:
            self._loop()
        finally:
            self._shutdown()

    def stop(self, *, cold: bool = False) -> None:
        """Stop taking work: warm (running jobs finish) or ``cold`` (they are cut short)."""
        self.settler.cold = self.settler.cold or cold
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def restart_pool(self) -> None:
        """Replace the pool's processes once idle (SIGHUP); no message is dropped."""
        self.commands.put(("restart",))

    def join(self, timeout: float = 10.0) -> None:
        """Wait until the queues are empty (delayed messages included) and nothing is held;
        for tests."""
        broker = self.app.broker
        deadline = time.monotonic() + timeout
        while self._held or any(broker.size(q) for q in self.queues):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"worker still busy after {timeout}s: {len(self._held)} held")
            time.sleep(0.01)

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        broker = self.app.broker
        pool = self.pool
        while not self._stopping:
            try:
                self._housekeeping()
                self._dispatch()
                room = self._window - len(self._held)
                free = pool.free_slots() > 0
                received: list[Delivery] = []
                timeout = self._receive_timeout(room, free)
                if timeout is not None:
                    received = broker.receive(self.queues, room, timeout)
                    for delivery in received:
                        self._accept(delivery)
                    if self.burst and not received and not self._held:
                        break
                    self._dispatch()
                    if received:
                        self.settler.flush(finish_receive=True)
                if pool.in_flight():
                    wait = 0.0 if (free and room > 0) else self._pool_wait(POOL_WAIT)
                    self._settle(pool.poll(wait))
                elif not received and room <= 0:
                    time.sleep(self._pool_wait(POOL_WAIT))
                self.settler.flush()
            except BrokerConnectionError as exc:
                policy = RetryPolicy.from_conf(self.app.conf, startup=False)
                reconnect(broker, policy, logger, exc, stopping=lambda: self._stopping)

    def _receive_timeout(self, room: int, free: bool) -> float | None:
        """Whether to receive now (None: not) and how long to wait for a first message.

        A batch once half the window is free, or what there is when a slot is idle; the wait
        is short while jobs run (their reports are read between receives), else until the
        next housekeeping. A store with an ``idle_wait`` (SQS) is long-polled that long
        whenever no job waits here to run, and not polled at all while jobs wait for a busy
        pool: its polls are paid requests and its long poll returns at the first message.
        Reports and commands can wait that long; a held message's visibility extension, a
        rate-limited job and a hard time limit cut the wait short."""
        idle_slot = free and not self._ready
        if room <= 0 or (room < self._low_water and not idle_slot):
            return None
        long_wait = self.app.broker.capabilities.idle_wait
        if long_wait and not self.burst:
            if self._ready:
                return 0.0 if free else None
            return self.pool.until_deadline(self._until_due(long_wait))
        if not idle_slot:
            return 0.0
        if self.burst or self.pool.in_flight():
            return BUSY_RECEIVE_TIMEOUT
        return self._pool_wait(IDLE_RECEIVE_TIMEOUT)

    def _until_due(self, limit: float) -> float:
        """:meth:`_pool_wait` for a long wait: housekeeping counts only once a held message
        needs its visibility extended (at the first housekeeping from then)."""
        extend_at = math.inf
        if self._extend_every is not None and self._touched:
            extend_at = max(
                min(self._touched.values()) + self._extend_every, self._next_housekeeping
            )
        return self._pool_wait(limit, housekeeping=extend_at)

    def _pool_wait(self, limit: float, *, housekeeping: float | None = None) -> float:
        """``limit``, or less when housekeeping (at ``housekeeping``, if given) or a
        rate-limited job falls due sooner."""
        due = self._next_housekeeping if housekeeping is None else housekeeping
        if self._waiting:
            due = min(due, self._waiting[0][0])
        return max(0.0, min(limit, due - time.monotonic()))

    def _accept(self, delivery: Delivery) -> None:
        headers = delivery.message.headers
        task_name = headers.get("task")
        task_name = task_name if isinstance(task_name, str) else ""
        task_id = headers.get("id")
        task_id = task_id if isinstance(task_id, str) else ""
        eta = headers.get("eta")
        if eta and self._defer_until_due(delivery, eta):
            return
        self._next_number += 1
        job = Job(self._next_number, delivery.message, delivery.delivery_info, task_name, task_id)
        self._held[job.number] = delivery
        self._jobs[job.number] = job
        self._touched[job.number] = time.monotonic()
        if signals.task_received.has_receivers():
            signals.task_received.send(sender=self, request=job)
        if len(self.revoked) and task_id in self.revoked:
            self._discard(job, "revoked")
            return
        expires = headers.get("expires")
        if expires and _is_past(expires):
            self._discard(job, "expired")
            return
        if task_name and self.rate_limits.rate(task_name):
            wait = self.rate_limits.wait(task_name)
            if wait > 0:
                heapq.heappush(self._waiting, (time.monotonic() + wait, job.number, job))
                return
        self._ready.append(job)

    def _defer_until_due(self, delivery: Delivery, eta: Any) -> bool:
        """A message whose eta is ahead (sent by a peer that holds ETAs in memory) goes back
        to the store as a delayed message, so no worker holds it in memory."""
        due = _moment(eta)
        if due is None:
            return False
        delay = (due - utcnow()).total_seconds()
        if delay <= 0.05:
            return False
        self.app.broker.publish(
            delivery.queue, delivery.message, delay=delay, priority=delivery.message.priority
        )
        delivery.ack()
        return True

    def _dispatch(self) -> None:
        free = self.pool.free_slots()
        if free <= 0 or not self._ready:
            return
        batch: list[Job] = []
        while self._ready and len(batch) < free:
            job = self._ready.popleft()
            if len(self.revoked) and job.task_id in self.revoked:
                self._discard(job, "revoked")
                continue
            batch.append(job)
            if not self.settler.mode(job.task_name).late:
                self.settler.ack(self._held[job.number])
        if batch:
            self.settler.flush(finish_receive=True)
            self.pool.submit_many(batch)
        else:
            self.settler.flush()

    # -- settling ------------------------------------------------------------------------------

    def _release(self, number: int) -> Delivery | None:
        self._touched.pop(number, None)
        self._jobs.pop(number, None)
        return self._held.pop(number, None)

    def _settle(self, reports: list[Report]) -> None:
        for report in reports:
            delivery = self._release(report.number)
            if delivery is None:
                continue
            self.processed += 1
            self.totals[report.task_name] += 1
            if report.state == states.SUCCESS and logger.isEnabledFor(logging.INFO):
                logger.info(
                    "Task %s[%s] succeeded in %.6fs: %s",
                    report.task_name,
                    report.task_id,
                    report.runtime,
                    report.summary,
                    extra={"task_name": report.task_name, "task_id": report.task_id},
                )
            self.settler.settle(report, delivery)

    def _discard(self, job: Job, reason: str) -> None:
        """Do not run a revoked or expired message: store REVOKED and ack it."""
        delivery = self._release(job.number)
        if delivery is not None:
            self.settler.discard(delivery, reason)

    # -- housekeeping --------------------------------------------------------------------------

    def _housekeeping(self) -> None:
        """Remote-control commands, rate-limited jobs now due, visibility extension."""
        while not self.commands.empty():
            self._run_command(self.commands.get_nowait())
        now = time.monotonic()
        while self._waiting and self._waiting[0][0] <= now:
            _, number, job = heapq.heappop(self._waiting)
            if number not in self._held:
                continue
            wait = self.rate_limits.wait(job.task_name)
            if wait > 0:
                heapq.heappush(self._waiting, (now + wait, number, job))
                break
            self._ready.append(job)
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + min(1.0, (self._extend_every or 2.0) / 2)
        if self._extend_every is not None:
            for number, touched in list(self._touched.items()):
                if now - touched >= self._extend_every:
                    delivery = self._held.get(number)
                    if delivery is not None and not delivery.settled:
                        self._extend(delivery)
                    self._touched[number] = now

    def _extend(self, delivery: Delivery) -> None:
        """Keep a held message invisible; a store that refuses (the message was delivered
        again meanwhile) costs a warning, not the worker."""
        try:
            delivery.extend(self._visibility)
        except BrokerConnectionError:
            raise
        except BrokerError as exc:
            logger.warning("could not keep a message from %s invisible: %s", delivery.queue, exc)

    def _run_command(self, command: tuple[Any, ...]) -> None:
        if command[0] == "terminate":
            _, ids, signum = command
            for task_id in ids:
                if self.pool.terminate(task_id, signum):
                    logger.warning("Terminating %s with signal %s", task_id, signum)
        elif command[0] == "restart":
            logger.warning("Restarting the pool's processes")
            self.pool.restart()

    # -- introspection -------------------------------------------------------------------------

    def active_requests(self) -> list[dict[str, Any]]:
        return [
            {
                "id": job.task_id,
                "name": job.task_name,
                "hostname": self.hostname,
                "args": job.message.headers.get("argsrepr"),
                "kwargs": job.message.headers.get("kwargsrepr"),
                "delivery_info": job.delivery_info,
            }
            for job in list(self.pool.active.values())
        ]

    def stats(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "pool": {
                "implementation": self.pool.name,
                "max-concurrency": self.concurrency,
                "processes": self.pool.pids(),
            },
            "prefetch_count": self.prefetch_limit,
            "held": len(self._held),
            "total": dict(self.totals),
            "uptime": round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
        }

    # -- shutdown ------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        how = "cold" if self.settler.cold else "warm"
        signals.worker_shutting_down.send(sender=self.hostname, sig="stop", how=how, exitcode=0)
        self._stop_prefetching()
        unstarted = [job.number for job in self._ready] + [item[1] for item in self._waiting]
        self._ready.clear()
        self._waiting.clear()
        for number in unstarted:
            delivery = self._release(number)
            if delivery is not None:
                self.settler.give_back(delivery)
        self.settler.flush()
        deadline = time.monotonic() + self.shutdown_timeout
        while self.pool.in_flight() and not self.settler.cold:
            if time.monotonic() >= deadline:
                logger.warning("running tasks outlived worker_shutdown_timeout; cold shutdown")
                self.settler.cold = True
                break
            self._housekeeping()
            self._settle(self.pool.poll(self._pool_wait(POOL_WAIT)))
            self.settler.flush()
        if self.pool.in_flight():
            self.settler.cold = True
            self._settle(self.pool.terminate_all())
        self.settler.flush()
        self.pool.stop()
        for number in list(self._held):
            delivery = self._release(number)
            if delivery is not None and not delivery.settled:
                delivery.reject(requeue=True)
        self.control.stop()
        signals.worker_shutdown.send(sender=self)

    def _stop_prefetching(self) -> None:
        """What a push store sent ahead goes back to the queue now, for other workers, not
        when the connection closes after the running jobs finished."""
        try:
            self.app.broker.set_prefetch(0)
        except BrokerError as exc:
            logger.warning("prefetched messages go back when the connection closes: %s", exc)


def _moment(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _is_past(value: Any) -> bool:
    moment = _moment(value)
    return moment is not None and moment <= utcnow()


def _visibility_timeout(app: Taskframe) -> float:
    broker = app.broker
    value = broker.transport_options.get("visibility_timeout")
    if value is None:
        value = getattr(broker, "visibility_timeout", None)
    return float(value) if value else DEFAULT_VISIBILITY_TIMEOUT


def _make_pool(
    name: str,
    app: Taskframe,
    concurrency: int,
    hostname: str,
    fair: bool,
    depth: int,
    **options: Any,
) -> Pool:
    if name == "prefork":
        from taskframe.worker.prefork import PreforkPool

        return PreforkPool(app, concurrency, hostname, fair=fair, depth=depth, **options)
    if name == "asyncio":
        from taskframe.worker.asyncio_pool import AsyncioPool

        return AsyncioPool(app, concurrency, hostname, **options)
    if name == "threads":
        return ThreadPool(app, concurrency, hostname, **options)
    return SoloPool(app, concurrency, hostname, **options)
