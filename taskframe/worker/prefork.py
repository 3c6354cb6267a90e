"""The prefork pool: child processes, supervised by the worker's main process.

Each child owns one duplex pipe and runs one job at a time; the parent sends the job (the
message as received, body still encoded) and reads back a :class:`Report`, waiting on all
pipes and process sentinels at once, so a child that dies is seen at once. The parent:

* replaces a child that exits (crash, ``max_tasks_per_child``, ``max_memory_per_child``) and
  reports its job as lost (``WorkerLostError``); the consumer fails or requeues it;
* kills a child whose job passed its hard time limit and reports ``TimeLimitExceeded``. Soft
  limits are raised inside the child by ``SIGALRM``;
* on a revoke with ``terminate`` sends the signal to the child running that task;
* on :meth:`restart` (SIGHUP) replaces every child once it is idle.

A child holds no job it has not started, so a job handed over is a job begun: the consumer's
early ack (flushed before the hand-over) never covers a message that could be lost unstarted.
If the parent dies, a child finishes the job it has, fails to report, and exits; it sees the
closed pipe (children close each other's pipe ends, so the parent's death is visible).

``max_memory_per_child`` is compared with the child's resident set (``/proc/self/statm``,
else the peak from ``getrusage``) after each task, in KiB, as Celery does.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from taskframe import signals
from taskframe.exceptions import TaskRevokedError, TimeLimitExceeded, WorkerLostError
from taskframe.worker.job import Job, Report, failed_report, hard_limit, run_job
from taskframe.worker.pools import Pool

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from taskframe.app import Taskframe

__all__ = ["PreforkPool"]

logger = logging.getLogger("taskframe.worker")

STOP = b""


@dataclass
class _Child:
    process: BaseProcess
    connection: Connection
    job: Job | None = None
    started: float = 0.0
    deadline: float | None = None
    terminated: int | None = None
    retire: bool = False


class PreforkPool(Pool):
    name = "prefork"

    def __init__(self, app: Taskframe, concurrency: int, hostname: str, **options: Any) -> None:
        super().__init__(app, concurrency, hostname, **options)
        self._context = multiprocessing.get_context("fork")
        self._children: list[_Child] = []
        self._pending: list[Report] = []
        self._stopping = False

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._children.append(self._spawn())

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe(duplex=True)
        inherited = [child.connection for child in self._children]
        process = self._context.Process(
            target=_child_main,
            args=(self.app, child_end, parent_end, inherited, self.hostname,
                  self.max_tasks_per_child, self.max_memory_per_child, self.soft_time_limit),
            name="taskframe-child",
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Child(process, parent_end)

    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children if child.process.pid is not None]

    def free_slots(self) -> int:
        return sum(1 for child in self._children if child.job is None and not child.retire)

    def submit(self, job: Job) -> None:
        child = next(c for c in self._children if c.job is None and not c.retire)
        self.active[job.number] = job
        child.job = job
        child.started = time.monotonic()
        limit = hard_limit(job, self.time_limit)
        child.deadline = child.started + limit if limit else None
        try:
            child.connection.send_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            self._pending.extend(self._replace(child))

    def poll(self, timeout: float) -> list[Report]:
        reports, self._pending = self._pending, []
        if reports:
            timeout = 0.0
        waitables: dict[Any, _Child] = {}
        for child in self._children:
            waitables[child.connection] = child
            waitables[child.process.sentinel] = child
        ready = wait(list(waitables), timeout=self._bounded_by_deadlines(timeout))
        for item in ready:
            child = waitables[item]
            if item is child.connection and child in self._children:
                reports.extend(self._read(child))
        for child in list(self._children):
            if not child.process.is_alive():
                if child.connection.poll():
                    reports.extend(self._read(child))
                reports.extend(self._replace(child))
        reports.extend(self._enforce_hard_limits())
        for report in reports:
            self.active.pop(report.number, None)
        return reports

    def _bounded_by_deadlines(self, timeout: float) -> float:
        deadlines = [child.deadline for child in self._children if child.deadline is not None]
        if not deadlines:
            return timeout
        return max(0.0, min(timeout, min(deadlines) - time.monotonic()))

    def _read(self, child: _Child) -> list[Report]:
        try:
            report: Report = pickle.loads(child.connection.recv_bytes())
        except (EOFError, OSError):
            return []
        child.job = None
        child.deadline = None
        if child.retire and child.process.is_alive():
            self._retire(child)
        return [report]

    def _replace(self, child: _Child) -> list[Report]:
        """Forget a dead child, report its job as lost, and start another in its place."""
        reports: list[Report] = []
        job = child.job
        if job is not None:
            runtime = time.monotonic() - child.started
            if child.terminated is not None:
                error: BaseException = TaskRevokedError("terminated")
            else:
                error = WorkerLostError(
                    f"Worker exited prematurely: exitcode {child.process.exitcode} "
                    f"(job {job.task_name}[{job.task_id}])"
                )
            reports.append(failed_report(job, error, runtime))
        child.process.join(1)
        child.connection.close()
        if child in self._children:
            self._children.remove(child)
            if not self._stopping:
                self._children.append(self._spawn())
        return reports

    def _retire(self, child: _Child) -> None:
        with contextlib.suppress(OSError):
            child.connection.send_bytes(STOP)
        child.process.join(5)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(5)
        self._replace(child)

    def _enforce_hard_limits(self) -> list[Report]:
        reports: list[Report] = []
        now = time.monotonic()
        for child in list(self._children):
            if child.job is None or child.deadline is None or now < child.deadline:
                continue
            job = child.job
            limit = round(child.deadline - child.started, 3)
            logger.error(
                "Hard time limit (%ss) exceeded for %s[%s]; killing child %s",
                limit, job.task_name, job.task_id, child.process.pid,
            )
            child.process.kill()
            child.process.join(5)
            child.job = None
            reports.append(failed_report(
                job, TimeLimitExceeded(f"TimeLimitExceeded({limit})"), now - child.started
            ))
            self._replace(child)
        return reports

    def terminate(self, task_id: str, signum: int) -> bool:
        for child in self._children:
            if child.job is not None and child.job.task_id == task_id and child.process.pid:
                child.terminated = signum
                os.kill(child.process.pid, signum)
                return True
        return False

    def restart(self) -> None:
        for child in list(self._children):
            child.retire = True
            if child.job is None:
                self._retire(child)

    def terminate_all(self) -> list[Report]:
        self._stopping = True
        reports = []
        for child in self._children:
            child.process.kill()
        for child in list(self._children):
            child.process.join(5)
            if child.job is not None:
                reports.append(failed_report(child.job, WorkerLostError("cold shutdown"), 0.0))
            child.connection.close()
        self._children = []
        self.active.clear()
        return reports

    def stop(self) -> None:
        self._stopping = True
        for child in self._children:
            try:
                child.connection.send_bytes(STOP)
            except OSError:
                continue
        deadline = time.monotonic() + 10.0
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5)
            child.connection.close()
        self._children = []


def _child_main(
    app: Taskframe,
    connection: Connection,
    parent_end: Connection,
    inherited: list[Connection],
    hostname: str,
    max_tasks: int | None,
    max_memory_kib: int | None,
    soft_time_limit: float | None,
) -> None:
    """A child's life: take a job, run it, report, until told to stop or recycled."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    parent_end.close()
    for other in inherited:
        other.close()
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
        report = run_job(app, job, hostname, soft_time_limit)
        try:
            connection.send_bytes(pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            break
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
    """Resident memory now, in KiB (the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
