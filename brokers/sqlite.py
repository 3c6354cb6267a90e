"""Embedded broker in one SQLite file: taskframe's default store.

URL: ``sqlite:///taskframe.sqlite3`` (relative to the working directory at construction) or
``sqlite:////abs/path.sqlite3``. The broker and the result backend may share one file.

Capabilities: priorities (0-9, higher first, FIFO within a priority), durable delay without
limit, visibility timeout with redelivery and ``extend``, broadcast, rate limits shared by every
process on the machine, persistent across restarts.

Transport options (broker) and options (backend):

* ``visibility_timeout`` (float seconds, default 3600): how long a received message stays
  invisible before another consumer gets it again (so a consumer that died loses nothing).
* ``busy_timeout`` (float seconds, default 30): how long a write waits for the file's lock.
* ``synchronous`` (``"NORMAL"`` or ``"FULL"``, default ``"NORMAL"``): with NORMAL a committed
  message survives a crash of any process; FULL also survives a power cut, at an fsync a write.

Many producer and consumer processes may use one file: it runs in WAL mode, every write is a
short ``BEGIN IMMEDIATE`` transaction (a single publish is one autocommit ``INSERT``, atomic
by itself), and each process and thread opens its own connection
(a forked child notices the new pid and reconnects). A waiting ``receive`` watches
``PRAGMA data_version`` every 2 ms, so another process's publish is seen within a few
milliseconds without taking a lock (measured: a producer -> worker -> result round trip of
about 3.5 ms; an idle waiting consumer costs about 2% of a core); delays and visibility
deadlines are checked on a backoff from 1 ms to 50 ms.

Tables (all prefixed ``tf_`` so the file can be shared with an application):

* ``tf_messages``: id, queue, priority, state (0 ready, 1 delayed, 2 delivered), visible_at
  (delayed: the not-before time; delivered: when it becomes visible again), deliveries (also the
  receipt that keeps a stale consumer's ack from touching a later delivery), headers and
  properties (JSON), body (BLOB), content_type, content_encoding.
* ``tf_dead_letters``: id, queue, reason, the message's columns, failed_at.
* ``tf_broadcasts``: id, channel, payload, created_at; rows older than a minute are pruned.
* ``tf_rate_limits``: key, tokens, updated_at (one token bucket per key).

``purge`` drops a queue's waiting messages, delayed ones included; ``size`` counts them.
The result backend on the same URL lives in :mod:`taskframe.brokers.sqlite_backend`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

from taskframe.brokers.base import (
    Broker,
    Capabilities,
    DeadLetter,
    Delivery,
    Message,
    Subscription,
)
from taskframe.brokers.memory import clamp_priority, fair_order
from taskframe.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
)

__all__ = ["Database", "SQLiteBroker", "database_path", "translate_errors"]

T = TypeVar("T")

DEFAULT_VISIBILITY_TIMEOUT = 3600.0
DEFAULT_BUSY_TIMEOUT = 30.0
BROADCAST_RETENTION = 60.0
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
UNUSABLE_FILE_SIGNS = ("unable to open", "readonly", "disk I/O", "not a database")
MESSAGE_COLUMNS = "headers, properties, body, content_type, content_encoding"

BROKER_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tf_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, priority INTEGER NOT NULL,
        state INTEGER NOT NULL, visible_at REAL NOT NULL, deliveries INTEGER NOT NULL DEFAULT 0,
        headers TEXT NOT NULL, properties TEXT NOT NULL, body BLOB NOT NULL,
        content_type TEXT NOT NULL, content_encoding TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS tf_messages_ready ON tf_messages (queue, state, priority DESC)",
    "CREATE INDEX IF NOT EXISTS tf_messages_due ON tf_messages (queue, state, visible_at)",
    """CREATE TABLE IF NOT EXISTS tf_dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, reason TEXT NOT NULL,
        headers TEXT NOT NULL, properties TEXT NOT NULL, body BLOB NOT NULL,
        content_type TEXT NOT NULL, content_encoding TEXT NOT NULL, failed_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS tf_dead_letters_queue ON tf_dead_letters (queue)",
    """CREATE TABLE IF NOT EXISTS tf_broadcasts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, payload BLOB NOT NULL,
        created_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tf_rate_limits (
        key TEXT PRIMARY KEY, tokens REAL NOT NULL, updated_at REAL NOT NULL)""",
)


