"""group: tasks run in parallel; their results come back together as a GroupResult.

Members are plain messages carrying the ``group`` id and their ``group_index`` headers; with no
parent task each member's ``root_id`` is its own id (Celery protocol 2). Plain members are
encoded without I/O (``app.draft_message``; a member that differs from the one before only in
id, index and arguments is derived from its draft) and published with ``broker.publish_many``
in batches of :data:`PUBLISH_BATCH`, so a group of 10,000 tasks costs a few round trips; chains
and chords inside a group are sent one by one. Nested groups are flattened.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskframe import signals
from taskframe.brokers.base import Message
from taskframe.canvas.chain import TaskList
from taskframe.canvas.signature import Signature, from_dict, register_type
from taskframe.protocol import Draft

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.result import GroupResult

__all__ = ["PUBLISH_BATCH", "group", "maybe_unroll_group", "publish_signatures"]

PUBLISH_BATCH = 500
"""Messages handed to ``publish_many`` at once."""


@register_type("group")
class group(TaskList):
    """``group(add.s(1, 1), add.s(2, 2))`` or ``group(add.s(i, i) for i in range(10))``."""

    kind = "group"

    def __or__(self, other: Any) -> Any:
        """``group | task`` is a chord with the task as its body, as in Celery."""
        from taskframe.canvas.chord import chord

        if not isinstance(other, Signature):
            return NotImplemented
        return chord(self, body=other, app=self._app)

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        for task in self.tasks:
            task.link_error(errback)
        return errback

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def members(self) -> Iterator[Signature]:
        """Members with nested groups flattened, in order."""
        stack = list(reversed(self.tasks))
        while stack:
            member = from_dict(stack.pop(), self._app)
            if isinstance(member, group):
                stack.extend(reversed(member.tasks))
            else:
                yield member

    # -- freezing and sending ---------------------------------------------------------------

    def freeze_members(
        self,
        group_id: str | None,
        chord: Signature | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        partial: tuple[Sequence[Any], Mapping[str, Any]] = ((), {}),
    ) -> list[Any]:
        """Clone and freeze every member in place (flattened); returns their results.

        A member this group froze already is frozen again as it is (a chord freezes its
        header before sending it): a clone would deep-copy the chord body into each one."""
        args, kwargs = partial
        frozen: list[Signature] = []
        results: list[Any] = []
        for index, member in enumerate(self.members()):
            ours = group_id is not None and member.options.get("group_id") == group_id
            copy = member if ours and not args and not kwargs else member.clone(args, kwargs)
            results.append(
                copy.freeze(
                    group_id=group_id,
                    chord=chord,
                    root_id=root_id,
                    parent_id=parent_id,
                    group_index=index,
                )
            )
            frozen.append(copy)
        self.kwargs["tasks"] = frozen
        return results

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Signature | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> GroupResult:
        options = self.options
        group_key = options.get("task_id") or group_id or _id or str(uuid.uuid4())
        options["task_id"] = group_key
        if group_id:
            options["group_id"] = group_id
        if chord is not None:
            options["chord"] = chord
        if group_index is not None:
            options["group_index"] = group_index
        root_id = options.setdefault("root_id", root_id)
        parent_id = options.setdefault("parent_id", parent_id)
        results = self.freeze_members(group_id, chord, root_id, parent_id)
        return self.app.GroupResult(group_key, results)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Send every member; returns the GroupResult at once."""
        if options.get("link") or self.options.get("link"):
            raise TypeError("a group cannot have a callback: use a chord, group(...) | task")
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        options = {**self.options, **options}
        group_key = options.pop("task_id", None) or str(uuid.uuid4())
        for key in ("group_id", "group_index", "link_error"):
            options.pop(key, None)
        chord = options.pop("chord", None)
        root_id = options.pop("root_id", None)
        parent_id = options.pop("parent_id", None)
        results = self.freeze_members(
            group_key, chord, root_id, parent_id, (tuple(args or ()), dict(kwargs or {}))
        )
        lineage = {"root_id": root_id, "parent_id": parent_id}
        publish_signatures(app, self.tasks, {**options, **lineage})
        from taskframe.result import GroupResult

        if len(results) == 1 and isinstance(results[0], GroupResult):
            return results[0]
        return app.GroupResult(group_key, results)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Run every member here, in order."""
        group_key = self.options.get("task_id") or str(uuid.uuid4())
        results = [member.clone(args, kwargs).apply(**options) for member in self.members()]
        return self.app.GroupResult(group_key, results)


def maybe_unroll_group(value: group) -> Signature:
    """A group of one member is just that member (Celery does the same in chains)."""
    return value.tasks[0] if len(value.tasks) == 1 else value


def publish_signatures(
    app: Taskframe, signatures: Sequence[Signature], options: Mapping[str, Any]
) -> None:
    """Send frozen signatures: plain ones batched through ``publish_many``, the rest one by one.

    A signature shared by the members (a chord's body) becomes its wire dict once, not once
    per member."""
    batch: list[tuple[str, Message, float, int | None]] = []
    wire_forms: dict[int, dict[str, Any]] = {}
    siblings = _Siblings(app)
    for signature in signatures:
        if type(signature) is not Signature:
            signature.apply_async(**options)
            continue
        send_options = {**signature.options, **options}
        for key in [key for key, value in send_options.items() if value is None]:
            del send_options[key]
        shared = send_options.get("chord")
        if isinstance(shared, Signature):
            if id(shared) not in wire_forms:
                wire_forms[id(shared)] = shared.as_dict()
            send_options["chord"] = wire_forms[id(shared)]
        task = app.tasks.get(signature.task)
        if task is not None:
            send_options.setdefault("expires", task.expires)
        queue, delay, message = siblings.message(signature, task, send_options)
        if signals.before_task_publish.has_receivers():
            signals.before_task_publish.send(
                sender=signature.task,
                body=message.body,
                exchange="",
                routing_key=queue,
                headers=message.headers,
                properties=message.properties,
                declare=[],
                retry_policy=None,
            )
        batch.append((queue, message, delay, message.priority))
        if len(batch) >= PUBLISH_BATCH:
            _flush(app, batch)
            batch = []
    if batch:
        _flush(app, batch)


SIBLING_OPTIONS = frozenset(
    {"task_id", "group_id", "group_index", "reply_to", "root_id", "parent_id", "chord", "expires"}
)
"""Send options under which members of one group can share a draft (see :class:`_Siblings`);
only ``task_id`` and ``group_index`` may differ between them."""


class _Siblings:
    """Drafts each member of a group, or, when a member is the previous one's sibling (same
    task, same send options but its id and index, nothing that depends on the time or on the
    arguments' routing), derives it from that draft: half the encoding time of a member."""

    def __init__(self, app: Taskframe) -> None:
        self.app = app
        self.enabled = not app.router.has_routes
        self.name = ""
        self.options: dict[str, Any] = {}
        self.sent: tuple[str, float, Draft] | None = None

    def message(
        self, signature: Signature, task: Any, options: dict[str, Any]
    ) -> tuple[str, float, Message]:
        if self.sent is not None and self._is_sibling(signature.task, options):
            queue, delay, draft = self.sent
            message = draft.encode_sibling(
                options["task_id"], options.get("group_index"), signature.args, signature.kwargs
            )
            return queue, delay, message
        queue, delay, draft = self.app.draft_message(
            signature.task, signature.args, signature.kwargs, task=task, **options
        )
        if self.enabled and options.keys() <= SIBLING_OPTIONS and options.get("expires") is None:
            self.name, self.options, self.sent = signature.task, options, (queue, delay, draft)
        return queue, delay, draft.encode()

    def _is_sibling(self, name: str, options: dict[str, Any]) -> bool:
        if name != self.name or options.keys() != self.options.keys() or "task_id" not in options:
            return False
        first = self.options
        for key, value in options.items():
            if value is not first[key] and key != "task_id" and key != "group_index":
                return False
        return True


def _flush(app: Taskframe, batch: list[tuple[str, Message, float, int | None]]) -> None:
    app.broker.publish_many(batch)
    if signals.after_task_publish.has_receivers():
        for queue, message, _, _ in batch:
            signals.after_task_publish.send(
                sender=message.headers.get("task"),
                body=message.body,
                exchange="",
                routing_key=queue,
                headers=message.headers,
            )
