"""Errors taskframe raises, with Celery's names where Celery has one.

::

    TaskframeError
    ├── ImproperlyConfigured          bad setting, URL, or missing optional package
    ├── SerializationError            an argument or result cannot be encoded
    │   └── ContentDisallowed         content type not in accept_content
    ├── ProtocolError                 a message that is not a task message
    ├── NotRegistered (KeyError)      no task by that name in this app
    ├── BrokerError                   the store failed
    │   └── BrokerConnectionError     ... because it cannot be reached
    ├── TimeoutError                  result.get() waited too long
    ├── TaskError                     raised by or for one task run
    │   ├── Retry                     self.retry() control flow
    │   ├── Ignore                    stop without storing a state
    │   ├── Reject                    reject the message (dead-letter or requeue)
    │   ├── MaxRetriesExceededError
    │   ├── TaskRevokedError
    │   ├── WorkerLostError
    │   ├── ChordError
    │   ├── TimeLimitExceeded
    │   └── SoftTimeLimitExceeded
    └── RemoteTaskError               a failure whose exception class cannot be imported here

``SoftTimeLimitExceeded`` and ``TimeLimitExceeded`` derive from ``TaskError`` only, so a task's
bare ``except Exception`` sees them (as with Celery).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

__all__ = [
    "BrokerConnectionError",
    "BrokerError",
    "ChordError",
    "ContentDisallowed",
    "Ignore",
    "ImproperlyConfigured",
    "MaxRetriesExceededError",
    "NotRegistered",
    "ProtocolError",
    "Reject",
    "RemoteTaskError",
    "Retry",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskRevokedError",
    "TaskframeError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]


class TaskframeError(Exception):
    """Base of every error taskframe raises."""


class ImproperlyConfigured(TaskframeError):
    pass


class SerializationError(TaskframeError):
    pass


class ContentDisallowed(SerializationError):
    pass


class ProtocolError(TaskframeError):
    pass


class NotRegistered(KeyError, TaskframeError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class BrokerError(TaskframeError):
    pass


class BrokerConnectionError(BrokerError):
    pass


class TimeoutError(TaskframeError):
    pass


class TaskError(TaskframeError):
    pass


class Retry(TaskError):
    """Raised by ``self.retry()``; the worker turns it into a retry message and RETRY state."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | _dt.datetime | None = None,
        is_eager: bool = False,
        sig: Any = None,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        super().__init__(message or self.humanize())

    def humanize(self) -> str:
        if isinstance(self.when, (int, float)):
            return f"Retry in {self.when:g}s"
        if self.when is not None:
            return f"Retry at {self.when.isoformat()}"
        return "Retry"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.exc, self.when))


class Ignore(TaskError):
    pass


class Reject(TaskError):
    """Reject the message: dead-letter it (``requeue=False``) or give it back to the queue."""

    def __init__(self, reason: object = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __str__(self) -> str:
        return f"Reject(reason={self.reason!r}, requeue={self.requeue})"


class MaxRetriesExceededError(TaskError):
    pass


class TaskRevokedError(TaskError):
    pass


class WorkerLostError(TaskError):
    pass


class ChordError(TaskError):
    pass


class TimeLimitExceeded(TaskError):
    pass


class SoftTimeLimitExceeded(TaskError):
    pass


class RemoteTaskError(TaskframeError):
    """A task failed with an exception whose class is not importable in this process."""

    def __init__(self, exc_module: str, exc_type: str, exc_message: Any) -> None:
        self.exc_module = exc_module
        self.exc_type = exc_type
        self.exc_message = exc_message
        super().__init__(exc_module, exc_type, exc_message)

    def __str__(self) -> str:
        message = self.exc_message
        if isinstance(message, (list, tuple)):
            message = ", ".join(str(part) for part in message)
        return f"{self.exc_module}.{self.exc_type}: {message}"