def database_path(url: str) -> str:
    """The absolute file path of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc or not path or path == ":memory:":
        raise ImproperlyConfigured(
            f"sqlite URL {url!r} does not name a file; use 'sqlite:///relative/path.sqlite3' "
            "or 'sqlite:////absolute/path.sqlite3' (for an in-process store use 'memory://')"
        )
    return os.path.abspath(path)


@contextmanager
def translate_errors(path: str) -> Iterator[None]:
    """Turn sqlite3's exceptions into taskframe's, naming the database file."""
    try:
        yield
    except sqlite3.Error as exc:
        text = str(exc)
        if any(sign in text for sign in UNUSABLE_FILE_SIGNS):
            raise BrokerConnectionError(
                f"cannot use the sqlite database {path}: {text}; check that the path names a "
                "database file in an existing directory this process can write to"
            ) from exc
        raise BrokerError(f"sqlite database {path}: {text}") from exc


class Database:
    """One connection per process and thread to one file, the schema applied once a process."""

    def __init__(self, path: str, schema: Sequence[str], options: dict[str, Any]) -> None:
        self.path = path
        self.schema = schema
        self.busy_timeout = float(options.get("busy_timeout", DEFAULT_BUSY_TIMEOUT))
        self.synchronous = str(options.get("synchronous", "NORMAL")).upper()
        if self.synchronous not in ("NORMAL", "FULL"):
            raise ImproperlyConfigured(
                f"sqlite option synchronous={self.synchronous!r}; use 'NORMAL' or 'FULL'"
            )
        self._local = threading.local()
        self._lock = threading.Lock()
        # Connections inherited over fork() are kept, never closed: closing one in the child
        # could disturb the parent's locks on the file.
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._schema_pid = 0

    def connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            self._local.connection = self._connect()
            self._local.pid = pid
        connection: sqlite3.Connection = self._local.connection
        return connection

    def _connect(self) -> sqlite3.Connection:
        with translate_errors(self.path):
            connection = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            try:
                connection.execute("PRAGMA journal_mode=WAL").fetchall()
                connection.execute(f"PRAGMA synchronous={self.synchronous}")
                if self._schema_pid != os.getpid():
                    connection.execute("BEGIN IMMEDIATE")
                    for statement in self.schema:
                        connection.execute(statement)
                    connection.execute("COMMIT")
                    self._schema_pid = os.getpid()
            except BaseException:
                connection.close()
                raise
            with self._lock:
                self._connections.append((os.getpid(), connection))
            return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction that takes the file's write lock up front."""
        with translate_errors(self.path):
            connection = self.connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            finally:
                if connection.in_transaction:
                    connection.rollback()

    def write(self, sql: str, parameters: Sequence[Any] = ()) -> None:
        """One statement, committed on its own: a single write needs no BEGIN/COMMIT."""
        with translate_errors(self.path):
            self.connection().execute(sql, parameters)

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """All rows of one read; reading them all ends the implicit read transaction."""
        with translate_errors(self.path):
            return self.connection().execute(sql, parameters).fetchall()

    def data_version(self) -> int:
        """Changes whenever another connection commits to the file."""
        version: int = self.query("PRAGMA data_version")[0][0]
        return version

    def wait_for(self, attempt: Callable[[], T | None], timeout: float | None) -> T | None:
        """``attempt()`` now, then after every change to the file and on a 1-50 ms backoff,
        until it returns something or ``timeout`` seconds pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        version = self.data_version()
        interval = next_attempt = 0.0
        while True:
            now = time.monotonic()
            if now >= next_attempt:
                result = attempt()
                if result is not None:
                    return result
                interval = min(max(interval * 2, 0.001), 0.05)
                next_attempt = time.monotonic() + interval
            if deadline is not None and now >= deadline:
                return None
            until = next_attempt if deadline is None else min(next_attempt, deadline)
            time.sleep(max(0.0, min(until - now, 0.002)))
            current = self.data_version()
            if current != version:
                version, next_attempt = current, 0.0

    def close(self) -> None:
        pid = os.getpid()
        with self._lock:
            mine = [connection for owner, connection in self._connections if owner == pid]
            self._connections = [item for item in self._connections if item[0] != pid]
        for connection in mine:
            connection.close()
        self._local = threading.local()


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def _message_row(message: Message) -> tuple[str, str, bytes, str, str]:
    return (
        json.dumps(message.headers, separators=(",", ":")),
        json.dumps(message.properties, separators=(",", ":")),
        bytes(message.body),
        message.content_type,
        message.content_encoding,
    )


_INSERT = (
    "INSERT INTO tf_messages (queue, priority, state, visible_at, "
    f"{MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _publish_row(
    queue: str, message: Message, delay: float, priority: int | None, now: float
) -> tuple[Any, ...]:
    return (
        queue,
        clamp_priority(priority if priority is not None else message.priority),
        1 if delay > 0 else 0,
        now + max(delay, 0.0),
        *_message_row(message),
    )


def _message_of(headers: str, properties: str, body: bytes, ctype: str, cenc: str) -> Message:
    return Message(bytes(body), json.loads(headers), json.loads(properties), ctype, cenc)


class _SQLiteDelivery(Delivery):
    def __init__(
        self, broker: SQLiteBroker, key: tuple[int, int], message: Message, queue: str
    ) -> None:
        super().__init__(message, queue, redelivered=key[1] > 1)
        self.broker = broker
        self.key = key

    def _ack(self) -> None:
        self.broker._finish([self.key], requeue=False)

    def _reject(self, requeue: bool) -> None:
        self.broker._finish([self.key], requeue=requeue)

    def extend(self, seconds: float) -> None:
        with self.broker._db.transaction() as connection:
            connection.execute(
                "UPDATE tf_messages SET visible_at = ? WHERE id = ? AND deliveries = ? "
                "AND state = 2",
                (time.time() + seconds, *self.key),
            )


class _SQLiteSubscription(Subscription):
    def __init__(self, db: Database, channels: Sequence[str]) -> None:
        self._db = db
        self._channels = list(channels)
        self._pending: list[tuple[str, bytes]] = []
        self._last_id: int = db.query("SELECT COALESCE(MAX(id), 0) FROM tf_broadcasts")[0][0]

    def _fetch(self) -> list[tuple[str, bytes]] | None:
        rows = self._db.query(
            f"SELECT id, channel, payload FROM tf_broadcasts WHERE id > ? "
            f"AND channel IN ({_marks(self._channels)}) ORDER BY id LIMIT 100",
            (self._last_id, *self._channels),
        )
        if not rows:
            return None
        self._last_id = rows[-1][0]
        return [(channel, bytes(payload)) for _, channel, payload in rows]

    def get(self, timeout: float) -> tuple[str, bytes] | None:
        if not self._pending:
            self._pending = self._db.wait_for(self._fetch, timeout) or []
        return self._pending.pop(0) if self._pending else None

    def close(self) -> None:
        self._pending = []


class SQLiteBroker(Broker):
    """Queues in a SQLite file shared by every process on the machine."""

    scheme = "sqlite"
    capabilities = Capabilities(shared_rate_limits=True)

    def __init__(self, url: str, *, transport_options: dict[str, Any] | None = None) -> None:
        super().__init__(url, transport_options=transport_options)
        self.path = database_path(url)
        self.visibility_timeout = float(
            self.transport_options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)
        )
        self._db = Database(self.path, BROKER_SCHEMA, self.transport_options)
        self._rotation = 0

    def ensure_connection(self) -> None:
        self._db.connection()

    def publish(
        self, queue: str, message: Message, *, delay: float = 0.0, priority: int | None = None
    ) -> None:
        """One autocommit INSERT: a transaction around a single statement only adds work."""
        self._db.write(_INSERT, _publish_row(queue, message, delay, priority, time.time()))

    def publish_many(self, items: Iterable[tuple[str, Message, float, int | None]]) -> None:
        now = time.time()
        rows = [
            _publish_row(queue, message, delay, priority, now)
            for queue, message, delay, priority in items
        ]
        with self._db.transaction() as connection:
            connection.executemany(_INSERT, rows)

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        queues = list(dict.fromkeys(queues))
        return self._db.wait_for(lambda: self._claim(queues, max_messages), timeout) or []

    def _claim(self, queues: list[str], limit: int) -> list[Delivery] | None:
        """Up to ``limit`` ready messages, marked delivered in one transaction; None if none.

        A lock-free read first, so idle consumers never queue for the write lock."""
        now = time.time()
        marks = _marks(queues)
        ready = self._db.query(
            f"SELECT EXISTS (SELECT 1 FROM tf_messages WHERE queue IN ({marks}) AND state = 0) "
            f"OR EXISTS (SELECT 1 FROM tf_messages WHERE queue IN ({marks}) AND state IN (1, 2) "
            "AND visible_at <= ?)",
            (*queues, *queues, now),
        )
        if not ready[0][0]:
            return None
        with self._db.transaction() as connection:
            connection.execute(
                f"UPDATE tf_messages SET state = 0 WHERE queue IN ({marks}) AND state IN (1, 2) "
                "AND visible_at <= ?",
                (*queues, now),
            )
            heads = [
                connection.execute(
                    "SELECT id, priority FROM tf_messages WHERE queue = ? AND state = 0 "
                    "ORDER BY priority DESC, id LIMIT ?",
                    (queue, limit),
                ).fetchall()
                for queue in queues
            ]
            picks = fair_order([[row[1] for row in rows] for rows in heads], limit, self._rotation)
            self._rotation += 1
            queue_heads = [iter(rows) for rows in heads]
            ids = [next(queue_heads[index])[0] for index in picks]
            if not ids:
                return None
            update = (
                "UPDATE tf_messages SET state = 2, visible_at = ?, deliveries = deliveries + 1 "
                f"WHERE id IN ({_marks(ids)})"
            )
            columns = f"id, queue, deliveries, {MESSAGE_COLUMNS}"
            parameters = (now + self.visibility_timeout, *ids)
            if HAS_RETURNING:
                rows = connection.execute(f"{update} RETURNING {columns}", parameters).fetchall()
            else:
                connection.execute(update, parameters)
                rows = connection.execute(
                    f"SELECT {columns} FROM tf_messages WHERE id IN ({_marks(ids)})", ids
                ).fetchall()
        by_id = {row[0]: row for row in rows}
        deliveries: list[Delivery] = []
        for row_id in ids:
            _, queue, deliveries_count, *message_columns = by_id[row_id]
            message = _message_of(*message_columns)
            deliveries.append(_SQLiteDelivery(self, (row_id, deliveries_count), message, queue))
        return deliveries

    def _finish(self, keys: Sequence[tuple[int, int]], *, requeue: bool) -> None:
        """Delete (ack, drop) or make visible again (requeue) the deliveries with these keys."""
        statement = (
            "UPDATE tf_messages SET state = 0 WHERE id = ? AND deliveries = ? AND state = 2"
            if requeue
            else "DELETE FROM tf_messages WHERE id = ? AND deliveries = ?"
        )
        with self._db.transaction() as connection:
            connection.executemany(statement, keys)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        keys = []
        for delivery in deliveries:
            if isinstance(delivery, _SQLiteDelivery) and delivery.broker.path == self.path:
                if not delivery.settled:
                    delivery.settled = True
                    keys.append(delivery.key)
            else:
                delivery.ack()
        if keys:
            self._finish(keys, requeue=False)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._db.transaction() as connection:
            connection.execute(
                f"INSERT INTO tf_dead_letters (queue, reason, {MESSAGE_COLUMNS}, failed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (delivery.queue, reason, *_message_row(delivery.message), time.time()),
            )
            if (
                isinstance(delivery, _SQLiteDelivery)
                and delivery.broker.path == self.path
                and not delivery.settled
            ):
                delivery.settled = True
                connection.execute(
                    "DELETE FROM tf_messages WHERE id = ? AND deliveries = ?", delivery.key
                )
        delivery.ack()

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        rows = self._db.query(
            f"SELECT id, reason, failed_at, {MESSAGE_COLUMNS} FROM tf_dead_letters "
            "WHERE queue = ? ORDER BY id LIMIT ?",
            (queue, limit),
        )
        return [
            DeadLetter(str(row_id), queue, reason, _message_of(*columns), failed_at)
            for row_id, reason, failed_at, *columns in rows
        ]

    def replay_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        where = "queue = ?"
        parameters: list[object] = [queue]
        if ids is not None:
            numbers = [int(item) for item in ids if item.isdigit()]
            where += f" AND id IN ({_marks(numbers)})"
            parameters += numbers
        now = time.time()
        with self._db.transaction() as connection:
            rows = connection.execute(
                f"SELECT id, {MESSAGE_COLUMNS} FROM tf_dead_letters WHERE {where} ORDER BY id",
                parameters,
            ).fetchall()
            connection.executemany(
                "INSERT INTO tf_messages (queue, priority, state, visible_at, "
                f"{MESSAGE_COLUMNS}) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?)",
                [
                    (queue, clamp_priority(_message_of(*columns).priority), now, *columns)
                    for _, *columns in rows
                ],
            )
            connection.executemany(
                "DELETE FROM tf_dead_letters WHERE id = ?", [(row[0],) for row in rows]
            )
        return len(rows)

    def purge_dead_letters(self, queue: str) -> int:
        with self._db.transaction() as connection:
            return connection.execute(
                "DELETE FROM tf_dead_letters WHERE queue = ?", (queue,)
            ).rowcount

    def purge(self, queue: str) -> int:
        with self._db.transaction() as connection:
            return connection.execute(
                "DELETE FROM tf_messages WHERE queue = ? AND (state IN (0, 1) "
                "OR (state = 2 AND visible_at <= ?))",
                (queue, time.time()),
            ).rowcount

    def size(self, queue: str) -> int:
        rows = self._db.query(
            "SELECT (SELECT COUNT(*) FROM tf_messages WHERE queue = ? AND state IN (0, 1)) + "
            "(SELECT COUNT(*) FROM tf_messages WHERE queue = ? AND state = 2 AND visible_at <= ?)",
            (queue, queue, time.time()),
        )
        count: int = rows[0][0]
        return count

    def broadcast(self, channel: str, payload: bytes) -> None:
        now = time.time()
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT INTO tf_broadcasts (channel, payload, created_at) VALUES (?, ?, ?)",
                (channel, bytes(payload), now),
            )
            connection.execute(
                "DELETE FROM tf_broadcasts WHERE id IN (SELECT id FROM tf_broadcasts "
                "ORDER BY id LIMIT 100) AND created_at < ?",
                (now - BROADCAST_RETENTION,),
            )

    def subscribe(self, channels: Sequence[str]) -> Subscription:
        return _SQLiteSubscription(self._db, channels)

    def acquire_rate_token(self, key: str, rate: float, capacity: float) -> float:
        now = time.time()
        with self._db.transaction() as connection:
            row = connection.execute(
                "SELECT tokens, updated_at FROM tf_rate_limits WHERE key = ?", (key,)
            ).fetchone()
            tokens = capacity if row is None else min(capacity, row[0] + (now - row[1]) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            connection.execute(
                "INSERT OR REPLACE INTO tf_rate_limits (key, tokens, updated_at) VALUES (?, ?, ?)",
                (key, tokens - 1 if wait == 0.0 else tokens, now),
            )
        return wait

    def close(self) -> None:
        self._db.close()
