"""Signature: one task call, as data (``add.s(2, 2)``), serializable as Celery's dict.

A Signature is a read-only :class:`~collections.abc.Mapping` with Celery's keys (``task``,
``args``, ``kwargs``, ``options``, ``subtask_type``, ``immutable``), so it travels inside
messages exactly as Celery embeds it, without being a ``dict`` subclass.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.result import AsyncResult, EagerResult

__all__ = ["Signature", "maybe_signature", "signature"]

_KEYS = ("task", "args", "kwargs", "options", "subtask_type", "immutable")


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

    # -- Mapping ---------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if key not in _KEYS:
            raise KeyError(key)
        value = getattr(self, key)
        return list(value) if key == "args" else value

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    def as_dict(self) -> dict[str, Any]:
        """Celery's wire form of this signature."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "subtask_type": self.subtask_type,
            "immutable": self.immutable,
        }

    def __repr__(self) -> str:
        arguments = [repr(arg) for arg in self.args]
        arguments += [f"{key}={value!r}" for key, value in self.kwargs.items()]
        return f"{self.task}({', '.join(arguments)}){'!' if self.immutable else ''}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.as_dict() == {key: other.get(key) for key in _KEYS} or (
                dict(self.as_dict()) == dict(other)
            )
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

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A copy with ``args`` prepended (unless immutable), kwargs merged, options set."""
        new_args = self.args
        new_kwargs = dict(self.kwargs)
        if not self.immutable:
            if args:
                new_args = tuple(args) + self.args
            if kwargs:
                new_kwargs.update(kwargs)
        return Signature(
            self.task,
            new_args,
            new_kwargs,
            {**copy.deepcopy(self.options), **options},
            subtask_type=self.subtask_type,
            immutable=self.immutable,
            app=self._app,
        )

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        if immutable is not None:
            self.immutable = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = immutable

    def freeze(self, _id: str | None = None) -> AsyncResult[Any]:
        """Assign the task id now, so the result can be handed out before sending."""
        task_id = _id or self.options.get("task_id") or str(uuid.uuid4())
        self.options["task_id"] = task_id
        return self.app.AsyncResult(task_id, task_name=self.task)

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        self.options.setdefault("link_error", []).append(errback)
        return errback

    on_error = link_error

    # -- calling ---------------------------------------------------------------------------

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
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
    ) -> EagerResult[Any]:
        """Run the call in this process (eagerly), as a worker would."""
        call = self.clone(args, kwargs, **options) if (args or kwargs or options) else self
        result: EagerResult[Any] = self.app.get_task(call.task).apply(
            call.args, call.kwargs, **call.options
        )
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task function directly, here and now."""
        call = self.clone(args, kwargs)
        return self.app.get_task(call.task)(*call.args, **call.kwargs)


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
    return Signature(varies, args, kwargs, options, app=app, **extra)


def maybe_signature(value: Any, app: Taskframe | None = None) -> Signature | None:
    if value is None:
        return None
    if isinstance(value, Signature):
        return value
    return Signature(value, app=app)
