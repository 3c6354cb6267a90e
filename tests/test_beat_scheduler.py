"""The beat loop on a fake clock: exactly-once firing with two beats, restarts, a killed beat,
missed-run policies, dynamic schedules, failed sends and ``--list``. Nothing sleeps for real."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from taskframe.app import Taskframe
from taskframe.beat.cli import beat_command, format_entries
from taskframe.beat.entry import entries_from_config
from taskframe.beat.redis_store import RedisBeatStore
from taskframe.beat.scheduler import Scheduler, beat_task_id
from taskframe.beat.service import Service
from taskframe.beat.store import BeatStore, SQLiteBeatStore
from taskframe.brokers.base import Message
from taskframe.exceptions import BrokerConnectionError
from taskframe.schedules import BaseSchedule, crontab

LONDON = ZoneInfo("Europe/London")
# 2024-10-27 is 25 hours long in London: 01:00-02:00 happens twice.
DAY_START = datetime(2024, 10, 27, tzinfo=LONDON).astimezone(timezone.utc)
DAY_END = datetime(2024, 10, 28, tzinfo=LONDON).astimezone(timezone.utc)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


StoreFactory = Callable[[], BeatStore]


@pytest.fixture(params=["sqlite", "redis"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens another handle on one shared store, as another beat process would."""
    opened: list[BeatStore] = []

    def factory() -> BeatStore:
        if request.param == "sqlite":
            store: BeatStore = SQLiteBeatStore(tmp_path / "beat.sqlite3")
        else:
            store = RedisBeatStore(request.getfixturevalue("redis_url"))
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def make_app(memory_url: str, beat_schedule: dict[str, Any]) -> Taskframe:
    app = Taskframe("periodic", broker=memory_url, set_as_current=False)
    app.conf.timezone = "Europe/London"
    app.conf.beat_schedule = beat_schedule
    return app


def drain(app: Taskframe) -> list[Message]:
    """The worker: take every message beat sent, and ack it."""
    deliveries = app.broker.receive(["celery"], 10_000, 0)
    for delivery in deliveries:
        delivery.ack()
    return [delivery.message for delivery in deliveries]


def due_times(sched: BaseSchedule, start: datetime, end: datetime) -> list[datetime]:
    found, moment = [], start
    while (moment := sched.next_run_after(moment)) <= end:
        found.append(moment)
    return found


class Beat:
    """One simulated beat process: a scheduler and the time it wakes up next."""

    def __init__(
        self, app: Taskframe, store: BeatStore, clock: FakeClock, name: str, **options: Any
    ) -> None:
        self.scheduler = Scheduler(
            app, store, clock=clock, lease_ttl=120, max_interval=300, owner=name, **options
        )
        self.wake = clock()


def simulate(
    beats: list[Beat],
    clock: FakeClock,
    until: datetime,
    events: dict[datetime, Callable[[], None]] | None = None,
) -> None:
    """Run each beat at the time it asked to wake up, and each event at its time."""
    pending = dict(events or {})
    for _ in range(100_000):
        beat = min(beats, key=lambda candidate: candidate.wake)
        event_at = min(pending, default=None)
        if event_at is not None and event_at <= beat.wake:
            clock.now = event_at
            pending.pop(event_at)()
            continue
        if beat.wake > until:
            return
        clock.now = beat.wake
        beat.wake = clock.now + timedelta(seconds=beat.scheduler.tick())
    raise AssertionError("the simulation did not reach its end: a beat keeps waking at once")


