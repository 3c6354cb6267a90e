"""Beat entries from Celery's ``beat_schedule``, ``add_periodic_task`` and on_after_configure."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from taskframe.app import Taskframe
from taskframe.beat.entry import ScheduleEntry, add_periodic_task, entries_from_config
from taskframe.exceptions import ImproperlyConfigured
from taskframe.schedules import crontab, schedule


@pytest.fixture
def app(memory_url: str) -> Taskframe:
    return Taskframe("proj", broker=memory_url, set_as_current=False)


def test_entry_from_celery_beat_schedule_item(app: Taskframe) -> None:
    entry = ScheduleEntry.from_config(
        "every-30s",
        {
            "task": "proj.tasks.add",
            "schedule": 30.0,
            "args": [2, 2],
            "kwargs": {"z": 1},
            "options": {"queue": "fast"},
            "relative": True,
        },
        app=app,
    )
    assert entry.task == "proj.tasks.add"
    assert entry.schedule == schedule(timedelta(seconds=30), relative=True)
    assert (entry.args, entry.kwargs, entry.options) == ((2, 2), {"z": 1}, {"queue": "fast"})


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"schedule": 10}, "needs a 'task'"),
        ({"task": "t"}, "needs a 'schedule'"),
        ({"task": "t", "schedule": "hourly"}, "a schedule must be"),
        ({"task": "t", "schedule": 10, "arg": [1]}, "unknown keys"),
    ],
)
def test_bad_items_name_themselves(item: dict[str, object], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        ScheduleEntry.from_config("broken", item)


def test_a_broken_entry_is_logged_and_the_rest_kept(
    app: Taskframe, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.beat_schedule = {
        "good": {"task": "t", "schedule": crontab(minute=0)},
        "bad": {"task": "t"},
    }
    with caplog.at_level(logging.ERROR, logger="taskframe.beat"):
        entries = entries_from_config(app)
    assert list(entries) == ["good"]
    assert entries["good"].schedule.app is app
    assert "skipping entry 'bad'" in caplog.text


def test_add_periodic_task_with_a_signature(app: Taskframe) -> None:
    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    key = add_periodic_task(app, 10.0, add.s(2, 2), name="add every 10", queue="fast")
    assert key == "add every 10"
    assert app.conf.beat_schedule[key] == {
        "task": "proj.add",
        "schedule": 10.0,
        "args": (2, 2),
        "kwargs": {},
        "options": {"queue": "fast"},
    }
    unnamed = add_periodic_task(app, crontab(), {"task": "proj.add", "args": [1]}, args=(0,))
    assert unnamed == "proj.add(0, 1)"
    assert set(entries_from_config(app)) == {"add every 10", "proj.add(0, 1)"}


def test_on_after_configure_pattern(app: Taskframe) -> None:
    @app.task(name="proj.ping")
    def ping() -> str:
        return "pong"

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Taskframe, **kwargs: object) -> None:
        sender.add_periodic_task(crontab(hour=7, minute=30), ping.s(), name="morning ping")

    app.finalize()

    entries = entries_from_config(app)
    assert list(entries) == ["morning ping"]
    assert entries["morning ping"].schedule == crontab(hour=7, minute=30)
