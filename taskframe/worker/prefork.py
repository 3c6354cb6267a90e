"""The prefork pool: child processes, supervised by the worker's main process.

Each child owns one duplex pipe and runs one job at a time; the parent sends the job (the
message as received, body still encoded) and reads back a :class:`Report`, waiting on all
pipes and process sentinels at once, so a child that dies is seen at once. The parent:

* replaces a child that exits (crash, ``max_tasks_per_child``, ``max_memory_per_child``);
* fails a job whose child died with ``WorkerLostError`` (or requeues it when the task has
  ``reject_on_worker_lost``);
* kills a child whose job passed its hard time limit and fails the job with
  ``TimeLimitExceeded``. Soft limits are raised inside the child by ``SIGALRM``.

Children are forked, so they inherit the imported tasks; each reconnects to the broker and
result backend on first use (the app notices the new pid).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from taskframe import signals, states
from taskframe.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from taskframe.execution import ACK, REQUEUE
from taskframe.worker.job import Job, Report, run_job
from taskframe.worker.pools import Pool

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from taskframe.app import Taskframe

__all__ = ["PreforkPool"]

logger = logging.getLogger("taskframe.worker")


@dataclass
class _Child:
    process: BaseProcess
    connection: Connection
    job: Job | None = None
    started: float = 0.0
    hard_limit: float | None = None


class PreforkPool(Pool):
    name = "prefork"

    def __init__(self, app: Taskframe, concurrency: int, hostname: str, **options: Any) -> None:
        super().__init__(app, concurrency, hostname, **options)
        self._context = multiprocessing.get_context("fork")
        self._children: list[_Child] = []
        self._stopping = False

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._children.append(self._spawn())

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main,
            args=(self.app, child_end, self.hostname, self.max_tasks_per_child,
                  self.max_memory_per_child, self.soft_time_limit),
            name="taskframe-child",
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Child(process, parent_end)

    def running_pids(self) -> list[int]:
        return [child.process.pid for child in self._children if child.process.pid is not None]

    def free_slots(self) -> int:
        return sum(1 for child in self._children if child.job is None)

    def in_flight(self) -> int:
        return sum(1 for child in self._children if child.job is not None)

    def submit(self, job: Job) -> None:
        child = next(child for child in self._children if child.job is None)
        child.job = job
        child.started = time.monotonic()
        hard = _hard_limit(job, self.time_limit)
        child.hard_limit = child.started + hard if hard else None
        child.connection.send_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))

    def poll(self, timeout: float) -> list[Report]:
        reports: list[Report] = []
        timeout = self._bounded_by_limits(timeout)
        waitables: dict[Any, _Child] = {}
        for child in self._children:
            waitables[child.connection] = child
            waitables[child.process.sentinel] = child
        ready = wait(list(waitables), timeout=timeout) if waitables else []
        for item in ready:
            child = waitables[item]
            if item is child.connection:
                report = self._read(child)
                if report is not None:
                    reports.append(report)
        for child in list(self._children):
            if not child.process.is_alive() and child.job is None and child.connection.poll():
                report = self._read(child)
                if report is not None:
                    reports.append(report)
            if not child.process.is_alive():
                reports.extend(self._replace(child, lost=True))
        reports.extend(self._enforce_hard_limits())
        return reports

    def _bounded_by_limits(self, timeout: float) -> float:
        deadlines = [child.hard_limit for child in self._children if child.hard_limit]
        if not deadlines:
            return timeout
        return max(0.0, min(timeout, min(deadlines) - time.monotonic()))

    def _read(self, child: _Child) -> Report | None:
        try:
            report: Report = pickle.loads(child.connection.recv_bytes())
        except (EOFError, OSError):
            return None
        child.job = None
        child.hard_limit = None
        return report

    def _replace(self, child: _Child, *, lost: bool) -> list[Report]:
        reports: list[Report] = []
        job = child.job
        if job is not None and lost:
            exitcode = child.process.exitcode
            reports.append(self._fail_job(job, WorkerLostError(
                f"Worker exited prematurely: exitcode {exitcode} (job {job.task_name}[{job.task_id}])"
            ), lost=True))
        child.connection.close()
        self._children.remove(child)
        if not self._stopping:
            self._children.append(self._spawn())
        return reports

    def _enforce_hard_limits(self) -> list[Report]:
        reports: list[Report] = []
        now = time.monotonic()
        for child in list(self._children):
            if child.job is None or child.hard_limit is None or now < child.hard_limit:
                continue
            job = child.job
            logger.error(
                "Hard time limit (%ss) exceeded for %s[%s]; killing child %s",
                round(child.hard_limit - child.started, 3), job.task_name, job.task_id,
                child.process.pid,
            )
            if child.process.pid is not None:
                os.kill(child.process.pid, signal.SIGKILL)
            child.process.join(5)
            reports.append(self._fail_job(job, TimeLimitExceeded(
                f"TimeLimitExceeded({round(child.hard_limit - child.started, 3)})"
            ), lost=False))
            child.job = None
            self._replace(child, lost=False)
        return reports

    def _fail_job(self, job: Job, error: BaseException, *, lost: bool) -> Report:
        task = self.app.tasks.get(job.task_name)
        requeue = False
        if lost and task is not None:
            acks_late = task.acks_late if task.acks_late is not None else self.app.conf.task_acks_late
            reject = task.reject_on_worker_lost
            if reject is None:
                reject = self.app.conf.task_reject_on_worker_lost
            requeue = bool(acks_late and reject)
        if not requeue:
            self.app.store_result(job.task_id, states.FAILURE, error, traceback=None)
        logger.error("Task %s[%s] %s: %r", job.task_name, job.task_id,
                     "requeued" if requeue else "failed", error)
        return Report(
            job.id, job.task_id, job.task_name, states.FAILURE, time.monotonic(),
            settle=REQUEUE if requeue else ACK, reason=repr(error), summary=repr(error),
        )

    def stop(self, *, wait: bool = True) -> None:
        self._stopping = True
        for child in self._children:
            try:
                child.connection.send_bytes(b"")
            except OSError:
                continue
        deadline = time.monotonic() + (60.0 if wait else 0.5)
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5)
            child.connection.close()
        self._children = []


def _hard_limit(job: Job, default: float | None) -> float | None:
    timelimit = job.message.headers.get("timelimit") or (None, None)
    hard = timelimit[0] if isinstance(timelimit, (list, tuple)) and timelimit else None
    return float(hard) if hard else default


def _soft_limit(job: Job, default: float | None) -> float | None:
    timelimit = job.message.headers.get("timelimit") or (None, None)
    soft = timelimit[1] if isinstance(timelimit, (list, tuple)) and len(timelimit) > 1 else None
    return float(soft) if soft else default


def _raise_soft_limit(signum: int, frame: object) -> None:
    raise SoftTimeLimitExceeded("SoftTimeLimitExceeded()")


def _child_main(
    app: Taskframe,
    connection: Connection,
    hostname: str,
    max_tasks: int | None,
    max_memory_kib: int | None,
    soft_time_limit: float | None,
) -> None:
    """A child's life: take a job, run it, report, until told to stop or recycled."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, _raise_soft_limit)
    signals.worker_process_init.send(sender=None)
    done = 0
    while True:
        try:
            data = connection.recv_bytes()
        except (EOFError, OSError):
            break
        if not data:
            break
        job: Job = pickle.loads(data)
        soft = _soft_limit(job, soft_time_limit)
        if soft:
            signal.setitimer(signal.ITIMER_REAL, soft)
        try:
            report = run_job(app, job, hostname)
        finally:
            if soft:
                signal.setitimer(signal.ITIMER_REAL, 0)
        connection.send_bytes(pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL))
        done += 1
        if max_tasks and done >= max_tasks:
            break
        if max_memory_kib and _rss_kib() > max_memory_kib:
            logger.warning("child %s passed max_memory_per_child (%s KiB); recycling",
                           os.getpid(), max_memory_kib)
            break
    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    connection.close()
    os._exit(0)


def _rss_kib() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
