"""Two real beat processes on one store: one fires, the other takes over after a kill -9,
and no (entry, due time) is ever sent twice. Uses real time, bounded by deadlines only."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import wait_for

from taskframe.beat.redis_store import RedisBeatStore
from taskframe.beat.store import BeatStore, SQLiteBeatStore

# A beat process whose "broker" is a table: each send is one row (task id, pid).
BEAT_SCRIPT = textwrap.dedent(
    """
    import os, signal, sqlite3, sys

    from taskframe.beat.redis_store import RedisBeatStore
    from taskframe.beat.service import Service
    from taskframe.beat.store import SQLiteBeatStore

    kind, location, sink_path = sys.argv[1:4]


    class Conf:
        beat_schedule = {"tick": {"task": "ha.tick", "schedule": 0.2}}
        timezone = None


    class SinkApp:
        conf = Conf()

        def __init__(self):
            self.sink = sqlite3.connect(sink_path, timeout=30, isolation_level=None)

        def send_task(self, name, args=None, kwargs=None, task_id=None, **options):
            self.sink.execute("INSERT INTO sends VALUES (?, ?)", (task_id, os.getpid()))


    if kind == "sqlite":
        store = SQLiteBeatStore(location)
    else:
        store = RedisBeatStore(location, prefix="ha-test:")
    service = Service(SinkApp(), store=store, lease_ttl=1.0, max_interval=1.0, retry_delay=0.2)
    signal.signal(signal.SIGTERM, lambda signum, frame: service.stop())
    service.start()
    """
)


@pytest.fixture(params=["sqlite", "redis"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "beat.sqlite3")
    return "redis", str(request.getfixturevalue("redis_url"))


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "sink.sqlite3", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE sends (task_id TEXT NOT NULL, pid INTEGER NOT NULL)")
    yield connection
    connection.close()


def open_store(kind: str, location: str) -> BeatStore:
    if kind == "sqlite":
        return SQLiteBeatStore(location)
    return RedisBeatStore(location, prefix="ha-test:")


def senders(sink: sqlite3.Connection) -> list[int]:
    return [row[0] for row in sink.execute("SELECT pid FROM sends ORDER BY rowid")]


def test_kill_9_of_the_leader_hands_over_without_double_fire(
    store_location: tuple[str, str], sink: sqlite3.Connection, tmp_path: Path
) -> None:
    kind, location = store_location
    script = tmp_path / "beat_process.py"
    script.write_text(BEAT_SCRIPT)
    sink_path = str(tmp_path / "sink.sqlite3")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    processes = {
        process.pid: process
        for process in (
            subprocess.Popen([sys.executable, str(script), kind, location, sink_path], env=env)
            for _ in range(2)
        )
    }
    store = open_store(kind, location)
    try:
        # Given two beats, one of them firing every 0.2 s
        wait_for(lambda: len(senders(sink)) >= 5, timeout=20)
        holder = store.lease_holder(datetime.now(timezone.utc))
        assert holder is not None
        leader = int(holder.split(":")[1])
        assert set(senders(sink)) == {leader}

        # When the leader is killed without a chance to release its lease
        processes[leader].send_signal(signal.SIGKILL)
        processes[leader].wait(timeout=10)
        fired_before = len(senders(sink))

        # Then the other takes over within the lease ttl (plus its standby interval)
        (survivor,) = set(processes) - {leader}
        wait_for(lambda: senders(sink)[fired_before:].count(survivor) >= 5, timeout=10)
        processes[survivor].send_signal(signal.SIGTERM)
        assert processes[survivor].wait(timeout=10) == 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

        released = store.lease_holder(datetime.now(timezone.utc)) is None
        store.close()

    task_ids = [row[0] for row in sink.execute("SELECT task_id FROM sends")]
    assert len(task_ids) == len(set(task_ids))
    assert released  # the survivor gave the lease up on SIGTERM