def test_two_beats_fire_each_due_time_once_across_restart_and_kill(
    memory_url: str, new_store: StoreFactory
) -> None:
    # Given a schedule with an interval, a real-time crontab and a wall-clock crontab
    beat_schedule = {
        "every-10-minutes": {"task": "tasks.sync", "schedule": 600.0},
        "hourly-at-5": {"task": "tasks.report", "schedule": crontab(minute=5)},
        "nightly-01-30": {"task": "tasks.backup", "schedule": crontab(hour=1, minute=30)},
    }
    app = make_app(memory_url, beat_schedule)
    clock = FakeClock(DAY_START)
    beats = [Beat(app, new_store(), clock, "a"), Beat(app, new_store(), clock, "b")]
    killed: list[str] = []

    def restart_leader() -> None:
        leader = next(beat for beat in beats if beat.scheduler.is_leader)
        leader.scheduler.close()
        beats.remove(leader)
        beats.append(Beat(app, new_store(), clock, "restarted"))

    def kill_leader() -> None:
        leader = next(beat for beat in beats if beat.scheduler.is_leader)
        killed.append(leader.scheduler.owner)
        beats.remove(leader)  # abandoned: the lease is never released
        beats.append(Beat(app, new_store(), clock, "replacement"))

    # When they run for the whole (25-hour) day with a restart and a kill -9 of the leader
    simulate(
        beats,
        clock,
        DAY_END,
        {
            DAY_START + timedelta(hours=6, seconds=1): restart_leader,
            DAY_START + timedelta(hours=12, minutes=9): kill_leader,
        },
    )

    # Then the worker got every due time of every entry exactly once
    messages = drain(app)
    expected = sorted(
        beat_task_id(name, due)
        for name, entry in entries_from_config(app).items()
        for due in due_times(entry.schedule, DAY_START, DAY_END)
    )
    assert sorted(message.headers["id"] for message in messages) == expected
    assert len(expected) == 150 + 25 + 1
    assert all(message.headers["celery_beat_task"] is True for message in messages)
    assert killed and killed[0] not in {beat.scheduler.owner for beat in beats}
    holders = {beat.scheduler.owner for beat in beats if beat.scheduler.is_leader}
    assert len(holders) == 1


def test_restart_after_an_outage_fires_a_missed_run_once(
    memory_url: str, new_store: StoreFactory
) -> None:
    app = make_app(memory_url, {"hourly": {"task": "tasks.report", "schedule": crontab(minute=0)}})
    clock = FakeClock(DAY_START)
    first = Beat(app, new_store(), clock, "first")
    simulate([first], clock, DAY_START + timedelta(hours=2))
    first.scheduler.close()
    assert len(drain(app)) == 2

    # Down from 02:00 to 05:30: 03:00, 04:00 and 05:00 were missed
    clock.now = DAY_START + timedelta(hours=5, minutes=30)
    second = Beat(app, new_store(), clock, "second")
    simulate([second], clock, DAY_START + timedelta(hours=6, minutes=30))

    assert [message.headers["id"] for message in drain(app)] == [
        beat_task_id("hourly", DAY_START + timedelta(hours=5)),
        beat_task_id("hourly", DAY_START + timedelta(hours=6)),
    ]


def test_skip_policy_drops_stale_runs(memory_url: str, new_store: StoreFactory) -> None:
    app = make_app(memory_url, {"hourly": {"task": "tasks.report", "schedule": crontab(minute=0)}})
    clock = FakeClock(DAY_START)
    first = Beat(app, new_store(), clock, "first", missed_policy="skip")
    simulate([first], clock, DAY_START + timedelta(minutes=30))
    first.scheduler.close()

    clock.now = DAY_START + timedelta(hours=5, minutes=30)
    second = Beat(app, new_store(), clock, "second", missed_policy="skip")
    simulate([second], clock, DAY_START + timedelta(hours=6, minutes=30))

    assert [message.headers["id"] for message in drain(app)] == [
        beat_task_id("hourly", DAY_START + timedelta(hours=6))
    ]


