"""Beat entries: Celery's ``beat_schedule`` items and ``add_periodic_task``.

An item of ``app.conf.beat_schedule`` is ``name -> {"task", "schedule", "args", "kwargs",
"options", "relative"}`` exactly as in Celery; ``schedule`` is seconds, a ``timedelta`` or a
schedule object (``crontab``, ``schedule``). Entries are rebuilt from the configuration on every
scheduler tick, so a changed ``beat_schedule`` needs no restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from taskframe.exceptions import ImproperlyConfigured
from taskframe.schedules import BaseSchedule, maybe_schedule

__all__ = ["ScheduleEntry", "add_periodic_task", "entries_from_config"]

logger = logging.getLogger("taskframe.beat")

_ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})


@dataclass(frozen=True)
class ScheduleEntry:
    """One periodic task: what to send, and when."""

    name: str
    task: str
    schedule: BaseSchedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, item: Mapping[str, Any], app: Any = None) -> ScheduleEntry:
        """Build an entry from one ``beat_schedule`` item; a bad item names itself."""
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise ImproperlyConfigured(
                f"beat_schedule[{name!r}] has unknown keys {sorted(unknown)}; "
                f"allowed: {sorted(_ENTRY_KEYS)}"
            )
        task = item.get("task")
        if not isinstance(task, str) or not task:
            raise ImproperlyConfigured(f"beat_schedule[{name!r}] needs a 'task' name")
        try:
            schedule = maybe_schedule(
                item.get("schedule"), relative=bool(item.get("relative", False)), app=app
            )
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"beat_schedule[{name!r}]: {exc}") from exc
        if schedule is None:
            raise ImproperlyConfigured(f"beat_schedule[{name!r}] needs a 'schedule'")
        return cls(
            name=name,
            task=task,
            schedule=schedule,
            args=tuple(item.get("args") or ()),
            kwargs=dict(item.get("kwargs") or {}),
            options=dict(item.get("options") or {}),
        )

    @property
    def fingerprint(self) -> str:
        """Changes when the entry's timing changes; then its run history starts again."""
        return self.schedule.fingerprint()


def entries_from_config(app: Any) -> dict[str, ScheduleEntry]:
    """The app's current ``beat_schedule`` as entries; a broken item is logged and left out."""
    configured: Mapping[str, Any] = app.conf.beat_schedule or {}
    entries: dict[str, ScheduleEntry] = {}
    for name, item in configured.items():
        try:
            entries[name] = ScheduleEntry.from_config(name, item, app=app)
        except ImproperlyConfigured as exc:
            logger.error("beat: skipping entry %r: %s", name, exc)
    return entries


def add_periodic_task(
    app: Any,
    schedule: float | timedelta | BaseSchedule,
    sig: Any,
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | Sequence[Any] = (),
    **options: Any,
) -> str:
    """Add ``sig`` to ``app.conf.beat_schedule`` as Celery's ``app.add_periodic_task``.

    ``sig`` is a signature (``task.s(...)``) or a dict with ``task``/``args``/``kwargs``/
    ``options``. ``args`` go before the signature's own (unless it is immutable), ``kwargs``
    update its kwargs and ``options`` its options. Without ``name`` the key is the call's
    repr, like Celery's ``repr(sig)``; an unnamed entry with the same key replaces the earlier
    one (logged). Returns the key.
    """
    task, sig_args, sig_kwargs, sig_options = _signature_parts(sig)
    immutable = isinstance(sig, Mapping) and bool(sig.get("immutable"))
    all_args = sig_args if immutable else (*tuple(args), *sig_args)
    all_kwargs = {**sig_kwargs, **dict(kwargs or {})}
    key = name or _call_repr(task, all_args, all_kwargs)
    current = app.conf.beat_schedule
    beat_schedule: dict[str, Any] = dict(current) if current else {}
    if name is None and key in beat_schedule:
        logger.warning("beat: unnamed periodic task %r replaced an earlier one; name it", key)
    beat_schedule[key] = {
        "task": task,
        "schedule": schedule,
        "args": all_args,
        "kwargs": all_kwargs,
        "options": {**sig_options, **options},
    }
    app.conf.beat_schedule = beat_schedule
    return key


def _signature_parts(sig: Any) -> tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    if isinstance(sig, Mapping):
        parts: Mapping[str, Any] = sig
    elif hasattr(sig, "as_dict"):
        parts = sig.as_dict()
    else:
        raise TypeError(f"add_periodic_task needs a signature (task.s(...)), not {sig!r}")
    task = parts.get("task")
    if not isinstance(task, str):
        raise TypeError(f"the signature has no task name: {sig!r}")
    return (
        task,
        tuple(parts.get("args") or ()),
        dict(parts.get("kwargs") or {}),
        dict(parts.get("options") or {}),
    )


def _call_repr(task: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    shown = [repr(value) for value in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    return f"{task}({', '.join(shown)})"
