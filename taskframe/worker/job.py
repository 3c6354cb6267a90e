"""A job: one received message on its way through a pool, and what comes back.

The consumer hands pools a :class:`Job` holding the message as received (headers already
parsed by the broker, body still encoded), so the body is decoded once, where the task runs.
Pools return a small :class:`Report` that pickles cheaply across the prefork pipe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskframe import states
from taskframe.brokers.base import Message
from taskframe.exceptions import ContentDisallowed, ProtocolError, SerializationError
from taskframe.execution import ACK, DEAD_LETTER, execute
from taskframe.protocol import decode_task

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["Job", "Report", "run_job"]

logger = logging.getLogger("taskframe.worker")


@dataclass
class Job:
    id: int
    message: Message
    delivery_info: dict[str, Any] = field(default_factory=dict)
    task_name: str = ""
    task_id: str = ""
    soft_time_limit: float | None = None


@dataclass
class Report:
    """The outcome of one job, as the consumer needs it to settle the message and log."""

    job_id: int
    task_id: str
    task_name: str
    state: str
    runtime: float
    settle: str = ACK
    reason: str | None = None
    summary: str = ""


def run_job(app: Taskframe, job: Job, hostname: str) -> Report:
    """Decode and run one job; never raises, whatever the message holds."""
    try:
        message = decode_task(job.message, app.conf.accept_content)
    except (ProtocolError, SerializationError, ContentDisallowed) as exc:
        return Report(
            job.id, job.task_id, job.task_name or "?", states.REJECTED, 0.0,
            settle=DEAD_LETTER, reason=f"malformed message: {exc}",
        )
    try:
        outcome = execute(app, message, hostname=hostname, delivery_info=job.delivery_info)
    except Exception as exc:  # an error in taskframe itself must not kill the pool
        logger.exception("internal error running %s[%s]", message.task, message.id)
        return Report(
            job.id, message.id, message.task, states.FAILURE, 0.0,
            settle=DEAD_LETTER, reason=f"internal error: {exc!r}",
        )
    return Report(
        job.id, outcome.task_id, outcome.task_name, outcome.state, outcome.runtime,
        settle=outcome.settle, reason=outcome.reason, summary=_summary(outcome.retval, outcome.exception),
    )


def _summary(retval: Any, exception: BaseException | None) -> str:
    if not logger.isEnabledFor(logging.INFO):
        return ""
    text = repr(exception) if exception is not None else repr(retval)
    return text if len(text) <= 200 else text[:197] + "..."
