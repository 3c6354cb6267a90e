"""Periodic schedules under Celery's import path: ``crontab``, ``schedule``, ``maybe_schedule``.

Every schedule answers one question, ``next_run_after(moment) -> datetime``: the first time
strictly after ``moment`` at which it fires (aware, in the schedule's time zone). Celery's
``is_due(last_run_at) -> (is_due, seconds_to_next_check)`` and ``remaining_estimate`` are
derived from it and from ``now()``, so they keep Celery's meaning.

Time zone: a schedule's ``tz`` argument (an IANA name or ``tzinfo``), else the app's
``timezone`` setting, else UTC. Naive datetimes given to a schedule are read as UTC.

DST (crontab): a crontab whose hour field is ``*`` follows real time (every matching real
instant fires, so both passes of a repeated hour fire and a skipped hour has none); any other
crontab names wall-clock times, and each fires **once**: at its first occurrence when clocks go
back, and at the transition instant (e.g. 03:00 new time) when clocks go forward over it.
The rule lives in ``taskframe.beat.cronspec``.

Intervals (``schedule``) are real elapsed time and ignore DST. ``relative=True`` rounds each
deadline down to the interval's resolution (second, minute, hour, or local midnight for day
intervals) as Celery does, never to a time at or before the previous run.

``solar`` is not provided: it needs an astronomy library; use a crontab per season instead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from taskframe.beat.cronspec import (
    CronFields,
    Cronspec,
    ParseException,
    crontab_parser,
    expand_field,
    wall_instants,
)

__all__ = [
    "BaseSchedule",
    "ParseException",
    "crontab",
    "crontab_parser",
    "maybe_schedule",
    "schedstate",
    "schedule",
]

# A later wall time maps to an earlier instant only within the largest UTC offset change.
_DST_SLACK = timedelta(hours=3)
_AROUND = (-_DST_SLACK, timedelta(0), _DST_SLACK)


class schedstate(NamedTuple):
    """``is_due`` answer: whether to run now, and seconds until the next check."""

    is_due: bool
    next: float


def _zone(value: str | tzinfo | None) -> tzinfo:
    if value is None:
        return timezone.utc
    if isinstance(value, str):
        return timezone.utc if value.upper() == "UTC" else ZoneInfo(value)
    return value


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC (naive means UTC): arithmetic on zoneinfo times is wall-clock, not real."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


class BaseSchedule:
    """What every schedule shares: the clock (``nowfun``), the app and the time zone."""

    def __init__(
        self,
        nowfun: Callable[[], datetime] | None = None,
        app: Any = None,
        tz: str | tzinfo | None = None,
    ) -> None:
        self.nowfun = nowfun
        self.app = app
        self._tz = tz

    @property
    def tz(self) -> tzinfo:
        if self._tz is not None:
            return _zone(self._tz)
        conf = getattr(self.app, "conf", None)
        return _zone(getattr(conf, "timezone", None) if conf is not None else None)

    def now(self) -> datetime:
        moment = self.nowfun() if self.nowfun is not None else datetime.now(timezone.utc)
        return _utc(moment).astimezone(self.tz)

    def next_run_after(self, moment: datetime) -> datetime:
        raise NotImplementedError

    def latest_due(self, last_run_at: datetime, now: datetime) -> datetime | None:
        """The last fire time in ``(last_run_at, now]``, or None: one step for a missed run.

        The window grows from one minute backwards until it holds a fire time, so a long
        outage costs a few dozen ``next_run_after`` calls, not one per missed run.
        """
        last_run_at, now = _utc(last_run_at), _utc(now)
        if _utc(self.next_run_after(last_run_at)) > now:
            return None
        window = timedelta(minutes=1)
        while True:
            start = max(last_run_at, now - window)
            candidate = _utc(self.next_run_after(start))
            if candidate <= now:
                break
            window *= 2
        while (following := _utc(self.next_run_after(candidate))) <= now:
            candidate = following
        return candidate.astimezone(self.tz)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return _utc(self.next_run_after(last_run_at)) - _utc(self.now())

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining > 0:
            return schedstate(False, remaining)
        now = _utc(self.now())
        following = _utc(self.next_run_after(now))
        return schedstate(True, max((following - now).total_seconds(), 0.0))

    def fingerprint(self) -> str:
        """A stable text that changes when the schedule's timing changes."""
        return f"{self!r}@{self.tz}"


