"""Schedules: Celery's crontab syntax, intervals, is_due/remaining_estimate, and DST."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

import taskframe.schedules
from taskframe.schedules import (
    ParseException,
    crontab,
    crontab_parser,
    maybe_schedule,
    schedstate,
    schedule,
)

UTC = timezone.utc
NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def runs(sched: crontab, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` runs in UTC (aware times in a fold never compare equal across zones)."""
    found, moment = [], start
    for _ in range(count):
        moment = sched.next_run_after(moment)
        found.append(moment.astimezone(UTC))
    return found


def test_public_names_are_pinned() -> None:
    assert sorted(taskframe.schedules.__all__) == [
        "BaseSchedule",
        "ParseException",
        "crontab",
        "crontab_parser",
        "maybe_schedule",
        "schedstate",
        "schedule",
    ]


@pytest.mark.parametrize(
    ("spec", "max_", "min_", "expected"),
    [
        ("*/15", 60, 0, {0, 15, 30, 45}),
        ("1,13,30-32", 60, 0, {1, 13, 30, 31, 32}),
        ("50-59/3", 60, 0, {50, 53, 56, 59}),
        ("*/4", 24, 0, {0, 4, 8, 12, 16, 20}),
        ("mon-fri", 7, 0, {1, 2, 3, 4, 5}),
        ("fri-mon", 7, 0, {5, 6, 0, 1}),
        ("sunday,Wed", 7, 0, {0, 3}),
        ("*/3", 31, 1, {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31}),
        ("2-12/2", 12, 1, {2, 4, 6, 8, 10, 12}),
        ("jan,jun-aug", 12, 1, {1, 6, 7, 8}),
        ("*", 12, 1, set(range(1, 13))),
    ],
)
def test_parser_expands_celery_syntax(spec: str, max_: int, min_: int, expected: set[int]) -> None:
    assert crontab_parser(max_, min_).parse(spec) == expected


@pytest.mark.parametrize("spec", ["", "1,,2", "*/", "*/0", "60", "7-2/x", "blah", "-1"])
def test_parser_refuses_bad_fields(spec: str) -> None:
    with pytest.raises(ParseException):
        crontab_parser(60).parse(spec)


def test_crontab_fields_accept_ints_iterables_and_strings() -> None:
    given = crontab(minute=[0, 30], hour=9, day_of_week="mon-fri", month_of_year={1, 7})
    assert given.minute == {0, 30}
    assert given.hour == {9}
    assert given.day_of_week == {1, 2, 3, 4, 5}
    assert given.day_of_month == set(range(1, 32))
    assert given.month_of_year == {1, 7}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"minute": 60},
        {"hour": [25]},
        {"day_of_week": 7},
        {"day_of_month": 0},
        {"day_of_month": 30, "month_of_year": 2},
        {"minute": 1.5},
    ],
)
def test_crontab_refuses_impossible_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        crontab(**kwargs)  # type: ignore[arg-type]


def test_from_string_reads_the_five_cron_fields() -> None:
    assert crontab.from_string("*/5 9-17 1 jan,jul mon-fri") == crontab(
        minute="*/5", hour="9-17", day_of_month=1, month_of_year="jan,jul", day_of_week="1-5"
    )
    with pytest.raises(ValueError, match="5 fields"):
        crontab.from_string("* * *")


def test_crontab_needs_both_day_fields_like_celery() -> None:
    # Given Mondays that are also the 1st-7th: the first Monday of the month.
    first_monday = crontab(minute=0, hour=0, day_of_week="mon", day_of_month="1-7")
    # Then the next runs are first Mondays only (AND, not cron's OR).
    assert runs(first_monday, utc(2024, 1, 2), 3) == [
        utc(2024, 2, 5),
        utc(2024, 3, 4),
        utc(2024, 4, 1),
    ]


def test_crontab_next_run_is_strictly_after() -> None:
    every_quarter = crontab(minute="*/15")
    assert every_quarter.next_run_after(utc(2024, 5, 1, 10, 15)) == utc(2024, 5, 1, 10, 30)
    assert every_quarter.next_run_after(utc(2024, 5, 1, 10, 14, 59)) == utc(2024, 5, 1, 10, 15)


def test_leap_day_schedule_waits_for_a_leap_year() -> None:
    leap = crontab(minute=0, hour=12, day_of_month=29, month_of_year=2)
    assert leap.next_run_after(utc(2024, 3, 1)) == utc(2028, 2, 29, 12)


def test_crontab_uses_the_app_timezone_and_a_per_entry_override() -> None:
    class Conf:
        timezone = "America/New_York"

    class App:
        conf = Conf()

    nine = crontab(minute=0, hour=9, app=App())
    assert nine.next_run_after(utc(2024, 6, 1)) == utc(2024, 6, 1, 13)
    tokyo_nine = crontab(minute=0, hour=9, app=App(), tz="Asia/Tokyo")
    assert tokyo_nine.next_run_after(utc(2024, 6, 1)) == utc(2024, 6, 2, 0)


def test_crontab_is_due_and_remaining_estimate_use_now() -> None:
    now = utc(2024, 5, 1, 10, 31)
    hourly = crontab(minute=30, nowfun=lambda: now)
    assert hourly.is_due(utc(2024, 5, 1, 9, 30)) == schedstate(True, 59 * 60.0)
    assert hourly.is_due(utc(2024, 5, 1, 10, 30)) == schedstate(False, 59 * 60.0)
    assert hourly.remaining_estimate(utc(2024, 5, 1, 10, 30)) == timedelta(minutes=59)


