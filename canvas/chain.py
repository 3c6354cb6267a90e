"""chain: tasks run one after another, each result prepended to the next step's args.

On the wire a chain is not nested: the first step's message carries every later step in its
``chain`` embed, **reversed**, so a worker pops the next step off the end (Celery protocol 2).
:meth:`chain.prepare_steps` walks the steps from the last to the first in a loop (never by
recursion, so 1,000-step chains are fine), splices nested chains, and upgrades a group
followed by a step into a chord, as Celery does. ``chain(...)()`` returns the last step's
result; each result's ``.parent`` is the step before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskframe.canvas.signature import Signature, from_dict, register_type

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.result import AsyncResult, GroupResult

__all__ = ["chain"]


def app_of(tasks: Iterable[Any]) -> Taskframe | None:
    """The app bound to the first signature that has one."""
    for task in tasks:
        found = getattr(task, "_app", None)
        if found is not None:
            return found  # type: ignore[no-any-return]  # a Signature's _app
    return None


def steps_from(tasks: tuple[Any, ...]) -> list[Any]:
    """``f(a, b)`` and ``f([a, b])`` (or a generator) both mean the steps ``a, b``."""
    if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
        return list(tasks[0])
    return list(tasks)


class TaskList(Signature):
    """A signature made of other signatures, kept in ``kwargs["tasks"]`` as Celery encodes
    chains and groups (``{"task": "celery.<kind>", "kwargs": {"tasks": [...]}}``)."""

    kind = ""

    def __init__(self, *tasks: Any, app: Taskframe | None = None, **options: Any) -> None:
        members = steps_from(tasks)
        app = app or app_of(members)
        args = options.pop("args", ())
        super().__init__(
            f"celery.{self.kind}",
            args,
            {"tasks": [from_dict(member, app) for member in members]},
            options,
            subtask_type=self.kind,
            app=app,
        )

    @classmethod
    def from_wire(cls, value: Mapping[str, Any], app: Taskframe | None) -> Signature:
        options = dict(value.get("options") or {})
        made = cls(*(value.get("kwargs") or {}).get("tasks", ()), app=app, **options)
        made.args = tuple(value.get("args") or ())
        made.immutable = bool(value.get("immutable"))
        return made

    @property
    def tasks(self) -> list[Signature]:
        tasks: list[Signature] = self.kwargs["tasks"]
        return tasks


@register_type("chain")
class chain(TaskList):
    """``chain(a.s(), b.s(), c.s())`` or ``a.s() | b.s() | c.s()``."""

    kind = "chain"

    def __or__(self, other: Any) -> Any:
        if not isinstance(other, Signature):
            return NotImplemented
        if isinstance(other, chain):
            return chain(*self.tasks, *other.tasks, app=self._app)
        return chain(*self.tasks, other, app=self._app)

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """A chain's callback runs after its last step."""
        return self.tasks[-1].link(callback)

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Every step gets the errback, so whichever step fails calls it once."""
        for task in self.tasks:
            task.link_error(errback)
        return errback

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    # -- freezing and sending ---------------------------------------------------------------

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Signature | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> AsyncResult[Any] | GroupResult:
        """Assign every step's id in place; the chain's placement goes to its last step."""
        _, results = self.prepare_steps(
            self.args,
            {},
            last_task_id=_id or self.options.get("task_id"),
            root_id=root_id,
            group_id=group_id,
            chord_body=chord,
            group_index=group_index,
            clone=False,
        )
        if not results:
            raise ValueError("cannot freeze an empty chain")
        last: AsyncResult[Any] | GroupResult = results[0]
        self.options["task_id"] = last.id
        return last

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the first step with the rest in its ``chain``; returns the last step's result."""
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        options = {**self.options, **options}
        partial = tuple(args or ())
        call_args = partial + self.args if partial and not self.immutable else self.args
        link = options.pop("link", None)
        tasks, results = self.prepare_steps(
            call_args,
            dict(kwargs or {}),
            last_task_id=options.pop("task_id", None),
            root_id=options.get("root_id"),
            group_id=options.pop("group_id", None),
            chord_body=options.pop("chord", None),
            group_index=options.pop("group_index", None),
            link_error=options.pop("link_error", None),
        )
        if not results:
            raise ValueError("cannot apply an empty chain")
        for callback in link if isinstance(link, list) else [link] if link else []:
            tasks[0].link(callback)
        first = tasks.pop()
        options["chain"] = [*tasks, *(options.get("chain") or [])]
        sent = first.apply_async(**options)
        return results[0] if tasks else sent

    def prepare_steps(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        last_task_id: str | None = None,
        root_id: str | None = None,
        group_id: str | None = None,
        chord_body: Signature | None = None,
        group_index: int | None = None,
        link_error: Any = None,
        clone: bool = True,
    ) -> tuple[list[Signature], list[Any]]:
        """Steps and their results, both from the last step to the first."""
        from taskframe.canvas.chord import chord
        from taskframe.canvas.group import group, maybe_unroll_group

        app = self.app
        steps: deque[Any] = deque(self.tasks)
        errbacks = (
            link_error if isinstance(link_error, list) else [link_error] if link_error else []
        )
        tasks: list[Signature] = []
        results: list[Any] = []
        previous: Signature | None = None
        previous_result: Any = None
        while steps:
            task = from_dict(steps.pop(), app)
            is_first, is_last = not steps, not tasks
            if isinstance(task, group):
                task = maybe_unroll_group(task)
            if clone:
                task = task.clone(args, kwargs) if is_first else task.clone()
            elif is_first and args and not task.immutable:
                task.args = tuple(args) + task.args
            if isinstance(task, chain):
                steps.extend(task.tasks)
                continue
            if isinstance(task, group) and previous is not None:
                tasks.pop()
                results.pop()
                task = chord(
                    task, body=previous, task_id=previous_result.id, root_id=root_id, app=app
                )
                previous = tasks[-1] if tasks else None
                previous_result = results[-1] if results else None
            if is_last:
                result = task.freeze(
                    last_task_id,
                    root_id=root_id,
                    group_id=group_id,
                    chord=chord_body,
                    group_index=group_index,
                )
            else:
                result = task.freeze(root_id=root_id)
            if previous_result is not None and previous_result.parent is None:
                previous_result.parent = result
            for errback in errbacks:
                task.link_error(errback)
            tasks.append(task)
            results.append(result)
            previous, previous_result = task, result
            if isinstance(task, chord):
                while previous_result.parent is not None:
                    previous_result = previous_result.parent
        return tasks, results

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run every step here, in order, each with the previous result."""
        options = {k: v for k, v in {**self.options, **options}.items() if k != "task_id"}
        last: Any = None
        step_args: Sequence[Any] | None = args
        step_kwargs: Mapping[str, Any] | None = kwargs
        for task in self.tasks:
            if last is not None:
                step_args = (last.get(),)
            result = task.clone(step_args, step_kwargs).apply(**options)
            result.parent, last = last, result
            step_kwargs = None
        return last
