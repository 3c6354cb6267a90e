"""Celery's built-in canvas tasks, registered on every app when it finalizes.

``celery.map`` / ``celery.starmap`` run xmap/xstarmap messages, ``celery.chord_unlock`` completes
chords on backends without a native counter (and those a Celery producer sends), and
``celery.accumulate`` gathers a replaced group's results. Names and arguments are Celery's, so
either fleet runs the other's messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskframe import states
from taskframe.canvas.chord import UNLOCK_TASK, fail_chord
from taskframe.canvas.signature import from_dict

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.task import Task

__all__ = ["register_builtins"]


def register_builtins(app: Taskframe) -> Task[Any, Any]:
    """Register the built-in tasks on ``app`` (idempotent); returns ``celery.chord_unlock``."""
    if UNLOCK_TASK in app.tasks:
        return app.tasks[UNLOCK_TASK]

    @app.task(name="celery.map")
    def xmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        function = from_dict(task, app).type
        return [function(item) for item in it]

    @app.task(name="celery.starmap")
    def xstarmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        function = from_dict(task, app).type
        return [function(*item) for item in it]

    @app.task(name="celery.accumulate")
    def accumulate(*args: Any, index: int | None = None) -> Any:
        return args[index] if index is not None else list(args)

    @app.task(
        name=UNLOCK_TASK,
        bind=True,
        max_retries=None,
        ignore_result=True,
        typing=False,
        default_retry_delay=app.conf.result_chord_retry_interval,
    )
    def chord_unlock(
        self: Task[Any, Any],
        /,
        group_id: str,
        callback: dict[str, Any],
        interval: float | None = None,
        max_retries: int | None = None,
        result: list[Any] | None = None,
        **_: Any,
    ) -> None:
        """Wait (by retrying) until every header result is ready, then send the body."""
        members = app.GroupResult(
            group_id, [app.AsyncResult(_member_id(member)) for member in result or []]
        )
        if not members.ready():
            self.retry(
                countdown=self.default_retry_delay if interval is None else interval,
                max_retries=max_retries,
            )
        body = from_dict(callback, app)
        for member in members:
            if member.state in states.PROPAGATE_STATES:
                fail_chord(app, body, member.id, member.result)
                return
        values = members.join_native(timeout=app.conf.result_chord_join_timeout)
        body.apply_async((values,))

    return chord_unlock


def _member_id(value: Any) -> str:
    """The id in Celery's result tuple ``[[id, parent], children]``."""
    while isinstance(value, (list, tuple)):
        value = value[0]
    return str(value)
