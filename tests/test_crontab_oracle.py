"""crontab next-run times against croniter, an independent implementation, across DST zones.

What "equal" means here:

- Field matching (which wall-clock minutes a crontab names) must equal croniter's exactly.
  croniter is run on naive wall-clock times with ``day_or=False`` (Celery's rule: the day of
  month *and* the day of week must match).
- Turning wall times into instants follows taskframe's documented DST rule (see
  ``taskframe.schedules``), which this file restates from scratch: a wall time that exists once
  maps to its one instant; a repeated one to its first instant, or both when the hour field is
  ``*``; a skipped one to the transition instant (found here by a minute-by-minute scan), or to
  nothing when the hour field is ``*``.
- Away from DST transitions (no offset change within 3 hours of the start or the answer),
  taskframe must equal croniter run directly in the time zone.

Where taskframe deliberately differs from croniter at DST edges: croniter fires a wall time in a
repeated hour twice even when the hour is named (taskframe: once), and croniter moves a ``*``
hour schedule's skipped times to the transition (taskframe: real time, so nothing extra fires).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from taskframe.schedules import crontab

UTC = timezone.utc
ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe"]
SLACK = timedelta(hours=3)

# Instants near DST transitions in the zones above, where starts cluster half of the time.
TRANSITIONS = [
    datetime(2024, 3, 10, 7, tzinfo=UTC),  # New York forward
    datetime(2024, 11, 3, 6, tzinfo=UTC),  # New York back
    datetime(2024, 3, 31, 1, tzinfo=UTC),  # London forward
    datetime(2024, 10, 27, 1, tzinfo=UTC),  # London back
    datetime(2024, 4, 6, 15, tzinfo=UTC),  # Lord Howe back (30 min)
    datetime(2024, 10, 5, 15, 30, tzinfo=UTC),  # Lord Howe forward (30 min)
]


def field(low: int, high: int) -> st.SearchStrategy[frozenset[int] | None]:
    """None means ``*``; otherwise a small set of values."""
    values = st.frozensets(st.integers(low, high), min_size=1, max_size=4)
    return st.one_of(st.none(), values)


starts = st.one_of(
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)).map(
        lambda moment: moment.replace(tzinfo=UTC)
    ),
    st.tuples(st.sampled_from(TRANSITIONS), st.integers(-26 * 60, 26 * 60)).map(
        lambda pair: pair[0] + timedelta(minutes=pair[1])
    ),
)


def expression(fields: list[frozenset[int] | None]) -> str:
    return " ".join(
        "*" if values is None else ",".join(map(str, sorted(values))) for values in fields
    )


def instants(wall: datetime, zone: tzinfo, real_time: bool) -> list[datetime]:
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    low, high = sorted((first, second))
    if first.astimezone(zone).replace(tzinfo=None) == wall:  # repeated
        return [low, high] if real_time else [low]
    if real_time:  # skipped, follows real time
        return []
    moment = low.replace(second=0, microsecond=0)
    while moment.astimezone(zone).utcoffset() != high.astimezone(zone).utcoffset():
        moment += timedelta(minutes=1)
    return [moment]


def expected_next(expr: str, zone: tzinfo, start: datetime, real_time: bool) -> datetime:
    walls = croniter(
        expr,
        start.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0) - SLACK,
        day_or=False,
    )
    best: datetime | None = None
    best_wall = datetime.min
    while True:
        wall = walls.get_next(datetime)
        if best is not None and wall > best_wall + SLACK:
            return best
        for instant in instants(wall, zone, real_time):
            if instant > start and (best is None or instant < best):
                best, best_wall = instant, wall


def calm(zone: tzinfo, *moments: datetime) -> bool:
    """No UTC offset change within SLACK of any of ``moments``."""
    offsets = {
        (moment + shift).astimezone(zone).utcoffset()
        for moment in moments
        for shift in (-SLACK, timedelta(0), SLACK)
    }
    return len(offsets) == 1


@settings(max_examples=200, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    minute=field(0, 59),
    hour=st.one_of(field(0, 23), st.sampled_from([frozenset({1}), frozenset({2})])),
    day_of_month=st.one_of(st.none(), st.frozensets(st.integers(1, 28), min_size=1, max_size=4)),
    month_of_year=field(1, 12),
    day_of_week=field(0, 6),
    start=starts,
)
def test_next_run_matches_croniter(
    zone_name: str,
    minute: frozenset[int] | None,
    hour: frozenset[int] | None,
    day_of_month: frozenset[int] | None,
    month_of_year: frozenset[int] | None,
    day_of_week: frozenset[int] | None,
    start: datetime,
) -> None:
    zone = ZoneInfo(zone_name)
    schedule = crontab(
        minute=minute if minute is not None else "*",
        hour=hour if hour is not None else "*",
        day_of_week=day_of_week if day_of_week is not None else "*",
        day_of_month=day_of_month if day_of_month is not None else "*",
        month_of_year=month_of_year if month_of_year is not None else "*",
        tz=zone,
    )
    expr = expression([minute, hour, day_of_month, month_of_year, day_of_week])
    real_time = hour is None

    actual = schedule.next_run_after(start).astimezone(UTC)

    assert actual == expected_next(expr, zone, start, real_time)
    if calm(zone, start, actual) and actual - start < timedelta(days=2):
        direct = croniter(expr, start.astimezone(zone), day_or=False).get_next(datetime)
        assert actual == direct.astimezone(UTC)
