"""Beat stores (SQLite file, Redis): entry state, idempotent claims, the lease, errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import free_port

from taskframe.beat.redis_store import RedisBeatStore
from taskframe.beat.store import BeatStore, SQLiteBeatStore, open_store
from taskframe.exceptions import BrokerConnectionError

T0 = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def seconds(value: float) -> datetime:
    return T0 + timedelta(seconds=value)


@pytest.fixture(params=["sqlite", "redis"])
def store_pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[BeatStore, BeatStore]]:
    """Two handles on one store, as two beat processes would have."""
    if request.param == "sqlite":
        path = tmp_path / "beat.sqlite3"
        first: BeatStore = SQLiteBeatStore(path)
        second: BeatStore = SQLiteBeatStore(path)
    else:
        url = request.getfixturevalue("redis_url")
        first, second = RedisBeatStore(url), RedisBeatStore(url)
    yield first, second
    first.close()
    second.close()


def test_new_entry_starts_now_and_keeps_its_state(store_pair: tuple[BeatStore, BeatStore]) -> None:
    first, second = store_pair
    state = first.ensure_entry("cleanup", "every 10s", seconds(0))
    assert state.last_due == seconds(0)
    # A second process sees the same start, not its own now
    assert second.ensure_entry("cleanup", "every 10s", seconds(5)).last_due == seconds(0)
    assert second.states()["cleanup"].fingerprint == "every 10s"


def test_changed_schedule_starts_again(store_pair: tuple[BeatStore, BeatStore]) -> None:
    first, _ = store_pair
    first.ensure_entry("report", "old", seconds(0))
    assert first.claim("report", seconds(10))
    state = first.ensure_entry("report", "new", seconds(30))
    assert (state.last_due, state.fingerprint) == (seconds(30), "new")


def test_a_due_time_is_claimed_once(store_pair: tuple[BeatStore, BeatStore]) -> None:
    first, second = store_pair
    first.ensure_entry("cleanup", "fp", seconds(0))
    assert first.claim("cleanup", seconds(10)) is True
    assert second.claim("cleanup", seconds(10)) is False
    assert first.claim("cleanup", seconds(10)) is False
    # An older due time cannot be fired after a newer one
    assert second.claim("cleanup", seconds(5)) is False
    assert second.claim("cleanup", seconds(20)) is True
    assert first.states()["cleanup"].last_due == seconds(20)


def test_unclaim_undoes_only_its_own_claim(store_pair: tuple[BeatStore, BeatStore]) -> None:
    first, second = store_pair
    first.ensure_entry("cleanup", "fp", seconds(0))
    assert first.claim("cleanup", seconds(10))
    first.unclaim("cleanup", seconds(10), seconds(0))
    assert second.states()["cleanup"].last_due == seconds(0)
    assert second.claim("cleanup", seconds(10))
    assert second.claim("cleanup", seconds(20))
    first.unclaim("cleanup", seconds(10), seconds(0))  # stale: 20 is stored now
    assert first.states()["cleanup"].last_due == seconds(20)


def test_remove_except_forgets_removed_entries(store_pair: tuple[BeatStore, BeatStore]) -> None:
    first, second = store_pair
    for name in ("a", "b", "c"):
        first.ensure_entry(name, "fp", seconds(0))
    assert sorted(second.remove_except(["b"])) == ["a", "c"]
    assert list(first.states()) == ["b"]


def test_lease_has_one_holder_until_it_expires(store_pair: tuple[BeatStore, BeatStore]) -> None:
    first, second = store_pair
    assert first.acquire_lease("beat-1", seconds(0), ttl=30)
    assert not second.acquire_lease("beat-2", seconds(1), ttl=30)
    assert first.acquire_lease("beat-1", seconds(20), ttl=30)  # renewed until 50
    assert not second.acquire_lease("beat-2", seconds(49), ttl=30)
    assert second.lease_holder(seconds(49)) == "beat-1"
    # The holder dies: nobody renews, and after the expiry the other takes over
    assert second.lease_holder(seconds(50)) is None
    assert second.acquire_lease("beat-2", seconds(50), ttl=30)
    assert not first.acquire_lease("beat-1", seconds(51), ttl=30)


def test_released_lease_is_free_at_once(store_pair: tuple[BeatStore, BeatStore]) -> None:
    first, second = store_pair
    assert first.acquire_lease("beat-1", seconds(0), ttl=30)
    second.release_lease("beat-2")  # not the holder: no effect
    assert not second.acquire_lease("beat-2", seconds(1), ttl=30)
    first.release_lease("beat-1")
    assert second.acquire_lease("beat-2", seconds(1), ttl=30)


def test_open_store_chooses_by_file_then_broker(tmp_path: Path, redis_url: str) -> None:
    class Conf:
        broker_url = redis_url
        beat_schedule_filename = str(tmp_path / "celerybeat-schedule")

    class App:
        conf = Conf()

    chosen = open_store(App())
    assert isinstance(chosen, RedisBeatStore)
    chosen.close()
    explicit = open_store(App(), str(tmp_path / "beat-state"))
    assert isinstance(explicit, SQLiteBeatStore)
    assert explicit.path == str(tmp_path / "beat-state.sqlite3")
    explicit.close()
    Conf.broker_url = "sqlite:///tasks.sqlite3"
    default = open_store(App())
    assert isinstance(default, SQLiteBeatStore)
    assert default.path == str(tmp_path / "celerybeat-schedule.sqlite3")
    default.close()


def test_unreachable_stores_raise_taskframe_errors(tmp_path: Path) -> None:
    with pytest.raises(BrokerConnectionError, match="cannot open"):
        SQLiteBeatStore(tmp_path / "missing-dir" / "beat.sqlite3")
    store = RedisBeatStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BrokerConnectionError, match="cannot reach Redis"):
        store.states()
    store.close()
