"""Result backend in a SQLite file, usually the same file as the sqlite:// broker.

URL and options are the broker's (see :mod:`taskframe.brokers.sqlite`): ``sqlite:///path``,
``busy_timeout`` and ``synchronous``.

Tables:

* ``tf_results`` (task_id, payload, expires_at) and ``tf_groups`` (group_id, payload,
  expires_at); ``expires_at`` NULL means never.
* ``tf_chords`` (group_id, size, completed, expires_at) and ``tf_chord_parts`` (group_id, idx,
  part). A part is stored and the chord completed in one IMMEDIATE transaction, so across every
  process exactly one caller of ``chord_part_done`` gets the parts.

``expires`` is a time to live in seconds; None or 0 keeps the value until deleted. Expired rows
are never returned, and every hundredth write of an instance prunes them. ``wait`` reads the
result again only when the file changed (``PRAGMA data_version``) or on a 1-50 ms backoff, so a
result is seen within a few milliseconds of being stored at a very small cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from taskframe.brokers.base import ResultBackend
from taskframe.brokers.sqlite import Database, database_path
from taskframe.exceptions import ChordError

__all__ = ["SQLiteBackend"]

BACKEND_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tf_results (
        task_id TEXT PRIMARY KEY, payload BLOB NOT NULL, expires_at REAL)""",
    "CREATE INDEX IF NOT EXISTS tf_results_expiry ON tf_results (expires_at)",
    """CREATE TABLE IF NOT EXISTS tf_groups (
        group_id TEXT PRIMARY KEY, payload BLOB NOT NULL, expires_at REAL)""",
    """CREATE TABLE IF NOT EXISTS tf_chords (
        group_id TEXT PRIMARY KEY, size INTEGER NOT NULL, completed INTEGER NOT NULL,
        expires_at REAL)""",
    """CREATE TABLE IF NOT EXISTS tf_chord_parts (
        group_id TEXT NOT NULL, idx INTEGER NOT NULL, part BLOB NOT NULL,
        PRIMARY KEY (group_id, idx))""",
)
PRUNE_EVERY = 100
LOOKUP_CHUNK = 500


def _expires_at(expires: float | None) -> float | None:
    return time.time() + expires if expires is not None and expires > 0 else None


class SQLiteBackend(ResultBackend):
    """Task results, groups and chord counters in a SQLite file."""

    scheme = "sqlite"

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options)
        self.path = database_path(url)
        self._db = Database(self.path, BACKEND_SCHEMA, self.options)
        self._writes = 0

    def _put(
        self, table: str, key_column: str, key: str, payload: bytes, expires: float | None
    ) -> None:
        with self._db.transaction() as connection:
            connection.execute(
                f"INSERT OR REPLACE INTO {table} ({key_column}, payload, expires_at) "
                "VALUES (?, ?, ?)",
                (key, bytes(payload), _expires_at(expires)),
            )
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                self._prune(connection.execute)

    @staticmethod
    def _prune(execute: Callable[..., Any]) -> None:
        now = time.time()
        execute("DELETE FROM tf_results WHERE expires_at <= ?", (now,))
        execute("DELETE FROM tf_groups WHERE expires_at <= ?", (now,))
        execute(
            "DELETE FROM tf_chord_parts WHERE group_id IN "
            "(SELECT group_id FROM tf_chords WHERE expires_at <= ?)",
            (now,),
        )
        execute("DELETE FROM tf_chords WHERE expires_at <= ?", (now,))

    def _read(self, table: str, key_column: str, key: str) -> bytes | None:
        rows = self._db.query(
            f"SELECT payload FROM {table} WHERE {key_column} = ? "
            "AND (expires_at IS NULL OR expires_at > ?)",
            (key, time.time()),
        )
        return bytes(rows[0][0]) if rows else None

    def set(self, task_id: str, payload: bytes, *, expires: float | None) -> None:
        self._put("tf_results", "task_id", task_id, payload, expires)

    def get(self, task_id: str) -> bytes | None:
        return self._read("tf_results", "task_id", task_id)

    def delete(self, task_id: str) -> None:
        with self._db.transaction() as connection:
            connection.execute("DELETE FROM tf_results WHERE task_id = ?", (task_id,))

    def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        now = time.time()
        for start in range(0, len(task_ids), LOOKUP_CHUNK):
            chunk = list(task_ids[start : start + LOOKUP_CHUNK])
            rows = self._db.query(
                f"SELECT task_id, payload FROM tf_results WHERE task_id IN "
                f"({', '.join('?' * len(chunk))}) AND (expires_at IS NULL OR expires_at > ?)",
                (*chunk, now),
            )
            found.update((task_id, bytes(payload)) for task_id, payload in rows)
        return [found.get(task_id) for task_id in task_ids]

    def wait(
        self,
        task_id: str,
        timeout: float | None,
        is_ready: Callable[[bytes], bool],
        interval: float = 0.01,
    ) -> bytes | None:
        def ready_payload() -> bytes | None:
            payload = self.get(task_id)
            return payload if payload is not None and is_ready(payload) else None

        return self._db.wait_for(ready_payload, timeout)

    def set_group(self, group_id: str, payload: bytes, *, expires: float | None) -> None:
        self._put("tf_groups", "group_id", group_id, payload, expires)

    def get_group(self, group_id: str) -> bytes | None:
        return self._read("tf_groups", "group_id", group_id)

    def delete_group(self, group_id: str) -> None:
        with self._db.transaction() as connection:
            connection.execute("DELETE FROM tf_groups WHERE group_id = ?", (group_id,))

    def chord_start(self, group_id: str, size: int, *, expires: float | None) -> None:
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO tf_chords (group_id, size, completed, expires_at) "
                "VALUES (?, ?, 0, ?)",
                (group_id, size, _expires_at(expires)),
            )
            connection.execute("DELETE FROM tf_chord_parts WHERE group_id = ?", (group_id,))

    def chord_part_done(
        self, group_id: str, index: int, part: bytes, *, expires: float | None
    ) -> list[bytes] | None:
        with self._db.transaction() as connection:
            chord = connection.execute(
                "SELECT size, completed FROM tf_chords WHERE group_id = ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (group_id, time.time()),
            ).fetchall()
            if not chord:
                raise ChordError(f"chord {group_id} is unknown: never started, or it expired")
            size, completed = chord[0]
            inserted = connection.execute(
                "INSERT OR IGNORE INTO tf_chord_parts (group_id, idx, part) VALUES (?, ?, ?)",
                (group_id, index, bytes(part)),
            ).rowcount
            if completed or not inserted:
                return None
            if expires is not None:
                connection.execute(
                    "UPDATE tf_chords SET expires_at = ? WHERE group_id = ?",
                    (_expires_at(expires), group_id),
                )
            stored = connection.execute(
                "SELECT COUNT(*) FROM tf_chord_parts WHERE group_id = ?", (group_id,)
            ).fetchall()[0][0]
            if stored < size:
                return None
            connection.execute("UPDATE tf_chords SET completed = 1 WHERE group_id = ?", (group_id,))
            parts = connection.execute(
                "SELECT part FROM tf_chord_parts WHERE group_id = ? ORDER BY idx", (group_id,)
            ).fetchall()
            return [bytes(row[0]) for row in parts]

    def chord_adjust(self, group_id: str, delta: int) -> None:
        with self._db.transaction() as connection:
            changed = connection.execute(
                "UPDATE tf_chords SET size = size + ? WHERE group_id = ?", (delta, group_id)
            ).rowcount
            if not changed:
                raise ChordError(f"chord {group_id} is unknown: never started, or it expired")

    def close(self) -> None:
        self._db.close()
