"""Beat's persistent state and lease lock: the contract, the SQLite store, and the choice.

What a store keeps, per entry: the last *due time* fired (not the wall time it was sent) and the
fingerprint of the schedule that produced it. Two primitives make beat safe in several places:

- a **lease** (``acquire_lease``): one owner at a time, renewed by its holder on each tick and
  free once ``now`` passes its expiry, so a dead holder is replaced after at most ``ttl``;
- a **claim** (``claim``): "record ``due`` for this entry if it is later than the stored one",
  atomic in the store, so one (entry, due time) is fired by exactly one process even if two
  believe they hold the lease at the same moment.

Times come from the caller's clock (so a fake clock drives them in tests); processes on
different hosts need clocks in sync to well under the lease ttl. Store errors are raised as
``BrokerConnectionError`` (cannot reach / open) or ``BrokerError`` (anything else).

``SQLiteBeatStore``: a file (WAL mode), shared by the beat processes of one host.
Tables: ``beat_entries(name PRIMARY KEY, last_due_us, fingerprint)`` and
``beat_lease(id = 1, owner, expires_us)``; times are integer microseconds since the epoch (UTC).

``open_store(app, schedule_filename)`` picks the store: an explicit ``schedule_filename`` →
SQLite at ``<schedule_filename>.sqlite3`` (as is when it ends in ``.sqlite3`` or ``.db``);
else a ``redis://``/``rediss://`` broker → Redis (``taskframe.beat.redis_store``);
else SQLite at ``<beat_schedule_filename>.sqlite3``.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from taskframe.exceptions import BrokerConnectionError, BrokerError

__all__ = ["BeatStore", "EntryState", "SQLiteBeatStore", "from_us", "open_store", "to_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch; naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


@dataclass(frozen=True)
class EntryState:
    """What the store remembers of one entry."""

    last_due: datetime
    fingerprint: str


class BeatStore(ABC):
    """Persistent beat state shared by every beat process of one schedule."""

    @abstractmethod
    def states(self) -> dict[str, EntryState]:
        """Every entry's stored state."""

    @abstractmethod
    def ensure_entry(self, name: str, fingerprint: str, now: datetime) -> EntryState:
        """The entry's state; a new entry, or one whose fingerprint changed, starts at ``now``."""

    @abstractmethod
    def claim(self, name: str, due: datetime) -> bool:
        """Atomically record ``due`` if it is later than the stored due time; True if recorded."""

    @abstractmethod
    def unclaim(self, name: str, due: datetime, previous: datetime) -> None:
        """Undo a claim whose send failed: back to ``previous`` if ``due`` is still stored."""

    @abstractmethod
    def remove_except(self, names: Collection[str]) -> list[str]:
        """Forget entries not in ``names`` (removed from the schedule); returns those forgotten."""

    @abstractmethod
    def acquire_lease(self, owner: str, now: datetime, ttl: float) -> bool:
        """Take or renew the lease until ``now + ttl``; False while another owner holds it."""

    @abstractmethod
    def release_lease(self, owner: str) -> None:
        """Give the lease up at once if ``owner`` holds it."""

    @abstractmethod
    def lease_holder(self, now: datetime) -> str | None:
        """The owner of an unexpired lease, if any."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's connections."""


class SQLiteBeatStore(BeatStore):
    """Beat state in one SQLite file (module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        with self._errors():
            self._db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS beat_entries (name TEXT PRIMARY KEY,"
                " last_due_us INTEGER NOT NULL, fingerprint TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS beat_lease (id INTEGER PRIMARY KEY CHECK (id = 1),"
                " owner TEXT NOT NULL, expires_us INTEGER NOT NULL)"
            )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "unable to open" in str(exc):
                raise BrokerConnectionError(
                    f"beat store: cannot open SQLite file {self.path!r}: {exc}"
                ) from exc
            raise BrokerError(f"beat store {self.path!r}: {exc}") from exc
        except sqlite3.Error as exc:
            raise BrokerError(f"beat store {self.path!r}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def states(self) -> dict[str, EntryState]:
        with self._lock, self._errors():
            rows = self._db.execute(
                "SELECT name, last_due_us, fingerprint FROM beat_entries"
            ).fetchall()
        return {name: EntryState(from_us(due), fingerprint) for name, due, fingerprint in rows}

    def ensure_entry(self, name: str, fingerprint: str, now: datetime) -> EntryState:
        with self._transaction() as db:
            row = db.execute(
                "SELECT last_due_us, fingerprint FROM beat_entries WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[1] == fingerprint:
                return EntryState(from_us(row[0]), fingerprint)
            db.execute(
                "INSERT OR REPLACE INTO beat_entries VALUES (?, ?, ?)",
                (name, to_us(now), fingerprint),
            )
        return EntryState(now, fingerprint)

    def claim(self, name: str, due: datetime) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE beat_entries SET last_due_us = ? WHERE name = ? AND last_due_us < ?",
                (to_us(due), name, to_us(due)),
            )
            return cursor.rowcount == 1

    def unclaim(self, name: str, due: datetime, previous: datetime) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE beat_entries SET last_due_us = ? WHERE name = ? AND last_due_us = ?",
                (to_us(previous), name, to_us(due)),
            )

    def remove_except(self, names: Collection[str]) -> list[str]:
        keep = set(names)
        with self._transaction() as db:
            stored = [row[0] for row in db.execute("SELECT name FROM beat_entries")]
            gone = [name for name in stored if name not in keep]
            db.executemany("DELETE FROM beat_entries WHERE name = ?", [(n,) for n in gone])
        return gone

    def acquire_lease(self, owner: str, now: datetime, ttl: float) -> bool:
        now_us = to_us(now)
        with self._transaction() as db:
            row = db.execute("SELECT owner, expires_us FROM beat_lease WHERE id = 1").fetchone()
            if row is not None and row[0] != owner and row[1] > now_us:
                return False
            db.execute(
                "INSERT OR REPLACE INTO beat_lease VALUES (1, ?, ?)",
                (owner, now_us + int(ttl * 1_000_000)),
            )
        return True

    def release_lease(self, owner: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM beat_lease WHERE id = 1 AND owner = ?", (owner,))

    def lease_holder(self, now: datetime) -> str | None:
        with self._lock, self._errors():
            row = self._db.execute(
                "SELECT owner FROM beat_lease WHERE id = 1 AND expires_us > ?", (to_us(now),)
            ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(app: Any, schedule_filename: str | None = None) -> BeatStore:
    """The store for ``app`` (module docstring says which)."""
    if schedule_filename:
        return SQLiteBeatStore(_sqlite_path(schedule_filename))
    broker_url = str(getattr(app.conf, "broker_url", None) or "")
    if broker_url.startswith(("redis://", "rediss://")):
        from taskframe.beat.redis_store import RedisBeatStore

        return RedisBeatStore(broker_url)
    filename = getattr(app.conf, "beat_schedule_filename", None) or "celerybeat-schedule"
    return SQLiteBeatStore(_sqlite_path(filename))


def _sqlite_path(filename: str) -> str:
    return filename if filename.endswith((".sqlite3", ".db")) else f"{filename}.sqlite3"
