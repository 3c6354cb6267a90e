"""The asyncio pool: ``async def`` tasks run side by side on one event loop.

The loop runs in a thread of its own; the consumer submits jobs with
``call_soon_threadsafe`` and reads reports from a queue, like the threads pool. Up to
``concurrency`` jobs run at once (default 100: coroutines are cheap). A sync task on this pool
runs in a small thread pool, never on the loop, under its soft limit as on the threads pool.

Time limits and revokes are cancellations of the job's asyncio task, with a reason:

* soft limit (async tasks): :class:`SoftTimeLimitExceeded` is raised inside the coroutine at
  the ``await`` it is blocked on; it may catch it and clean up;
* hard limit: the coroutine gets ``CancelledError`` (``finally`` blocks run) and the task fails
  with ``TimeLimitExceeded``. A coroutine that swallows the cancel keeps running; a sync task
  keeps its thread until it returns (threads cannot be killed), though its message is settled;
* revoke with ``terminate``: cancelled, stored as REVOKED;
* cold shutdown: every running job is cancelled and reported as lost.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from taskframe.exceptions import TaskRevokedError, WorkerLostError
from taskframe.execution_async import HARD_LIMIT_CANCEL, SOFT_LIMIT_CANCEL, execute_async
from taskframe.worker.job import (
    Job,
    Report,
    decode,
    failed_report,
    hard_limit,
    report_of,
    soft_limit,
)
from taskframe.worker.limits import SoftLimit
from taskframe.worker.pools import Pool

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["AsyncioPool"]

REVOKE_CANCEL = "taskframe: revoked"
SHUTDOWN_CANCEL = "taskframe: cold shutdown"
SYNC_THREADS = 8
COLD_SHUTDOWN_WAIT = 2.0


class AsyncioPool(Pool):
    name = "asyncio"

    def __init__(self, app: Taskframe, concurrency: int, hostname: str, **options: Any) -> None:
        super().__init__(app, concurrency, hostname, **options)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._reports: queue.SimpleQueue[Report] = queue.SimpleQueue()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=min(SYNC_THREADS, concurrency), thread_name_prefix="taskframe-sync"
        )

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="taskframe-asyncio", daemon=True
        )
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.active[job.number] = job
        self._loop.call_soon_threadsafe(self._begin, job)

    def _begin(self, job: Job) -> None:
        task = self._loop.create_task(self._run(job))
        self._tasks[job.number] = task
        timers: list[asyncio.TimerHandle] = []
        definition = self.app.tasks.get(job.task_name)
        soft = soft_limit(job, self.soft_time_limit)
        if soft and definition is not None and definition.is_async:
            timers.append(self._loop.call_later(soft, task.cancel, SOFT_LIMIT_CANCEL))
        hard = hard_limit(job, self.time_limit)
        if hard:
            timers.append(self._loop.call_later(hard, task.cancel, HARD_LIMIT_CANCEL))

        def finished(_: asyncio.Task[None]) -> None:
            for timer in timers:
                timer.cancel()
            self._tasks.pop(job.number, None)

        task.add_done_callback(finished)

    async def _run(self, job: Job) -> None:
        started = time.monotonic()
        message = decode(self.app, job)
        if isinstance(message, Report):
            self._reports.put(message)
            return
        soft = soft_limit(job, self.soft_time_limit)
        try:
            outcome = await execute_async(
                self.app,
                message,
                hostname=self.hostname,
                delivery_info=job.delivery_info,
                run_sync=lambda call: self._loop.run_in_executor(
                    self._executor, _run_with_soft_limit, call, soft
                ),
            )
        except asyncio.CancelledError as cancelled:
            reason = cancelled.args[0] if cancelled.args else None
            error: BaseException = (
                TaskRevokedError("terminated")
                if reason == REVOKE_CANCEL
                else WorkerLostError("cold shutdown")
            )
            self._reports.put(failed_report(job, error, time.monotonic() - started))
            return
        self._reports.put(report_of(job, outcome))

    def poll(self, timeout: float) -> list[Report]:
        reports: list[Report] = []
        try:
            first = (
                self._reports.get(timeout=timeout) if timeout > 0 else self._reports.get_nowait()
            )
            reports.append(first)
            while True:
                reports.append(self._reports.get_nowait())
        except queue.Empty:
            pass
        for report in reports:
            self.active.pop(report.number, None)
        return reports

    def terminate(self, task_id: str, signum: int) -> bool:
        numbers = [job.number for job in self.active.values() if job.task_id == task_id]
        for number in numbers:
            self._loop.call_soon_threadsafe(self._cancel, number, REVOKE_CANCEL)
        return bool(numbers)

    def _cancel(self, number: int, reason: str) -> None:
        task = self._tasks.get(number)
        if task is not None:
            task.cancel(reason)

    def terminate_all(self) -> list[Report]:
        for number in list(self.active):
            self._loop.call_soon_threadsafe(self._cancel, number, SHUTDOWN_CANCEL)
        reports: list[Report] = []
        deadline = time.monotonic() + COLD_SHUTDOWN_WAIT
        while self.active and time.monotonic() < deadline:
            reports.extend(self.poll(0.05))
        reports.extend(
            failed_report(job, WorkerLostError("cold shutdown"), 0.0)
            for job in self.active.values()
        )
        self.active.clear()
        return reports

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if not self._loop.is_running():
            self._loop.close()


def _run_with_soft_limit(call: Callable[[], Any], soft: float | None) -> Any:
    with SoftLimit(soft):
        return call()