class schedule(BaseSchedule):
    """Run every ``run_every`` (a timedelta or seconds)."""

    def __init__(
        self,
        run_every: float | timedelta,
        relative: bool = False,
        nowfun: Callable[[], datetime] | None = None,
        app: Any = None,
        tz: str | tzinfo | None = None,
    ) -> None:
        super().__init__(nowfun=nowfun, app=app, tz=tz)
        if not isinstance(run_every, timedelta):
            run_every = timedelta(seconds=float(run_every))
        if run_every <= timedelta(0):
            raise ValueError(f"run_every must be positive, not {run_every}")
        self.run_every = run_every
        self.relative = relative

    @property
    def seconds(self) -> float:
        return self.run_every.total_seconds()

    @property
    def human_seconds(self) -> str:
        seconds = self.seconds
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds >= size:
                count = seconds / size
                return f"{count:g} {unit}{'s' if count != 1 else ''}"
        return f"{seconds:g} second{'s' if seconds != 1 else ''}"

    def next_run_after(self, moment: datetime) -> datetime:
        moment = _utc(moment)
        if not self.relative:
            return (moment + self.run_every).astimezone(self.tz)
        return self._rounded(moment)

    def latest_due(self, last_run_at: datetime, now: datetime) -> datetime | None:
        if self.relative:
            return super().latest_due(last_run_at, now)
        last_run_at, now = _utc(last_run_at), _utc(now)
        missed = (now - last_run_at) // self.run_every
        if missed < 1:
            return None
        return (last_run_at + missed * self.run_every).astimezone(self.tz)

    def _rounded(self, moment: datetime) -> datetime:
        """The last resolution boundary at or before ``moment + run_every``, after ``moment``."""
        target = (moment + self.run_every).astimezone(self.tz)
        if self.run_every >= timedelta(days=1):
            local = target.replace(tzinfo=None)
            midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
            rounded = midnight.replace(tzinfo=self.tz).astimezone(self.tz)
        else:
            step = next(
                size
                for size in (timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1))
                if self.run_every >= size
            )
            epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
            utc = target.astimezone(timezone.utc)
            rounded = (epoch + ((utc - epoch) // step) * step).astimezone(self.tz)
        return rounded if rounded > moment else target

    def __repr__(self) -> str:
        return f"<freq: {self.human_seconds}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, schedule):
            return self.run_every == other.run_every and self.relative == other.relative
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.run_every, self.relative))


class crontab(BaseSchedule):
    """Run at the wall-clock times a crontab matches (fields as in Celery, DST as above)."""

    def __init__(
        self,
        minute: Cronspec = "*",
        hour: Cronspec = "*",
        day_of_week: Cronspec = "*",
        day_of_month: Cronspec = "*",
        month_of_year: Cronspec = "*",
        nowfun: Callable[[], datetime] | None = None,
        app: Any = None,
        tz: str | tzinfo | None = None,
    ) -> None:
        super().__init__(nowfun=nowfun, app=app, tz=tz)
        self._specs = tuple(
            _spec_text(spec) for spec in (minute, hour, day_of_month, month_of_year, day_of_week)
        )
        self.fields = CronFields(
            minute=expand_field(minute, 60),
            hour=expand_field(hour, 24),
            day_of_week=expand_field(day_of_week, 7),
            day_of_month=expand_field(day_of_month, 31, 1),
            month_of_year=expand_field(month_of_year, 12, 1),
        )

    @classmethod
    def from_string(cls, expression: str) -> crontab:
        """``crontab.from_string('*/5 9-17 * * mon-fri')``: minute hour dom month dow."""
        parts = expression.split()
        if len(parts) != 5:
            raise ValueError(f"a crontab string has 5 fields, not {len(parts)}: {expression!r}")
        minute, hour, day_of_month, month_of_year, day_of_week = parts
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    @property
    def minute(self) -> set[int]:
        return set(self.fields.minute)

    @property
    def hour(self) -> set[int]:
        return set(self.fields.hour)

    @property
    def day_of_week(self) -> set[int]:
        return set(self.fields.day_of_week)

    @property
    def day_of_month(self) -> set[int]:
        return set(self.fields.day_of_month)

    @property
    def month_of_year(self) -> set[int]:
        return set(self.fields.month_of_year)

    def next_run_after(self, moment: datetime) -> datetime:
        zone = self.tz
        after = _utc(moment)
        start = after.astimezone(zone).replace(tzinfo=None)
        offsets = {(after + shift).astimezone(zone).utcoffset() for shift in _AROUND}
        if len(offsets) > 1:
            start -= _DST_SLACK
        real_time = self.fields.follows_real_time
        best: datetime | None = None
        best_wall = start
        for wall in self.fields.wall_times(start):
            if best is not None and wall > best_wall + _DST_SLACK:
                break
            for instant in wall_instants(wall, zone, real_time):
                if instant > after and (best is None or instant < best):
                    best, best_wall = instant, wall
        if best is None:
            raise ValueError(f"{self!r} has no run time after {moment.isoformat()}")
        return best.astimezone(zone)

    def __repr__(self) -> str:
        return f"<crontab: {' '.join(self._specs)} (m/h/dM/MY/d)>"

    def fingerprint(self) -> str:
        fields = self.fields
        expanded = (
            fields.minute,
            fields.hour,
            fields.day_of_month,
            fields.month_of_year,
            fields.day_of_week,
        )
        text = " ".join(",".join(map(str, sorted(values))) for values in expanded)
        return f"crontab {text}@{self.tz}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, crontab):
            return self.fields == other.fields
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.fields)


def _spec_text(spec: Cronspec) -> str:
    if isinstance(spec, (str, int)):
        return str(spec)
    return ",".join(str(value) for value in sorted(spec))


def maybe_schedule(
    value: float | timedelta | BaseSchedule | None, relative: bool = False, app: Any = None
) -> BaseSchedule | None:
    """A schedule from seconds, a timedelta, or a schedule (which gets ``app``), as Celery."""
    if value is None:
        return None
    if isinstance(value, BaseSchedule):
        if app is not None:
            value.app = app
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise TypeError(f"a schedule must be seconds, a timedelta or a schedule, not {value!r}")
    return schedule(value, relative=relative, app=app)
