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
from taskframe.canvas.signature import Signature, maybe_signature, signature
from taskframe.context import current_app
from taskframe.result import AsyncResult, GroupResult
from taskframe.task import Task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Celery",
    "GroupResult",
    "Signature",
    "Task",
    "Taskframe",
    "current_app",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
]
