"""taskframe: a Celery-compatible task framework.

Switch from Celery by changing ``celery`` to ``taskframe`` in import lines::

    from taskframe import Taskframe     # or: from taskframe import Celery
    app = Taskframe("proj")             # embedded sqlite broker and results by default

    @app.task
    def add(x: int, y: int) -> int:
        return x + y
"""

from taskframe import states
from taskframe.app import Celery, Taskframe, shared_task
from taskframe.canvas import chain, chord, chunks, group, xmap, xstarmap
from taskframe.canvas.signature import Signature, maybe_signature, signature
from taskframe.context import current_app
from taskframe.result import AsyncResult, GroupResult
from taskframe.schedules import crontab, schedule
from taskframe.task import Task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Celery",
    "GroupResult",
    "Signature",
    "Task",
    "Taskframe",
    "chain",
    "chord",
    "chunks",
    "crontab",
    "current_app",
    "group",
    "maybe_signature",
    "schedule",
    "shared_task",
    "signature",
    "states",
    "xmap",
    "xstarmap",
]