def test_schedule_changes_apply_without_restart(memory_url: str, new_store: StoreFactory) -> None:
    app = make_app(memory_url, {"sync": {"task": "tasks.sync", "schedule": 600.0}})
    clock = FakeClock(DAY_START)
    beat = Beat(app, new_store(), clock, "only")
    simulate([beat], clock, DAY_START + timedelta(minutes=25))
    assert len(drain(app)) == 2

    # Added, changed and removed while running
    changed_at = clock.now = beat.wake = DAY_START + timedelta(minutes=25)
    app.conf.beat_schedule = {
        "sync": {"task": "tasks.sync", "schedule": 300.0},
        "report": {"task": "tasks.report", "schedule": crontab(minute="*/20")},
    }
    simulate([beat], clock, DAY_START + timedelta(minutes=41))
    assert sorted(message.headers["id"] for message in drain(app)) == sorted(
        [
            beat_task_id("sync", changed_at + timedelta(minutes=5)),
            beat_task_id("sync", changed_at + timedelta(minutes=10)),
            beat_task_id("sync", changed_at + timedelta(minutes=15)),
            beat_task_id("report", DAY_START + timedelta(minutes=40)),
        ]
    )
    app.conf.beat_schedule = {}
    simulate([beat], clock, DAY_START + timedelta(hours=2))
    assert drain(app) == []
    assert beat.scheduler.store.states() == {}


def test_failed_send_is_retried_with_the_same_due_time(
    memory_url: str, new_store: StoreFactory
) -> None:
    real = make_app(memory_url, {"sync": {"task": "tasks.sync", "schedule": 600.0}})

    class FlakyApp:
        """The real app, with a broker that is down until ``down`` is cleared."""

        conf = real.conf
        tasks = real.tasks
        down = True

        def send_task(self, name: str, *args: Any, **options: Any) -> Any:
            if self.down:
                raise BrokerConnectionError("broker is down")
            return real.send_task(name, *args, **options)

    flaky = FlakyApp()
    clock = FakeClock(DAY_START)
    scheduler = Scheduler(flaky, new_store(), clock=clock, lease_ttl=120, retry_delay=5)
    scheduler.tick()
    clock.now += timedelta(minutes=10)
    assert scheduler.tick() == 5.0
    flaky.down = False
    clock.now += timedelta(seconds=5)
    scheduler.tick()

    due = DAY_START + timedelta(minutes=10)
    assert [message.headers["id"] for message in drain(real)] == [beat_task_id("sync", due)]


def test_service_loop_runs_on_the_fake_clock_and_releases_the_lease(
    memory_url: str, new_store: StoreFactory
) -> None:
    app = make_app(memory_url, {"sync": {"task": "tasks.sync", "schedule": 60.0}})
    clock = FakeClock(DAY_START)
    store = new_store()
    service: Service

    def fake_sleep(seconds: float) -> None:
        clock.now += timedelta(seconds=seconds)
        if clock.now > DAY_START + timedelta(hours=1):
            service.stop()

    service = Service(app, store=store, clock=clock, sleep=fake_sleep, lease_ttl=30)
    service.start()

    assert len(drain(app)) == 60
    assert store.lease_holder(clock.now) is None


def test_list_shows_entries_with_next_run(memory_url: str, tmp_path: Path) -> None:
    app = make_app(
        memory_url,
        {
            "nightly": {"task": "tasks.backup", "schedule": crontab(hour=1, minute=30)},
            "sync": {"task": "tasks.sync", "schedule": 600.0},
        },
    )
    schedule_file = str(tmp_path / "celerybeat-schedule")
    clock = FakeClock(DAY_START)
    store = SQLiteBeatStore(f"{schedule_file}.sqlite3")
    Scheduler(app, store, clock=clock).tick()
    infos = Scheduler(app, store, clock=clock).entry_infos()
    store.close()

    assert [(info.name, info.next_run.astimezone(timezone.utc)) for info in infos] == [
        ("sync", DAY_START + timedelta(minutes=10)),
        ("nightly", datetime(2024, 10, 27, 0, 30, tzinfo=timezone.utc)),
    ]
    table = format_entries(infos)
    assert table.splitlines()[0].split() == [
        "NAME",
        "TASK",
        "SCHEDULE",
        "LAST",
        "DUE",
        "NEXT",
        "RUN",
    ]
    assert "<freq: 10 minutes>" in table
    assert "<crontab: 30 1 * * * (m/h/dM/MY/d)>" in table
    printed: list[str] = []
    assert beat_command(app, schedule_file, list_only=True, echo=printed.append) == 0
    assert [line.split()[0] for line in printed[0].splitlines()] == ["NAME", "sync", "nightly"]
