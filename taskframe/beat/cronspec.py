"""Crontab fields: Celery's pattern syntax, wall-clock matching, and the DST rule.

Field syntax is Celery's (``crontab_parser``): ``*``, ``*/15``, ``1-5``, ``1-5/2``, lists
``1,13,30-45``, day names ``sun``..``sat`` (Sunday is 0; Celery refuses 7) and month names
``jan``..``dec``. A range whose end is before its start wraps (``fri-mon`` is 5,6,0,1). A field
may also be an int or an iterable of ints.

Matching is on the local *wall clock*: a day matches when its month, day of month **and** day
of week are all in their fields (Celery's AND rule, not cron's OR when both day fields are set).

Turning a wall time into a real instant is where DST matters (``wall_instants``):

- The schedule *follows real time* when its hour field holds all 24 hours (``hour='*'``): every
  real instant whose wall clock matches fires, so both passes of a repeated hour fire (it is
  another real hour) and a skipped hour simply has no instants. The real spacing of an hourly
  or every-15-minutes job is unchanged across both transitions.
- Otherwise the schedule names *wall-clock times*, and each one fires exactly once: a time that
  occurs twice (clocks go back) fires at its first occurrence only; a time that does not exist
  (clocks go forward) fires at the transition instant, the first moment of the new offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo

__all__ = ["CronFields", "ParseException", "crontab_parser", "wall_instants"]

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS_IN_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# A schedule that matches no day within this many years never matches (e.g. Feb 30 is refused
# earlier; Feb 29 on a Monday recurs within 28 years).
_SEARCH_YEARS = 30

Cronspec = int | str | Iterable[int]


class ParseException(ValueError):
    """A crontab field that does not parse (Celery's name; a ``ValueError`` here)."""


class crontab_parser:
    """Expand one crontab field to the set of values it matches.

    ``max_`` is the number of values and ``min_`` the first one: ``crontab_parser(60)`` for
    minutes, ``crontab_parser(31, 1)`` for days of the month.
    """

    _range_steps = re.compile(r"^(\w+)-(\w+)/(\w*)$")
    _range = re.compile(r"^(\w+)-(\w+)$")
    _star_steps = re.compile(r"^\*/(\w*)$")

    def __init__(self, max_: int = 60, min_: int = 0) -> None:
        self.max_ = max_
        self.min_ = min_

    def parse(self, spec: str) -> set[int]:
        values: set[int] = set()
        for part in spec.replace(" ", "").lower().split(","):
            if not part:
                raise ParseException(f"empty part in crontab field {spec!r}")
            values.update(self._parse_part(part))
        return values

    def _parse_part(self, part: str) -> list[int]:
        if part == "*":
            return self._all()
        match = self._star_steps.match(part)
        if match:
            return self._all()[:: self._step(match.group(1), part)]
        match = self._range_steps.match(part)
        if match:
            first, last, step = match.groups()
            return self._expand(first, last)[:: self._step(step, part)]
        match = self._range.match(part)
        if match:
            return self._expand(*match.groups())
        return [self._number(part)]

    def _all(self) -> list[int]:
        return list(range(self.min_, self.min_ + self.max_))

    def _expand(self, first: str, last: str) -> list[int]:
        start, end = self._number(first), self._number(last)
        if end < start:
            return list(range(start, self.min_ + self.max_)) + list(range(self.min_, end + 1))
        return list(range(start, end + 1))

    @staticmethod
    def _step(text: str, part: str) -> int:
        if not text.isdigit() or int(text) == 0:
            raise ParseException(f"bad step in crontab field part {part!r}")
        return int(text)

    def _number(self, text: str) -> int:
        if text.isdigit():
            value = int(text)
        elif text[:3] in DAY_NAMES:
            value = DAY_NAMES.index(text[:3])
        elif text[:3] in MONTH_NAMES:
            value = MONTH_NAMES.index(text[:3]) + 1
        else:
            raise ParseException(f"invalid crontab value {text!r}")
        highest = self.min_ + self.max_ - 1
        if not self.min_ <= value <= highest:
            raise ParseException(f"crontab value {value} is outside {self.min_}-{highest}")
        return value


def expand_field(spec: Cronspec, max_: int, min_: int = 0) -> frozenset[int]:
    """One field (int, pattern string or iterable of ints) as the set of values it matches."""
    if isinstance(spec, bool):
        raise TypeError(f"crontab field must be an int, str or iterable of ints, not {spec!r}")
    if isinstance(spec, int):
        values = {spec}
    elif isinstance(spec, str):
        values = crontab_parser(max_, min_).parse(spec)
    elif isinstance(spec, Iterable):
        values = {int(value) for value in spec}
    else:
        raise TypeError(f"crontab field must be an int, str or iterable of ints, not {spec!r}")
    for value in values:
        if not min_ <= value < min_ + max_:
            raise ValueError(f"crontab value {value} is outside {min_}-{min_ + max_ - 1}")
    if not values:
        raise ValueError("a crontab field must match at least one value")
    return frozenset(values)


@dataclass(frozen=True)
class CronFields:
    """The expanded fields of a crontab and the wall-clock times they match."""

    minute: frozenset[int]
    hour: frozenset[int]
    day_of_week: frozenset[int]
    day_of_month: frozenset[int]
    month_of_year: frozenset[int]

    def __post_init__(self) -> None:
        if not any(
            day <= DAYS_IN_MONTH[month] for month in self.month_of_year for day in self.day_of_month
        ):
            raise ValueError(
                f"day_of_month {sorted(self.day_of_month)} never occurs in "
                f"month_of_year {sorted(self.month_of_year)}"
            )

    @property
    def follows_real_time(self) -> bool:
        """True when every hour matches: DST transitions then follow real time (module doc)."""
        return len(self.hour) == 24

    def matches_day(self, day: date) -> bool:
        return (
            day.month in self.month_of_year
            and day.day in self.day_of_month
            and day.isoweekday() % 7 in self.day_of_week
        )

    def wall_times(self, start: datetime) -> Iterator[datetime]:
        """Matching naive wall-clock minutes at or after naive ``start``, ascending."""
        first = start.replace(second=0, microsecond=0)
        if first < start:
            first += timedelta(minutes=1)
        hours, minutes = sorted(self.hour), sorted(self.minute)
        day = first.date()
        for _ in range(_SEARCH_YEARS * 366):
            if self.matches_day(day):
                for hour in hours:
                    for minute in minutes:
                        moment = datetime(day.year, day.month, day.day, hour, minute)
                        if moment >= first:
                            yield moment
            day += timedelta(days=1)


def wall_instants(wall: datetime, zone: tzinfo, follows_real_time: bool) -> list[datetime]:
    """The UTC instants at which naive wall time ``wall`` in ``zone`` fires (module doc)."""
    earlier = wall.replace(tzinfo=zone, fold=0).astimezone(timezone.utc)
    later = wall.replace(tzinfo=zone, fold=1).astimezone(timezone.utc)
    if earlier == later:
        return [earlier]
    exists = earlier.astimezone(zone).replace(tzinfo=None) == wall
    if exists:
        first, second = sorted((earlier, later))
        return [first, second] if follows_real_time else [first]
    if follows_real_time:
        return []
    return [_transition_instant(min(earlier, later), max(earlier, later), zone)]


def _transition_instant(before: datetime, after: datetime, zone: tzinfo) -> datetime:
    """The first UTC instant in (before, after] with ``after``'s UTC offset (bisection)."""
    target = after.astimezone(zone).utcoffset()
    low, high = before, after
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)
