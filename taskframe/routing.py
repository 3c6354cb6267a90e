"""Which queue a task goes to: ``task_routes`` as Celery reads it.

``task_routes`` may be a dict (task name or glob pattern -> options), a router function
``(name, args, kwargs, options, task=None, **kw) -> dict | str | None``, or a list of those,
tried in order; the first answer wins. A string answer is a queue name.

Order: an explicit ``queue``, then an explicit ``routing_key``, then the routes, then the
task's own ``queue`` and ``routing_key``, then ``task_default_queue``. A routing key without a
queue names the queue, because Celery publishes to the default exchange, where the routing key
is the queue's name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

__all__ = ["Router"]

RouteFunction = Callable[..., Any]


class Router:
    def __init__(self, routes: Any, default_queue: str) -> None:
        self.default_queue = default_queue
        self._routes: list[RouteFunction] = [self._compile(route) for route in _as_list(routes)]

    @property
    def has_routes(self) -> bool:
        """True when ``task_routes`` is set: a route may look at a call's arguments."""
        return bool(self._routes)

    def route(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
        task: Any = None,
    ) -> dict[str, Any]:
        """Routing options (at least ``queue``) for one call; explicit options win."""
        if options.get("queue"):
            return {"queue": options["queue"]}
        if options.get("routing_key"):
            return {"queue": options["routing_key"]}
        for route in self._routes:
            answer = route(name, args, kwargs, options, task=task)
            if isinstance(answer, str):
                return {"queue": answer}
            if answer:
                found = dict(answer)
                found.setdefault("queue", found.get("routing_key"))
                return found
        task_queue = getattr(task, "queue", None) or getattr(task, "routing_key", None)
        return {"queue": task_queue or self.default_queue}

    @staticmethod
    def _compile(route: Any) -> RouteFunction:
        if callable(route):
            return cast(RouteFunction, route)
        if isinstance(route, str):
            from taskframe.utils.imports import symbol_by_name

            return cast(RouteFunction, symbol_by_name(route))
        if isinstance(route, Mapping):
            return _MapRoute(route)
        raise TypeError(f"task_routes entry {route!r} is neither a dict nor a router function")


class _MapRoute:
    """Exact names first, then glob patterns and ``re.compile`` patterns in order."""

    def __init__(self, table: Mapping[Any, Any]) -> None:
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[re.Pattern[str], Any]] = []
        for key, value in table.items():
            if isinstance(key, re.Pattern):
                self.patterns.append((key, value))
            elif "*" in key or "?" in key or "[" in key:
                self.patterns.append((re.compile(fnmatch.translate(key)), value))
            else:
                self.exact[key] = value

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self.exact:
            return self.exact[name]
        for pattern, value in self.patterns:
            if pattern.match(name):
                return value
        return None


def _as_list(routes: Any) -> list[Any]:
    if routes is None:
        return []
    if isinstance(routes, (list, tuple)):
        return list(routes)
    return [routes]