def test_interval_is_due_like_celery() -> None:
    now = utc(2024, 5, 1, 12)
    every_ten = schedule(timedelta(seconds=10), nowfun=lambda: now)
    assert every_ten.is_due(now - timedelta(seconds=4)) == schedstate(False, 6.0)
    assert every_ten.is_due(now - timedelta(seconds=10)) == schedstate(True, 10.0)
    assert every_ten.remaining_estimate(now - timedelta(seconds=25)) == timedelta(seconds=-15)
    assert every_ten.seconds == 10.0
    assert repr(every_ten) == "<freq: 10 seconds>"


def test_relative_interval_rounds_to_its_resolution() -> None:
    hourly = schedule(timedelta(hours=1), relative=True)
    assert hourly.next_run_after(utc(2024, 5, 1, 10, 20)) == utc(2024, 5, 1, 11)
    daily = schedule(timedelta(days=1), relative=True, tz=NEW_YORK)
    assert daily.next_run_after(utc(2024, 5, 1, 10, 20)) == datetime(2024, 5, 2, tzinfo=NEW_YORK)


def test_latest_due_is_the_last_missed_run() -> None:
    hourly = crontab(minute=0)
    assert hourly.latest_due(utc(2024, 5, 1, 0), utc(2024, 5, 3, 7, 30)) == utc(2024, 5, 3, 7)
    assert hourly.latest_due(utc(2024, 5, 1, 0), utc(2024, 5, 1, 0, 59)) is None
    every_ten = schedule(10)
    assert every_ten.latest_due(utc(2024, 5, 1), utc(2024, 5, 1, 0, 1, 5)) == utc(2024, 5, 1, 0, 1)


def test_maybe_schedule_turns_numbers_into_intervals() -> None:
    assert maybe_schedule(30) == schedule(timedelta(seconds=30))
    assert maybe_schedule(timedelta(minutes=1), relative=True) == schedule(60, relative=True)
    given = crontab()
    assert maybe_schedule(given, app="app") is given
    assert given.app == "app"
    assert maybe_schedule(None) is None
    with pytest.raises(TypeError):
        maybe_schedule("every minute")  # type: ignore[arg-type]


# -- DST: the rule in the schedules module docstring ------------------------------------------


def test_wall_clock_time_in_the_skipped_hour_fires_at_the_transition() -> None:
    # Given 02:30 New York, on the day clocks jump from 02:00 EST to 03:00 EDT
    half_past_two = crontab(minute=30, hour=2, tz=NEW_YORK)
    # Then it fires once, at 03:00 EDT, and at 02:30 EDT the next day
    assert runs(half_past_two, utc(2024, 3, 9, 12), 3) == [
        utc(2024, 3, 10, 7),
        utc(2024, 3, 11, 6, 30),
        utc(2024, 3, 12, 6, 30),
    ]


def test_wall_clock_time_in_the_repeated_hour_fires_once() -> None:
    # Given 01:30 New York, on the day 01:00-02:00 happens twice
    half_past_one = crontab(minute=30, hour=1, tz=NEW_YORK)
    # Then it fires at the first 01:30 (EDT) only
    assert runs(half_past_one, utc(2024, 11, 2, 12), 3) == [
        utc(2024, 11, 3, 5, 30),
        utc(2024, 11, 4, 6, 30),
        utc(2024, 11, 5, 6, 30),
    ]
    # Also when asked from inside the repeated hour
    second_pass = datetime(2024, 11, 3, 1, 10, tzinfo=NEW_YORK, fold=1)
    assert runs(half_past_one, second_pass, 1) == [utc(2024, 11, 4, 6, 30)]


def test_every_hour_follows_real_time_across_both_transitions() -> None:
    hourly = crontab(minute=30, tz=LONDON)
    autumn = runs(hourly, utc(2024, 10, 26, 23), 4)
    assert autumn == [utc(2024, 10, 26, 23, 30), *(utc(2024, 10, 27, h, 30) for h in (0, 1, 2))]
    spring = runs(hourly, utc(2024, 3, 31, 0), 3)
    assert spring == [utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1, 30), utc(2024, 3, 31, 2, 30)]


def test_lord_howe_half_hour_shift() -> None:
    # Lord Howe goes back from 02:00 (+11) to 01:30 (+10:30) on 2024-04-07.
    quarter_to_two = crontab(minute=45, hour=1, tz=LORD_HOWE)
    assert runs(quarter_to_two, utc(2024, 4, 6, 12), 1) == [utc(2024, 4, 6, 14, 45)]
    every_quarter = crontab(minute="*/15", tz=LORD_HOWE)
    fired = runs(every_quarter, utc(2024, 4, 6, 14, 20), 4)
    assert fired == [
        utc(2024, 4, 6, 14, 30),
        utc(2024, 4, 6, 14, 45),
        *(utc(2024, 4, 6, 15, m) for m in (0, 15)),
    ]
    assert [moment.astimezone(LORD_HOWE).strftime("%H:%M") for moment in fired] == [
        "01:30",
        "01:45",
        "01:30",
        "01:45",
    ]
    # Forward on 2024-10-06: 02:00 (+10:30) becomes 02:30 (+11); 02:15 fires at 02:30.
    quarter_past_two = crontab(minute=15, hour=2, tz=LORD_HOWE)
    assert runs(quarter_past_two, utc(2024, 10, 5, 12), 1) == [utc(2024, 10, 5, 15, 30)]
