"""examples/periodic: beat's service loop and a worker run a simulated week on a fake clock."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import pytest

from taskframe.beat.service import Service
from taskframe.beat.store import SQLiteBeatStore

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "periodic" / "tasks.py"
LONDON = ZoneInfo("Europe/London")
# Monday to Monday; clocks go forward on Sunday 2024-03-31, so the week is 167 hours long.
WEEK_START = datetime(2024, 3, 25, tzinfo=LONDON).astimezone(timezone.utc)
WEEK_END = datetime(2024, 4, 1, tzinfo=LONDON).astimezone(timezone.utc)


@pytest.fixture
def example(memory_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("TASKFRAME_BROKER_URL", memory_url)
    spec = importlib.util.spec_from_file_location("periodic_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_a_week_of_beat_and_worker(example: ModuleType, tmp_path: Path) -> None:
    app = example.app
    now = [WEEK_START]
    results: Counter[object] = Counter()
    report_times: list[datetime] = []

    def work() -> None:
        """The worker: run every task beat sent so far."""
        for delivery in app.broker.receive(["celery"], 1000, 0):
            args, kwargs, _ = json.loads(delivery.message.body)
            results[app.tasks[delivery.message.headers["task"]].run(*args, **kwargs)] += 1
            if delivery.message.headers["task"] == "periodic.send_report":
                report_times.append(now[0].astimezone(LONDON))
            delivery.ack()

    service: Service

    def fake_sleep(seconds: float) -> None:
        work()
        now[0] += timedelta(seconds=seconds)
        if now[0] > WEEK_END:
            service.stop()

    store = SQLiteBeatStore(tmp_path / "celerybeat-schedule.sqlite3")
    # A long lease: one beat alone needs no frequent renewals, and the test runs fewer ticks.
    service = Service(app, store=store, clock=lambda: now[0], sleep=fake_sleep, lease_ttl=900)
    service.start()
    store.close()

    assert results[42] == 167 * 12  # refresh-cache: every 5 minutes of real time
    assert [(moment.strftime("%a %H:%M")) for moment in report_times] == [
        f"{day} 07:30" for day in ("Mon", "Tue", "Wed", "Thu", "Fri")
    ]
    assert sum(results.values()) == 167 * 12 + 5
