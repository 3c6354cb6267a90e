"""The pool contract, and the solo and threads pools.

A pool runs :class:`~taskframe.worker.job.Job` objects and reports back; the consumer owns
the messages and settles them from the reports. ``poll`` is how the consumer waits for work
to finish, so no pool needs a thread of its own to talk to the consumer.

Time limits on these pools (the prefork pool kills a child instead):

* solo: the soft limit is raised inside the task (``SIGALRM`` in the main thread); the hard
  limit cannot be enforced, since the task runs on the consumer's own thread;
* threads: the soft limit is raised inside the task's thread, and so is ``TimeLimitExceeded``
  at the hard limit, so the task fails through the normal path. A thread cannot be killed: if
  it has not stopped :data:`HARD_LIMIT_GRACE` seconds later (stuck in one C call), the pool
  reports the failure itself, so the message is settled, and replaces the thread, whose
  eventual report is dropped. A revoke with ``terminate`` raises ``TaskRevokedError`` in the
  task's thread in the same way.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from taskframe.exceptions import TaskRevokedError, TimeLimitExceeded, WorkerLostError
from taskframe.worker.job import Job, Report, failed_report, hard_limit, run_job
from taskframe.worker.limits import raise_in_thread

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["HARD_LIMIT_GRACE", "Pool", "SoloPool", "ThreadPool"]

HARD_LIMIT_GRACE = 1.0


class Pool(ABC):
    """Runs jobs with up to ``concurrency`` at once; ``active`` holds the running ones.

    ``fork_lock`` is held while a pool forks, so that no other thread of the worker is inside
    a client library at that moment."""

    name = "pool"

    def __init__(
        self,
        app: Taskframe,
        concurrency: int,
        hostname: str,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.hostname = hostname
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit
        self.active: dict[int, Job] = {}
        self.fork_lock: AbstractContextManager[Any] = nullcontext()

    def start(self) -> None:
        """Start workers (processes, threads); called once before the first submit."""

    def free_slots(self) -> int:
        return self.concurrency - len(self.active)

    def in_flight(self) -> int:
        return len(self.active)

    @property
    def queue_capacity(self) -> int:
        """Jobs the pool can hold beyond the running ones (prefork children's queues); the
        consumer's prefetch window grows by this much, so a full pool still leaves it room."""
        return 0

    @abstractmethod
    def submit(self, job: Job) -> None: ...

    def submit_many(self, jobs: list[Job]) -> None:
        """Hand over several jobs at once (prefork sends a child its share in one write)."""
        for job in jobs:
            self.submit(job)

    @abstractmethod
    def poll(self, timeout: float) -> list[Report]:
        """Reports of finished jobs, waiting up to ``timeout`` seconds for the first."""

    def until_deadline(self, timeout: float) -> float:
        """``timeout``, or less when a hard time limit falls due sooner: :meth:`poll` must be
        called by then to enforce it."""
        return timeout

    @abstractmethod
    def stop(self) -> None:
        """Release the pool's workers once nothing runs (warm shutdown)."""

    @abstractmethod
    def terminate_all(self) -> list[Report]:
        """Stop at once (cold shutdown); reports for the jobs that were cut short."""

    def terminate(self, task_id: str, signum: int) -> bool:
        """Stop the running job of ``task_id`` (revoke with terminate); False if not here."""
        return False

    def restart(self) -> None:
        """Replace the pool's workers once they are idle (SIGHUP)."""

    def pids(self) -> list[int]:
        return []


class SoloPool(Pool):
    """Runs each job inline in the consumer's thread; concurrency is 1."""

    name = "solo"

    def __init__(self, app: Taskframe, concurrency: int, hostname: str, **options: object) -> None:
        super().__init__(app, 1, hostname, **options)  # type: ignore[arg-type]  # Pool keywords
        self._done: list[Report] = []

    def submit(self, job: Job) -> None:
        self.active[job.number] = job
        report = run_job(self.app, job, self.hostname, self.soft_time_limit)
        del self.active[job.number]
        self._done.append(report)

    def in_flight(self) -> int:
        return len(self._done)

    def free_slots(self) -> int:
        return 0 if self._done else 1

    def poll(self, timeout: float) -> list[Report]:
        done, self._done = self._done, []
        return done

    def stop(self) -> None:
        self._done = []

    def terminate_all(self) -> list[Report]:
        return self.poll(0.0)


class ThreadPool(Pool):
    """Runs jobs on ``concurrency`` threads; for I/O-bound tasks."""

    name = "threads"

    def __init__(self, app: Taskframe, concurrency: int, hostname: str, **options: object) -> None:
        super().__init__(app, concurrency, hostname, **options)  # type: ignore[arg-type]  # Pool keywords
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._reports: queue.SimpleQueue[Report] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._running: dict[int, tuple[int, float | None]] = {}
        self._abandoned: set[int] = set()
        self._told: set[int] = set()
        self._spawned = 0

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._spawn()

    def _spawn(self) -> None:
        self._spawned += 1
        thread = threading.Thread(
            target=self._work, name=f"taskframe-thread-{self._spawned}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            limit = hard_limit(job, self.time_limit)
            with self._lock:
                deadline = time.monotonic() + limit if limit else None
                self._running[job.number] = (threading.get_ident(), deadline)
            report = run_job(self.app, job, self.hostname, self.soft_time_limit)
            with self._lock:
                self._running.pop(job.number, None)
                self._told.discard(job.number)
                if job.number in self._abandoned:
                    self._abandoned.discard(job.number)
                    break
            self._reports.put(report)
        with self._lock:
            self._threads.discard(threading.current_thread())

    def submit(self, job: Job) -> None:
        self.active[job.number] = job
        self._jobs.put(job)

    def poll(self, timeout: float) -> list[Report]:
        reports = self._enforce_hard_limits()
        wait = 0.0 if reports else self.until_deadline(timeout)
        try:
            first = self._reports.get(timeout=wait) if wait > 0 else self._reports.get_nowait()
            reports.append(first)
        except queue.Empty:
            return reports
        while True:
            try:
                reports.append(self._reports.get_nowait())
            except queue.Empty:
                break
        for report in reports:
            self.active.pop(report.number, None)
        return reports

    def until_deadline(self, timeout: float) -> float:
        with self._lock:
            deadlines = [deadline for _, deadline in self._running.values() if deadline]
        if not deadlines:
            return timeout
        return max(0.0, min(timeout, min(deadlines) - time.monotonic()))

    def _enforce_hard_limits(self) -> list[Report]:
        """Raise TimeLimitExceeded in threads past their limit; give up on those told
        ``HARD_LIMIT_GRACE`` seconds ago that still run."""
        now = time.monotonic()
        stuck: list[int] = []
        with self._lock:
            for number, (ident, deadline) in list(self._running.items()):
                if deadline is None or now < deadline:
                    continue
                if number in self._told:
                    stuck.append(number)
                else:
                    self._told.add(number)
                    raise_in_thread(ident, TimeLimitExceeded)
                    self._running[number] = (ident, deadline + HARD_LIMIT_GRACE)
        reports = []
        for number in stuck:
            job = self.active.get(number)
            if job is not None:
                limit = hard_limit(job, self.time_limit)
                reports.append(self._abandon(job, TimeLimitExceeded(f"TimeLimitExceeded({limit})")))
        return reports

    def _abandon(self, job: Job, error: BaseException, *, replace: bool = True) -> Report:
        """Give up on a running job: report it now, drop its thread's report, and start a
        new thread in its place."""
        with self._lock:
            self._running.pop(job.number, None)
            self._abandoned.add(job.number)
            self._told.discard(job.number)
        self.active.pop(job.number, None)
        if replace:
            self._spawn()
        return failed_report(job, error, 0.0)

    def terminate(self, task_id: str, signum: int) -> bool:
        with self._lock:
            for number, (ident, _) in self._running.items():
                job = self.active.get(number)
                if job is not None and job.task_id == task_id:
                    return raise_in_thread(ident, TaskRevokedError)
        return False

    def stop(self) -> None:
        threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join(timeout=5)

    def terminate_all(self) -> list[Report]:
        return [
            self._abandon(job, WorkerLostError("cold shutdown"), replace=False)
            for job in list(self.active.values())
        ]
