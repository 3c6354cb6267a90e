"""Beat inside a worker process (``worker -B``): the embedded service on a real clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import wait_for

from taskframe.app import Taskframe
from taskframe.beat.service import EmbeddedService, Service
from taskframe.beat.store import SQLiteBeatStore
from taskframe.exceptions import BrokerConnectionError


def test_embedded_beat_fires_in_a_thread_and_stops_cleanly(memory_url: str, tmp_path: Path) -> None:
    app = Taskframe("embedded", broker=memory_url, set_as_current=False)
    app.conf.beat_schedule = {"tick": {"task": "embedded.tick", "schedule": 0.05}}
    schedule_file = str(tmp_path / "celerybeat-schedule")

    beat = EmbeddedService(app, schedule_filename=schedule_file, lease_ttl=3.0)
    beat.start()
    wait_for(lambda: app.broker.size("celery") >= 3, timeout=10)
    beat.stop()

    assert not beat.is_alive()
    store = SQLiteBeatStore(f"{schedule_file}.sqlite3")
    assert store.lease_holder(datetime.now(timezone.utc)) is None
    assert set(store.states()) == {"tick"}
    store.close()


def test_a_failing_store_pauses_beat_instead_of_stopping_it(
    memory_url: str, tmp_path: Path
) -> None:
    class FlakyStore(SQLiteBeatStore):
        """A real store whose server is "down" for the first three lease attempts."""

        failures = 3

        def acquire_lease(self, owner: str, now: datetime, ttl: float) -> bool:
            if self.failures:
                self.failures -= 1
                raise BrokerConnectionError("store is down")
            return super().acquire_lease(owner, now, ttl)

    app = Taskframe("flaky", broker=memory_url, set_as_current=False)
    app.conf.beat_schedule = {"tick": {"task": "flaky.tick", "schedule": 60.0}}
    store = FlakyStore(tmp_path / "beat.sqlite3")
    start = datetime(2024, 5, 1, tzinfo=timezone.utc)
    now = [start]
    sleeps: list[float] = []
    service: Service

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += timedelta(seconds=seconds)
        if now[0] > start + timedelta(minutes=3, seconds=10):
            service.stop()

    service = Service(app, store=store, clock=lambda: now[0], sleep=fake_sleep, retry_delay=2)
    service.start()

    assert sleeps[:3] == [2, 2, 2]
    # The entry is first seen when the store comes back (6 s), then fires each minute after
    assert app.broker.size("celery") == 3
    store.close()
