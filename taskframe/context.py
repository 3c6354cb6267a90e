"""The request context a running task sees as ``self.request``, and the current app.

Both are :mod:`contextvars`, so async tasks running side by side on one event loop, and
threads in the threads pool, each see their own request.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["Context", "current_app", "current_request", "request_context"]


@dataclass
class Context:
    """What a task knows about the call it is running (Celery's ``Task.request``)."""

    id: str | None = None
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    is_eager: bool = False
    called_directly: bool = True
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    origin: str | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    ignore_result: bool = False
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    shadow: str | None = None
    stamps: dict[str, Any] = field(default_factory=dict)
    retries_exhausted: bool = False

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


_request: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "taskframe_request", default=None
)
_app: contextvars.ContextVar[Taskframe | None] = contextvars.ContextVar(
    "taskframe_app", default=None
)
_default_app: list[Taskframe] = []


def current_request() -> Context | None:
    return _request.get()


@contextmanager
def request_context(request: Context) -> Iterator[Context]:
    token = _request.set(request)
    try:
        yield request
    finally:
        _request.reset(token)


def set_current_app(app: Taskframe) -> None:
    """Make ``app`` the one ``current_app()`` returns (the last app created, as in Celery)."""
    _default_app[:] = [app]
    _app.set(app)


def current_app() -> Taskframe:
    """The app of this context: the most recently created one, or a default app."""
    app = _app.get()
    if app is not None:
        return app
    if _default_app:
        return _default_app[0]
    from taskframe.app import Taskframe

    return Taskframe("default")
