"""Signature: one task call, as data (``add.s(2, 2)``), serializable as Celery's dict.

A Signature is a read-only :class:`~collections.abc.Mapping` with Celery's keys (``task``,
``args``, ``kwargs``, ``options``, ``subtask_type``, ``immutable``), so it travels inside
messages exactly as Celery embeds it, without being a ``dict`` subclass. The composite
signatures (``chain``, ``group``, ``chord``, ``xmap``, ``xstarmap``, ``chunks``) are subclasses
registered by their ``subtask_type``; :func:`from_dict` turns any embedded dict, ours or
Celery's, back into the right class.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from taskframe.protocol import new_id

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.result import AsyncResult, EagerResult, GroupResult

    Result = AsyncResult[Any] | GroupResult

__all__ = ["Signature", "from_dict", "maybe_signature", "register_type", "signature"]

_KEYS = ("task", "args", "kwargs", "options", "subtask_type", "immutable")
_TYPES: dict[str, type[Signature]] = {}
"""subtask_type -> class, filled by :func:`register_type` as the canvas modules load."""

S = TypeVar("S", bound="type[Signature]")


def register_type(name: str) -> Callable[[S], S]:
    """Class decorator: dicts with ``subtask_type == name`` rebuild as this class."""

    def decorate(cls: S) -> S:
        _TYPES[name] = cls
        return cls

    return decorate


def to_plain(value: Any) -> Any:
    """``value`` with every Signature inside replaced by its wire dict."""
    if isinstance(value, Signature):
        return value.as_dict()
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value


class Signature(Mapping[str, Any]):
    """A task name with arguments and send options, to call now, later, or inside a canvas."""

    def __init__(
        self,
        task: str | Any,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Taskframe | None = None,
        **extra_options: Any,
    ) -> None:
        if isinstance(task, Mapping):
            source = task
            task = source["task"]
            args = source.get("args", ()) if args is None else args
            kwargs = source.get("kwargs", {}) if kwargs is None else kwargs
            options = source.get("options", {}) if options is None else options
            subtask_type = source.get("subtask_type", subtask_type)
            immutable = bool(source.get("immutable", immutable))
        elif not isinstance(task, str):
            task = task.name
        self.task: str = task
        self.args: tuple[Any, ...] = tuple(args or ())
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.options: dict[str, Any] = {**dict(options or {}), **extra_options}
        self.subtask_type = subtask_type
        self.immutable = immutable
        self._app = app

    @classmethod
    def from_wire(cls, value: Mapping[str, Any], app: Taskframe | None) -> Signature:
        """Rebuild from a wire dict; composite signatures override this."""
        return cls(value, app=app)

    # -- Mapping ---------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if key not in _KEYS:
            raise KeyError(key)
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    def as_dict(self) -> dict[str, Any]:
        """Celery's wire form of this signature (nested signatures as dicts too)."""
        return {
            "task": self.task,
            "args": to_plain(list(self.args)),
            "kwargs": to_plain(self.kwargs),
            "options": to_plain(self.options),
            "subtask_type": self.subtask_type,
            "immutable": self.immutable,
        }

    def __repr__(self) -> str:
        arguments = [repr(arg) for arg in self.args]
        arguments += [f"{key}={value!r}" for key, value in self.kwargs.items()]
        return f"{self.task}({', '.join(arguments)}){'!' if self.immutable else ''}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            same: bool = self.as_dict() == to_plain({key: other.get(key) for key in _KEYS})
            return same
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like Celery's signature

    # -- building --------------------------------------------------------------------------

    @property
    def app(self) -> Taskframe:
        if self._app is None:
            from taskframe.context import current_app

            return current_app()
        return self._app

    @property
    def id(self) -> str | None:
        value: str | None = self.options.get("task_id")
        return value

    @property
    def type(self) -> Any:
        """The registered task this signature calls."""
        return self.app.get_task(self.task)

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A copy with ``args`` prepended (unless immutable), kwargs merged, options set."""
        new = self._shallow_copy()
        new.args = self.args
        # Empty dicts need no deep copy; skipping it is a sixth of freezing a group member.
        new.kwargs = copy.deepcopy(self.kwargs) if self.kwargs else {}
        new.options = {**copy.deepcopy(self.options), **options} if self.options else options
        if not self.immutable:
            if args:
                new.args = tuple(args) + self.args
            if kwargs:
                new.kwargs.update(kwargs)
        return new

    partial = clone

    def _shallow_copy(self) -> Signature:
        """``copy.copy(self)`` without its generic ``__reduce_ex__`` detour (a quarter of the
        cost of cloning a group member, measured)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        """Copies share the app: deep-copying an app would copy its connections."""
        new = self._shallow_copy()
        new.args = copy.deepcopy(self.args, memo)
        new.kwargs = copy.deepcopy(self.kwargs, memo)
        new.options = copy.deepcopy(self.options, memo)
        return new

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set send options in place (``queue=``, ``countdown=``...); returns self."""
        if immutable is not None:
            self.immutable = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = immutable

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Signature | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Result:
        """Assign the task id (and canvas placement) now, so the result exists before sending."""
        options = self.options
        task_id = options.get("task_id") or _id or new_id()
        options["task_id"] = task_id
        if root_id:
            options["root_id"] = root_id
        if parent_id:
            options["parent_id"] = parent_id
        options.setdefault("reply_to", self.app.oid)
        if group_id and "group_id" not in options:
            options["group_id"] = group_id
        if chord is not None:
            options["chord"] = chord
        if group_index is not None:
            options["group_index"] = group_index
        return self.app.AsyncResult(task_id, task_name=self.task)

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Send ``callback`` with this task's result once it succeeds."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run or send ``errback`` when this task fails."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def on_error(self, errback: Mapping[str, Any]) -> Signature:
        """``link_error`` that returns self, for ``sig.on_error(handler.s()).delay()``."""
        self.link_error(errback)
        return self

    def __or__(self, other: Any) -> Any:
        from taskframe.canvas.chain import chain

        if not isinstance(other, Signature):
            return NotImplemented
        if isinstance(other, chain):
            return chain(self, *other.tasks, app=self._app)
        return chain(self, other, app=self._app)

    def __invert__(self) -> Any:
        """``~sig``: send and wait for the result."""
        return self.apply_async().get()

    # -- calling ---------------------------------------------------------------------------

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the call; ``args`` are prepended to the signature's own (partial application)."""
        call = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        send_options = dict(call.options)
        app = self.app
        task = app.tasks.get(call.task)
        if task is not None:
            return task.apply_async(call.args, call.kwargs, **send_options)
        return app.send_task(call.task, call.args, call.kwargs, **send_options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run the call in this process (eagerly), as a worker would; composite signatures
        return their own result kind (a GroupResult for a group)."""
        call = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        result: EagerResult[Any] = self.app.get_task(call.task).apply(
            call.args, call.kwargs, **call.options
        )
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task function directly, here and now."""
        call = self.clone(args, kwargs)
        return self.app.get_task(call.task)(*call.args, **call.kwargs)


def from_dict(value: Mapping[str, Any], app: Taskframe | None = None) -> Signature:
    """The signature a wire dict describes, as its registered class (chain, group, chord...)."""
    if isinstance(value, Signature):
        return value
    subtask_type = value.get("subtask_type")
    cls = _TYPES.get(subtask_type) if subtask_type else None
    if cls is not None:
        return cls.from_wire(value, app)
    return Signature(value, app=app)


def signature(
    varies: str | Mapping[str, Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    app: Taskframe | None = None,
    **extra: Any,
) -> Signature:
    """Build a signature from a task name or a signature dict (as Celery's ``signature``)."""
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, Mapping):
        return from_dict(varies, app=app)
    return Signature(varies, args, kwargs, options, app=app, **extra)


def maybe_signature(value: Any, app: Taskframe | None = None) -> Signature | None:
    if value is None:
        return None
    if isinstance(value, Signature):
        return value
    return from_dict(value, app=app)
