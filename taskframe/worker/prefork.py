"""The prefork pool: child processes, supervised by the worker's main process.

Each child owns one duplex pipe. The parent sends it jobs (the message as received, body still
encoded, packed as plain tuples) and reads back one :class:`Report` per job, waiting on all
pipes and process sentinels at once, so a child that dies is seen at once. By default a child
holds its share of the worker's prefetch (``worker_prefetch_multiplier`` jobs, at most
:data:`CHILD_QUEUE`), the one it runs and the next ones, so it never waits for the parent
between tasks, and the worker never holds more than the prefetch limit. A child is topped up
as soon as it has room (jobs that free up together go in one pipe write). While every child's
queue is full the parent naps between reads (about one job's time) instead of waking for each
report. With ``-O fair`` a
child holds one job, and gets one only when it is free (better for long tasks of uneven
length). The parent:

* replaces a child that dies, reports the job it was running as lost (``WorkerLostError``;
  the consumer fails or requeues it) and hands the job it had not started to another child;
* kills a child whose job passed its hard time limit and reports ``TimeLimitExceeded`` (a
  job's clock starts when the report of the job before it arrives). Soft limits are raised
  inside the child by ``SIGALRM``;
* on a revoke with ``terminate`` sends the signal to the child when it runs that task;
* recycles a child after ``max_tasks_per_child`` tasks or past ``max_memory_per_child`` KiB
  of resident memory (``/proc/self/statm``, checked after each task): the child says so with
  its report and sends back the jobs it has not started, which go to the next child; the
  parent sends it nothing more and stops it;
* on :meth:`restart` (SIGHUP) replaces every child once it has run what it holds.

Before each fork the parent's objects are moved out of the garbage collector's reach
(``gc.freeze``), so a child's collections do not write to them and their pages stay shared
with the parent instead of being copied into every child.

A child always runs every job it was sent and did not hand back before it stops: when it is
told to stop, and when the parent has died (its reports then fail; children close each other's
pipe ends, so the parent's death shows as the end of the pipe). So a job handed over and
acked (early ack) is run even if the whole worker is killed, and never lost unstarted.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from taskframe import signals
from taskframe.exceptions import TaskRevokedError, TimeLimitExceeded, WorkerLostError
from taskframe.worker.job import (
    Job,
    Report,
    failed_report,
    hard_limit,
    run_job,
    unstarted_report,
)
from taskframe.worker.pools import Pool

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from taskframe.app import Taskframe

__all__ = ["PreforkPool"]

logger = logging.getLogger("taskframe.worker")

STOP = b""
CHILD_QUEUE = 16
"""Jobs a child holds at most (the one it runs and those next), unless ``-O fair``."""
READ_SIZE = 1 << 16
SATURATED_NAP = 0.001
"""While every child's queue is full, the parent sleeps between reads instead of waking for
each report, and reads the reports that piled up in one go: at most this long, and never
longer than a job takes at the recent pace (a longer nap left children of short tasks waiting
for work half of the time)."""
PACE_WEIGHT = 0.2
"""Weight of the newest job in the running average of job run times."""


@dataclass
class _Child:
    process: BaseProcess
    connection: Connection
    jobs: deque[Job] = field(default_factory=deque)
    started: float = 0.0
    deadline: float | None = None
    terminated: int | None = None
    retire: bool = False
    inbox: bytearray = field(default_factory=bytearray)


class PreforkPool(Pool):
    name = "prefork"

    def __init__(
        self,
        app: Taskframe,
        concurrency: int,
        hostname: str,
        *,
        fair: bool = False,
        depth: int = CHILD_QUEUE,
        **options: Any,
    ) -> None:
        super().__init__(app, concurrency, hostname, **options)
        self.depth = 1 if fair else max(1, min(depth, CHILD_QUEUE))
        self._context = multiprocessing.get_context("fork")
        self._children: list[_Child] = []
        self._backlog: deque[Job] = deque()
        self._stopping = False
        self._pace = 0.0
        self._terminate: dict[str, int] = {}
        """Signals for revoked tasks not yet started, sent when one starts in whichever child
        it ends up (a job moves on when its child dies or retires)."""

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._children.append(self._spawn())

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe(duplex=True)
        inherited = [child.connection for child in self._children]
        process = self._context.Process(
            target=_child_main,
            args=(
                self.app,
                child_end,
                parent_end,
                inherited,
                self.hostname,
                self.max_tasks_per_child,
                self.max_memory_per_child,
                self.soft_time_limit,
            ),
            name="taskframe-child",
            daemon=True,
        )
        gc.collect()
        gc.freeze()
        with self.fork_lock:
            process.start()
        child_end.close()
        return _Child(process, parent_end)

    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children if child.process.pid is not None]

    @property
    def queue_capacity(self) -> int:
        return self.concurrency * (self.depth - 1)

    def free_slots(self) -> int:
        """Room in the children: a child is topped up as soon as it has room (measured:
        refilling it only once it was down to half its queue let it run dry between refills,
        drain 5.3k against 6.2k tasks/s); jobs that free up together still go in one write."""
        room = sum(self.depth - len(c.jobs) for c in self._children if not c.retire)
        return room - len(self._backlog)

    def submit(self, job: Job) -> None:
        self.submit_many([job])

    def submit_many(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.active[job.number] = job
        self._backlog.extend(jobs)
        self._feed()

    def _feed(self) -> None:
        """Share the backlog among the children with room, least loaded first; each child's
        share goes in one pipe write."""
        while self._backlog:
            open_children = [c for c in self._children if not c.retire and len(c.jobs) < self.depth]
            if not open_children:
                return
            child = min(open_children, key=lambda c: len(c.jobs))
            share = -(-len(self._backlog) // len(open_children))
            count = min(self.depth - len(child.jobs), share)
            batch = [self._backlog.popleft() for _ in range(count)]
            try:
                child.connection.send_bytes(
                    pickle.dumps([job.pack() for job in batch], protocol=pickle.HIGHEST_PROTOCOL)
                )
            except OSError:
                self._backlog.extendleft(reversed(batch))
                child.retire = True
                continue
            was_idle = not child.jobs
            child.jobs.extend(batch)
            if was_idle:
                self._begin(child, time.monotonic())

    def _begin(self, child: _Child, now: float) -> None:
        """The child's first job has started: start its clock, terminate it if asked."""
        job = child.jobs[0]
        child.started = now
        limit = hard_limit(job, self.time_limit)
        child.deadline = now + limit if limit else None
        signum = self._terminate.pop(job.task_id, None)
        if signum is not None:
            self._signal(child, signum)

    def poll(self, timeout: float) -> list[Report]:
        reports: list[Report] = []
        waitables: dict[Any, _Child] = {}
        for child in self._children:
            waitables[child.connection] = child
            waitables[child.process.sentinel] = child
        timeout = self.until_deadline(timeout)
        if timeout > 0 and self._saturated():
            time.sleep(min(timeout, self._nap()))
            timeout = 0.0
        ended: list[_Child] = []
        for item in wait(list(waitables), timeout=timeout):
            child = waitables[item]
            if item is child.connection and child in self._children:
                reports.extend(self._read(child, readable=True))
            elif item is child.process.sentinel:
                ended.append(child)
        for child in ended:
            if child in self._children and not child.process.is_alive():
                reports.extend(self._read(child))
                reports.extend(self._replace(child))
        reports.extend(self._enforce_hard_limits())
        self._feed()
        for report in reports:
            self.active.pop(report.number, None)
        return reports

    def _saturated(self) -> bool:
        """Every child's queue is full: nothing to hand out until a job ends."""
        return self.depth > 1 and all(len(c.jobs) >= self.depth for c in self._children)

    def _nap(self) -> float:
        """About one job's time (the children's recent pace): the soonest a slot frees."""
        return min(SATURATED_NAP, self._pace)

    def until_deadline(self, timeout: float) -> float:
        deadlines = [child.deadline for child in self._children if child.deadline is not None]
        if not deadlines:
            return timeout
        return max(0.0, min(timeout, min(deadlines) - time.monotonic()))

    def _read(self, child: _Child, *, readable: bool = False) -> list[Report]:
        """Every report the child has written so far: one read takes all that are waiting
        (they are framed as ``Connection.send_bytes`` frames them), instead of a poll and two
        reads per report. ``readable``: the pipe is known to hold data, no poll needed."""
        reports: list[Report] = []
        while child.jobs and (readable or child.connection.poll()):
            try:
                data = os.read(child.connection.fileno(), READ_SIZE)
            except OSError:
                break
            if not data:
                break
            readable = False
            child.inbox += data
            now = time.monotonic()
            for frame in _frames(child.inbox):
                report, leaving, returned = pickle.loads(frame)
                if leaving:
                    child.retire = True
                if returned:
                    self._take_back(child, set(returned))
                    continue
                child.jobs.popleft()
                child.deadline = None
                reports.append(report)
                self._pace += (report.runtime - self._pace) * PACE_WEIGHT
                if child.jobs:
                    self._begin(child, now)
            if len(data) < READ_SIZE:
                break  # all that was waiting; the next poll's wait sees what comes later
        if child.retire and not child.jobs and child.process.is_alive():
            self._retire(child)
        return reports

    def _take_back(self, child: _Child, numbers: set[int]) -> None:
        """Jobs a leaving child sent back unstarted go first to the next child."""
        returned = [job for job in child.jobs if job.number in numbers]
        child.jobs = deque(job for job in child.jobs if job.number not in numbers)
        if not child.jobs:
            child.deadline = None
        self._backlog.extendleft(reversed(returned))

    def _replace(self, child: _Child) -> list[Report]:
        """Forget a dead child: its running job is lost, the others go to another child."""
        reports: list[Report] = []
        if child.jobs:
            job = child.jobs.popleft()
            runtime = time.monotonic() - child.started
            if child.terminated is not None:
                error: BaseException = TaskRevokedError("terminated")
            else:
                error = WorkerLostError(
                    f"Worker exited prematurely: exitcode {child.process.exitcode} "
                    f"(job {job.task_name}[{job.task_id}])"
                )
            reports.append(failed_report(job, error, runtime))
            self._backlog.extendleft(reversed(child.jobs))
            child.jobs.clear()
        child.process.join(1)
        child.connection.close()
        if child in self._children:
            self._children.remove(child)
            if not self._stopping:
                self._children.append(self._spawn())
        return reports

    def _retire(self, child: _Child) -> None:
        """Stop an idle child and start another in its place."""
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
            if not child.jobs or child.deadline is None or now < child.deadline:
                continue
            job = child.jobs.popleft()
            limit = round(child.deadline - child.started, 3)
            logger.error(
                "Hard time limit (%ss) exceeded for %s[%s]; killing child %s",
                limit,
                job.task_name,
                job.task_id,
                child.process.pid,
                extra={"task_name": job.task_name, "task_id": job.task_id},
            )
            child.process.kill()
            child.process.join(5)
            error = TimeLimitExceeded(f"TimeLimitExceeded({limit})")
            reports.append(failed_report(job, error, now - child.started))
            self._backlog.extendleft(reversed(child.jobs))
            child.jobs.clear()
            self._replace(child)
        return reports

    def terminate(self, task_id: str, signum: int) -> bool:
        for child in self._children:
            if child.jobs and child.jobs[0].task_id == task_id:
                self._signal(child, signum)
                return True
        waiting = [job for child in self._children for job in list(child.jobs)[1:]]
        if any(job.task_id == task_id for job in [*waiting, *self._backlog]):
            self._terminate[task_id] = signum
            return True
        return False

    def _signal(self, child: _Child, signum: int) -> None:
        if child.process.pid:
            child.terminated = signum
            os.kill(child.process.pid, signum)

    def restart(self) -> None:
        for child in list(self._children):
            child.retire = True
            if not child.jobs:
                self._retire(child)

    def terminate_all(self) -> list[Report]:
        """Kill every child: running jobs are lost, jobs not begun are given back."""
        self._stopping = True
        reports = [unstarted_report(job) for job in self._backlog]
        self._backlog.clear()
        for child in self._children:
            child.process.kill()
        for child in self._children:
            child.process.join(5)
            reports.extend(self._read(child))
            if child.jobs:
                running = child.jobs.popleft()
                reports.append(failed_report(running, WorkerLostError("cold shutdown"), 0.0))
                reports.extend(unstarted_report(job) for job in child.jobs)
            child.connection.close()
        self._children = []
        self.active.clear()
        return reports

    def stop(self) -> None:
        self._stopping = True
        for child in self._children:
            with contextlib.suppress(OSError):
                child.connection.send_bytes(STOP)
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
    """A child's life: take a batch of jobs, run each and report it, until told to stop or
    the parent is gone.

    Each message to the parent is ``(report, leaving, unstarted job numbers)``. Past its task
    or memory budget the child says so with its report, hands back what it has not started
    (the parent sends it nothing more) and waits to be told to stop. With the parent gone it
    runs everything it holds, since those jobs may have been acked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    parent_end.close()
    for other in inherited:
        other.close()
    signals.worker_process_init.send(sender=None)
    done = 0
    leaving = orphaned = False
    while True:
        try:
            data = connection.recv_bytes()
        except (EOFError, OSError):
            break
        if not data:
            break
        batch = pickle.loads(data)
        for index, packed in enumerate(batch):
            if leaving and not orphaned:
                unstarted = [item[0] for item in batch[index:]]
                orphaned = not _send(connection, (None, True, unstarted))
                if not orphaned:
                    break
            report = run_job(app, Job.unpack(packed), hostname, soft_time_limit)
            done += 1
            if not leaving and max_tasks and done >= max_tasks:
                leaving = True
            if not leaving and max_memory_kib and _rss_kib() > max_memory_kib:
                logger.warning(
                    "child %s passed max_memory_per_child (%s KiB); recycling",
                    os.getpid(),
                    max_memory_kib,
                )
                leaving = True
            if not orphaned:
                orphaned = not _send(connection, (report, leaving, []))
    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    connection.close()
    os._exit(0)


def _frames(inbox: bytearray) -> list[bytes]:
    """Take the complete frames off the front of ``inbox``: a signed 4-byte big-endian size,
    or -1 and an 8-byte size for huge ones, then the payload."""
    frames: list[bytes] = []
    offset = 0
    while len(inbox) - offset >= 4:
        size = int.from_bytes(inbox[offset : offset + 4], "big", signed=True)
        start = offset + 4
        if size == -1:
            if len(inbox) - offset < 12:
                break
            size = int.from_bytes(inbox[start : start + 8], "big")
            start += 8
        if len(inbox) - start < size:
            break
        frames.append(bytes(inbox[start : start + size]))
        offset = start + size
    del inbox[:offset]
    return frames


def _send(connection: Connection, message: tuple[Report | None, bool, list[int]]) -> bool:
    """Write one message to the parent; False once the parent is gone."""
    try:
        connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError:
        return False
    return True


def _rss_kib() -> int:
    """Resident memory now, in KiB (the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
