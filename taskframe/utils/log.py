"""Loggers for tasks, and the task name and id on every record logged while a task runs.

`get_task_logger` keeps the caller's logger name (``proj.tasks``) but re-parents the logger
under ``taskframe.task``, as Celery does under ``celery.task``: records propagate to the task
log handlers the worker installs, and users keep filtering by their own module names.

The worker wraps each task in `task_log_context`; `TaskFilter` (for handlers) and
`TaskFormatter` (for formats) read that context variable and set ``task_name`` and ``task_id``
on the record, ``"???"`` outside a task as in Celery, so Celery's ``worker_task_log_format``
works unchanged. A context variable, not a thread-local, so threads and asyncio tasks each
see their own task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from taskframe.config_defaults import WORKER_TASK_LOG_FORMAT

__all__ = [
    "TASK_LOGGER_NAME",
    "TaskFilter",
    "TaskFormatter",
    "get_logger",
    "get_task_logger",
    "task_log_context",
]

TASK_LOGGER_NAME = "taskframe.task"
_RESERVED = frozenset({"taskframe", TASK_LOGGER_NAME})
_UNKNOWN = "???"

_current_task: ContextVar[tuple[str, str] | None] = ContextVar(
    "taskframe_current_task", default=None
)


def get_logger(name: str) -> logging.Logger:
    """The logger called ``name``; taskframe's own modules use names under ``taskframe.``."""
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """A logger for task code: named ``name``, propagating to ``taskframe.task``."""
    if name in _RESERVED:
        raise ValueError(f"logger name {name!r} is reserved by taskframe; use your module name")
    task_logger = logging.getLogger(name)
    task_logger.parent = logging.getLogger(TASK_LOGGER_NAME)
    return task_logger


@contextmanager
def task_log_context(task_name: str, task_id: str) -> Iterator[None]:
    """Tag every record logged inside the block with this task's name and id."""
    token = _current_task.set((task_name, task_id))
    try:
        yield
    finally:
        _current_task.reset(token)


def _tag(record: logging.LogRecord) -> None:
    """Set ``task_name``/``task_id`` on ``record`` unless the caller passed them in ``extra``."""
    current = _current_task.get()
    name, task_id = current if current is not None else (_UNKNOWN, _UNKNOWN)
    if not hasattr(record, "task_name"):
        record.task_name = name
    if not hasattr(record, "task_id"):
        record.task_id = task_id


class TaskFilter(logging.Filter):
    """Adds ``task_name`` and ``task_id`` to records; attach it to a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        _tag(record)
        return True


class TaskFormatter(logging.Formatter):
    """A formatter whose format may use ``%(task_name)s[%(task_id)s]``.

    Without a format it uses Celery's default ``worker_task_log_format``.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt if fmt is not None else WORKER_TASK_LOG_FORMAT, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        _tag(record)
        return super().format(record)
