"""``@shared_task``: a task for reusable code that does not know which app will run it.

The decorator returns a :class:`SharedTask` that looks the task up in the current app on
each use (registering it there on first use), as Celery's proxy does; every app also
registers the shared tasks when it is finalized, so its workers know them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from taskframe.context import current_app

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.canvas.signature import Signature
    from taskframe.result import AsyncResult, EagerResult
    from taskframe.task import Task

__all__ = ["SharedTask", "register_shared", "shared_factories"]

P = ParamSpec("P")
R = TypeVar("R")

shared_factories: list[Callable[[Taskframe], Task[Any, Any]]] = []
"""How to register each shared task on an app, in definition order."""


class SharedTask(Generic[P, R]):
    """The current app's instance of a shared task."""

    def __init__(self, fun: Callable[..., Any], options: dict[str, Any]) -> None:
        self._fun = fun
        self._options = options
        self.__wrapped__ = fun
        self.__doc__ = fun.__doc__

    def register(self, app: Taskframe) -> Task[P, R]:
        task: Task[P, R] = app._register(self._fun, self._options)
        return task

    @property
    def task(self) -> Task[P, R]:
        """This task as registered in the current app."""
        return self.register(current_app())

    @property
    def name(self) -> str:
        return self.task.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.task(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return self.task.delay(*args, **kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        return self.task.apply_async(args, kwargs, **options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        return self.task.apply(args, kwargs, **options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return self.task.s(*args, **kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return self.task.si(*args, **kwargs)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        return self.task.signature(args, kwargs, **options)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(self.task, attribute)

    def __repr__(self) -> str:
        return f"<@shared_task: {self._fun.__module__}.{self._fun.__qualname__}>"


def register_shared(fun: Callable[..., Any], options: dict[str, Any]) -> SharedTask[Any, Any]:
    shared: SharedTask[Any, Any] = SharedTask(fun, options)
    shared_factories.append(shared.register)
    return shared
