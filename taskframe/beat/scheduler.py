"""The beat loop: hold the lease, fire each due entry once, sleep until the next due time.

One ``tick()``:

1. take or renew the store's lease; without it, stand by and try again after ``standby``;
2. rebuild the entries from ``app.conf.beat_schedule`` (changes need no restart) and forget
   the stored state of entries that are gone;
3. for each entry, find the latest due time in ``(last_due, now]``; claim it in the store (one
   process wins per entry and due time) and send the task with
   ``headers={'celery_beat_task': True}`` and a task id derived from (entry, due time);
4. return how long to sleep: until the next due time, at most ``max_interval`` and at most a
   third of the lease ttl (so the holder renews in time).

A new entry starts counting at the moment it is first seen (an interval entry first fires one
interval later, as in Celery); an entry whose schedule changed starts again the same way.

Missed runs (``beat_missed_policy``, a taskframe setting): after an outage several due times
may have passed. ``"once"`` (default) sends one run for the latest of them; ``"skip"`` sends it
only if it is at most ``lease_ttl + max_interval`` old (a takeover's delay is not an outage)
and otherwise records it as done without sending.

Defaults: ``max_interval`` is ``beat_max_loop_interval`` or 300 s; ``lease_ttl`` is
``beat_lease_ttl`` (a taskframe setting) or 30 s, so a dead holder is replaced within
``lease_ttl + lease_ttl / 3``. Claim-then-send means a crash between the two loses that one
run rather than sending it twice; a failed send is unclaimed and retried after ``retry_delay``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from taskframe.beat.entry import ScheduleEntry, entries_from_config
from taskframe.beat.store import BeatStore, to_us
from taskframe.exceptions import ImproperlyConfigured
from taskframe.timeutils import utcnow

__all__ = ["EntryInfo", "Scheduler", "beat_task_id"]

logger = logging.getLogger("taskframe.beat")

DEFAULT_MAX_INTERVAL = 300.0
DEFAULT_LEASE_TTL = 30.0
MISSED_POLICIES = ("once", "skip")
_TASK_ID_NAMESPACE = uuid.UUID("6f1c2c64-3a4e-4d53-9d55-2f0f1b0e7a41")


def beat_task_id(entry_name: str, due: datetime) -> str:
    """The task id of one run: the same (entry, due time) always gets the same id."""
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{entry_name}\x00{to_us(due)}"))


@dataclass(frozen=True)
class EntryInfo:
    """One line of ``beat --list``."""

    name: str
    task: str
    schedule: str
    last_run: datetime | None
    next_run: datetime


def _setting(conf: Any, name: str, default: Any) -> Any:
    value = conf.get(name) if isinstance(conf, Mapping) else getattr(conf, name, None)
    return default if value is None else value


class Scheduler:
    """Beat's loop over an app's schedule and a store; ``clock``/``sleep`` are injectable."""

    def __init__(
        self,
        app: Any,
        store: BeatStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        max_interval: float | None = None,
        lease_ttl: float | None = None,
        missed_policy: str | None = None,
        retry_delay: float = 5.0,
        owner: str | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.max_interval = float(
            max_interval or _setting(conf, "beat_max_loop_interval", 0) or DEFAULT_MAX_INTERVAL
        )
        self.lease_ttl = float(lease_ttl or _setting(conf, "beat_lease_ttl", DEFAULT_LEASE_TTL))
        self.missed_policy = missed_policy or str(_setting(conf, "beat_missed_policy", "once"))
        if self.missed_policy not in MISSED_POLICIES:
            raise ImproperlyConfigured(
                f"beat_missed_policy must be one of {MISSED_POLICIES}, not {self.missed_policy!r}"
            )
        self.retry_delay = retry_delay
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.max_sleep = min(self.max_interval, self.lease_ttl / 3)
        self.is_leader = False

    def tick(self) -> float:
        """Fire what is due now; returns the seconds to sleep before the next tick."""
        now = self.clock().astimezone(timezone.utc)
        if not self.store.acquire_lease(self.owner, now, self.lease_ttl):
            if self.is_leader:
                logger.warning("beat: %s lost the lease; standing by", self.owner)
            self.is_leader = False
            return self.max_sleep
        if not self.is_leader:
            logger.info("beat: %s holds the lease and fires the schedule", self.owner)
            self.is_leader = True
        entries = entries_from_config(self.app)
        stored = self.store.states()
        if stored.keys() - entries.keys():
            for name in self.store.remove_except(entries):
                logger.info("beat: entry %r left the schedule", name)
        wake = now + timedelta(seconds=self.max_sleep)
        for entry in entries.values():
            wake = min(wake, self._run_entry(entry, stored, now))
        later = self.clock().astimezone(timezone.utc)
        return max(0.0, min((wake - later).total_seconds(), self.max_sleep))

    def _run_entry(
        self, entry: ScheduleEntry, stored: Mapping[str, Any], now: datetime
    ) -> datetime:
        """Fire ``entry`` if due; returns when it next needs attention."""
        state = stored.get(entry.name)
        if state is None or state.fingerprint != entry.fingerprint:
            state = self.store.ensure_entry(entry.name, entry.fingerprint, now)
        last_due = state.last_due
        latest = entry.schedule.latest_due(last_due, now)
        if latest is None:
            return self._next_run(entry, last_due)
        due = latest.astimezone(timezone.utc)
        stale = (now - due).total_seconds() > self.lease_ttl + self.max_interval
        if self.missed_policy == "skip" and stale:
            if self.store.claim(entry.name, due):
                logger.warning("beat: skipped missed run of %r due %s", entry.name, due)
        elif self.store.claim(entry.name, due) and not self._send(entry, due):
            self.store.unclaim(entry.name, due, last_due)
            return now + timedelta(seconds=min(self.retry_delay, self.max_sleep))
        return self._next_run(entry, due)

    @staticmethod
    def _next_run(entry: ScheduleEntry, after: datetime) -> datetime:
        """In UTC: aware times in one zoneinfo zone compare by wall clock, not real time."""
        return entry.schedule.next_run_after(after).astimezone(timezone.utc)

    def _send(self, entry: ScheduleEntry, due: datetime) -> bool:
        options = dict(entry.options)
        headers = {**dict(options.pop("headers", None) or {}), "celery_beat_task": True}
        task = getattr(self.app, "tasks", {}).get(entry.task)
        if task is not None:
            options["task"] = task
        task_id = beat_task_id(entry.name, due)
        try:
            self.app.send_task(
                entry.task,
                list(entry.args),
                dict(entry.kwargs),
                task_id=task_id,
                headers=headers,
                **options,
            )
        except Exception as exc:
            logger.error("beat: sending %r (%s) failed: %r; will retry", entry.name, task_id, exc)
            return False
        logger.info("beat: sent %r task=%s id=%s due=%s", entry.name, entry.task, task_id, due)
        return True

    def close(self) -> None:
        """Give up the lease so another beat takes over at once."""
        if self.is_leader:
            self.store.release_lease(self.owner)
            self.is_leader = False

    def entry_infos(self) -> list[EntryInfo]:
        """Every entry with its last and next run time (``beat --list``); changes nothing."""
        now = self.clock()
        stored = self.store.states()
        infos = []
        for entry in entries_from_config(self.app).values():
            state = stored.get(entry.name)
            known = state is not None and state.fingerprint == entry.fingerprint
            last = state.last_due if state is not None and known else None
            next_run = entry.schedule.next_run_after(last or now)
            infos.append(EntryInfo(entry.name, entry.task, repr(entry.schedule), last, next_run))
        return sorted(infos, key=lambda info: (info.next_run, info.name))
