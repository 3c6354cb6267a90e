"""xmap, xstarmap and chunks: many calls of one task in few messages.

``add.map(it)`` is one ``celery.map`` message whose worker calls the task function once per
item and returns the list; ``add.starmap(it)`` unpacks each item as arguments
(``celery.starmap``). ``add.chunks(it, n)`` splits the items into parts of ``n`` and sends a
group of ``celery.starmap`` messages, one per part. The message shapes are Celery's, so a
Celery worker runs them, and taskframe's built-in tasks run Celery's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from taskframe.canvas.group import group
from taskframe.canvas.signature import Signature, from_dict, register_type

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.result import GroupResult

__all__ = ["chunks", "xmap", "xstarmap"]


def _task_app(task: Any, app: Taskframe | None) -> Taskframe | None:
    return app or getattr(task, "_app", None)


class _basemap(Signature):
    task_name = ""

    def __init__(
        self, task: Any, it: Iterable[Any], *, app: Taskframe | None = None, **options: Any
    ) -> None:
        app = _task_app(task, app)
        super().__init__(
            self.task_name,
            (),
            {"task": from_dict(task, app), "it": list(it)},
            options,
            subtask_type=type(self).__name__,
            immutable=True,
            app=app,
        )

    @classmethod
    def from_wire(cls, value: Mapping[str, Any], app: Taskframe | None) -> Signature:
        inner = value.get("kwargs") or {}
        return cls(inner["task"], inner.get("it", ()), app=app, **dict(value.get("options") or {}))

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """One message; its result is the list of every call's result.

        The sender registers the built-in tasks so ``celery.map``'s own options apply here."""
        from taskframe.canvas.builtins import register_builtins

        register_builtins(self.app)
        plain = Signature(
            self.task,
            (),
            self._message_kwargs(),
            {**self.options, **options},
            immutable=True,
            app=self._app,
        )
        return plain.apply_async()

    def _message_kwargs(self) -> dict[str, Any]:
        """``task`` as a dict whose args stay a tuple and items as given, so the message's
        ``kwargsrepr`` reads exactly as Celery's."""
        task = self.kwargs["task"]
        return {"task": {**task.as_dict(), "args": tuple(task.args)}, "it": self.kwargs["it"]}

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        plain = Signature(
            self.task, (), self._message_kwargs(), self.options, immutable=True, app=self._app
        )
        return plain.apply(**options)


@register_type("xmap")
class xmap(_basemap):
    """``task.map(it)``: ``[task(item) for item in it]`` in one message."""

    task_name = "celery.map"


@register_type("xstarmap")
class xstarmap(_basemap):
    """``task.starmap(it)``: ``[task(*item) for item in it]`` in one message."""

    task_name = "celery.starmap"


def _parts(it: Iterable[Any], size: int) -> Iterator[list[Any]]:
    items = iter(it)
    while part := list(islice(items, size)):
        yield part


@register_type("chunks")
class chunks(Signature):
    """``task.chunks(it, n)``: the items in parts of ``n``, each part one starmap message."""

    def __init__(
        self, task: Any, it: Iterable[Any], n: int, *, app: Taskframe | None = None, **options: Any
    ) -> None:
        if n < 1:
            raise ValueError(f"chunks() needs a part size of at least 1, not {n}")
        app = _task_app(task, app)
        super().__init__(
            "celery.chunks",
            (),
            {"task": from_dict(task, app), "it": list(it), "n": n},
            options,
            subtask_type="chunks",
            immutable=True,
            app=app,
        )

    @classmethod
    def from_wire(cls, value: Mapping[str, Any], app: Taskframe | None) -> Signature:
        inner = value.get("kwargs") or {}
        return cls(
            inner["task"],
            inner.get("it", ()),
            int(inner["n"]),
            app=app,
            **dict(value.get("options") or {}),
        )

    def group(self) -> group:
        """The group of starmap signatures this stands for."""
        task, it, size = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        return group(
            [xstarmap(task, part, app=self._app) for part in _parts(it, size)], app=self._app
        )

    def __call__(self, **options: Any) -> GroupResult:
        return self.apply_async(**options)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        return self.group().apply_async(args, kwargs, **{**self.options, **options})

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        return self.group().apply(args, kwargs, **options)
