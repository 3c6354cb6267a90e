"""The pool contract, and the solo and threads pools.

A pool runs :class:`~taskframe.worker.job.Job` objects and reports back; the consumer owns
the messages and settles them from the reports. ``poll`` is how the consumer waits for work
to finish, so no pool needs a thread of its own to talk to the consumer.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from taskframe.worker.job import Job, Report, run_job

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["Pool", "SoloPool", "ThreadPool"]


class Pool(ABC):
    """Runs jobs with up to ``concurrency`` at once."""

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

    def start(self) -> None:
        """Start workers (processes, threads); called once before the first submit."""

    @abstractmethod
    def free_slots(self) -> int: ...

    @abstractmethod
    def in_flight(self) -> int: ...

    @abstractmethod
    def submit(self, job: Job) -> None: ...

    @abstractmethod
    def poll(self, timeout: float) -> list[Report]:
        """Reports of finished jobs; waits up to ``timeout`` for the first when none is ready."""

    @abstractmethod
    def stop(self, *, wait: bool = True) -> None:
        """Stop; with ``wait`` let running jobs finish first."""

    def running_pids(self) -> list[int]:
        return []


class SoloPool(Pool):
    """Runs each job inline in the consumer's thread: one at a time, no isolation."""

    name = "solo"

    def __init__(self, app: Taskframe, concurrency: int, hostname: str, **options: object) -> None:
        super().__init__(app, 1, hostname, **options)  # type: ignore[arg-type]  # same keywords
        self._done: list[Report] = []

    def free_slots(self) -> int:
        return 0 if self._done else 1

    def in_flight(self) -> int:
        return len(self._done)

    def submit(self, job: Job) -> None:
        self._done.append(run_job(self.app, job, self.hostname))

    def poll(self, timeout: float) -> list[Report]:
        done, self._done = self._done, []
        return done

    def stop(self, *, wait: bool = True) -> None:
        self._done = []


class ThreadPool(Pool):
    """Runs jobs on ``concurrency`` threads; for I/O-bound tasks."""

    name = "threads"

    def __init__(self, app: Taskframe, concurrency: int, hostname: str, **options: object) -> None:
        super().__init__(app, concurrency, hostname, **options)  # type: ignore[arg-type]  # same keywords
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._reports: queue.SimpleQueue[Report] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0

    def start(self) -> None:
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._work, name=f"taskframe-thread-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._reports.put(run_job(self.app, job, self.hostname))

    def free_slots(self) -> int:
        return self.concurrency - self._busy

    def in_flight(self) -> int:
        return self._busy

    def submit(self, job: Job) -> None:
        self._busy += 1
        self._jobs.put(job)

    def poll(self, timeout: float) -> list[Report]:
        reports: list[Report] = []
        try:
            reports.append(self._reports.get(timeout=timeout) if timeout > 0 else self._reports.get_nowait())
        except queue.Empty:
            return reports
        while True:
            try:
                reports.append(self._reports.get_nowait())
            except queue.Empty:
                break
        self._busy -= len(reports)
        return reports

    def stop(self, *, wait: bool = True) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
        self._threads = []
