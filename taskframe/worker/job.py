"""A job: one received message on its way through a pool, and what comes back.

The consumer hands pools a :class:`Job` holding the message as received (headers already
parsed by the broker, body still encoded), so the body is decoded once, where the task runs.
Across the prefork pipe a job travels as a plain tuple (:meth:`Job.pack`), which pickles in a
third of the time a dataclass holding a dataclass takes; pools return a small :class:`Report`.
A pool that could not finish a job itself (its child died, it passed the hard time limit, it
was terminated by a revoke) says so in ``Report.failure``; the consumer then decides, from the
task's ack mode, whether to store that failure or to give the message back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskframe import states
from taskframe.brokers.base import Message
from taskframe.exceptions import ContentDisallowed, ProtocolError, SerializationError
from taskframe.execution import ACK, DEAD_LETTER, REQUEUE, Outcome, execute
from taskframe.protocol import TaskMessage, decode_task
from taskframe.worker.limits import SoftLimit

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = [
    "Job",
    "Report",
    "decode",
    "failed_report",
    "hard_limit",
    "report_of",
    "run_job",
    "soft_limit",
    "unstarted_report",
]

logger = logging.getLogger("taskframe.worker")


@dataclass
class Job:
    """One message to run. ``id`` and ``name`` mirror Celery's request for signal receivers."""

    number: int
    message: Message
    delivery_info: dict[str, Any] = field(default_factory=dict)
    task_name: str = ""
    task_id: str = ""

    @property
    def id(self) -> str:
        return self.task_id

    def pack(self) -> tuple[Any, ...]:
        """The job as a tuple of builtins, for the prefork pipe (:meth:`unpack` reverses it)."""
        message = self.message
        return (
            self.number,
            message.body,
            message.headers,
            message.properties,
            message.content_type,
            message.content_encoding,
            self.delivery_info,
            self.task_name,
            self.task_id,
        )

    @classmethod
    def unpack(cls, packed: tuple[Any, ...]) -> Job:
        number, body, headers, properties, content_type, encoding, info, name, task_id = packed
        return cls(
            number, Message(body, headers, properties, content_type, encoding), info, name, task_id
        )

    @property
    def name(self) -> str:
        return self.task_name


@dataclass
class Report:
    """The outcome of one job, as the consumer needs it to settle the message and log.

    ``exception`` and ``traceback`` are filled only for dead-lettered jobs (they go into the
    dead letter's headers); ``failure`` only by a pool for a job it could not finish."""

    number: int
    task_id: str
    task_name: str
    state: str
    runtime: float
    settle: str = ACK
    reason: str | None = None
    summary: str = ""
    exception: str | None = None
    traceback: str | None = None
    malformed: bool = False
    failure: BaseException | None = None


def hard_limit(job: Job, default: float | None) -> float | None:
    """The job's hard time limit: its ``timelimit`` header, else the worker's."""
    return _limit(job, 0) or default


def soft_limit(job: Job, default: float | None) -> float | None:
    return _limit(job, 1) or default


def _limit(job: Job, index: int) -> float | None:
    timelimit = job.message.headers.get("timelimit")
    if isinstance(timelimit, (list, tuple)) and len(timelimit) > index and timelimit[index]:
        try:
            return float(timelimit[index])
        except (TypeError, ValueError):
            return None
    return None


def failed_report(job: Job, error: BaseException, runtime: float) -> Report:
    """A report for a job its pool could not finish (the consumer stores or requeues it)."""
    return Report(
        job.number,
        job.task_id,
        job.task_name,
        states.FAILURE,
        runtime,
        reason=repr(error),
        summary=repr(error),
        failure=error,
    )


def decode(app: Taskframe, job: Job) -> TaskMessage | Report:
    """The job's decoded task message, or the report that dead-letters a malformed one."""
    try:
        return decode_task(job.message, app.conf.accept_content)
    except (ProtocolError, SerializationError, ContentDisallowed) as exc:
        return Report(
            job.number,
            job.task_id,
            job.task_name or "?",
            states.REJECTED,
            0.0,
            settle=DEAD_LETTER,
            reason=f"malformed message: {exc}",
            exception=repr(exc),
            malformed=True,
        )


def unstarted_report(job: Job) -> Report:
    """A report for a job handed to a pool that never began it: the consumer gives its
    message back to the queue."""
    return Report(job.number, job.task_id, job.task_name, states.RECEIVED, 0.0, settle=REQUEUE)


def run_job(
    app: Taskframe, job: Job, hostname: str, soft_time_limit: float | None = None
) -> Report:
    """Decode and run one job under its soft time limit; never raises."""
    message = decode(app, job)
    if isinstance(message, Report):
        return message
    try:
        with SoftLimit(soft_limit(job, soft_time_limit)):
            outcome = execute(app, message, hostname=hostname, delivery_info=job.delivery_info)
    except Exception as exc:  # an error in taskframe itself must not kill the pool
        logger.exception("internal error running %s[%s]", message.task, message.id)
        return Report(
            job.number,
            message.id,
            message.task,
            states.FAILURE,
            0.0,
            settle=DEAD_LETTER,
            reason=f"internal error: {exc!r}",
            exception=repr(exc),
        )
    return report_of(job, outcome)


def report_of(job: Job, outcome: Outcome) -> Report:
    dead = outcome.settle == DEAD_LETTER
    return Report(
        job.number,
        outcome.task_id,
        outcome.task_name,
        outcome.state,
        outcome.runtime,
        settle=outcome.settle,
        reason=outcome.reason,
        summary=_summary(outcome.retval, outcome.exception),
        exception=repr(outcome.exception) if dead and outcome.exception is not None else None,
        traceback=outcome.traceback if dead else None,
    )


def _summary(retval: Any, exception: BaseException | None) -> str:
    if not logger.isEnabledFor(logging.INFO):
        return ""
    text = repr(exception) if exception is not None else repr(retval)
    return text if len(text) <= 200 else text[:197] + "..."
