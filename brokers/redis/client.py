"""The Redis client taskframe's broker, backend and beat store share: commands, pipelines,
transactions, Lua scripts, pub/sub and a connection held for one caller's hot path.

Commands are sent as written (``client.execute("LPUSH", key, value)``) and return the raw
reply (see :mod:`.wire`): no per-command wrapper code between the caller and the socket.
A command whose connection broke is sent again on a new one ``retries`` times (with a short
backoff), as redis-py's retry does; callers that must not run a command twice use a
:class:`HeldConnection` with ``once``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from taskframe.brokers.redis.link import Connection, Pool, Settings, run
from taskframe.brokers.redis.wire import (
    Arg,
    NoScriptError,
    RedisConnectionError,
    ResponseError,
    pack,
)

__all__ = ["Client", "HeldConnection", "Pipeline", "Script", "Subscriber"]

BACKOFF_BASE = 0.05
BACKOFF_CAP = 1.0


def _with_retries(retries: int, attempt: Callable[[], Any]) -> Any:
    failures = 0
    while True:
        try:
            return attempt()
        except RedisConnectionError:
            if failures >= retries:
                raise
            time.sleep(min(BACKOFF_CAP, BACKOFF_BASE * 2**failures))
            failures += 1


class Executor(Protocol):
    def execute(self, *command: Arg) -> Any: ...


class Client:
    """Commands on pooled connections, for one process and any number of threads."""

    def __init__(
        self, settings: Settings, *, retries: int = 1, max_connections: int | None = None
    ) -> None:
        self.settings = settings
        self.retries = retries
        self.pool = Pool(settings, max_connections)

    def execute(self, *command: Arg) -> Any:
        """One command's reply; an error reply raises :class:`ResponseError`."""
        return self.run_many([command], raise_errors=True)[0]

    def run_many(self, commands: Sequence[Sequence[Arg]], *, raise_errors: bool) -> list[Any]:
        """``commands`` in one write on one connection; their replies in order."""

        def attempt() -> list[Any]:
            connection = self.pool.get()
            try:
                replies = run(connection, commands)
            finally:
                self.pool.release(connection)
            if raise_errors:
                for reply in replies:
                    if isinstance(reply, ResponseError):
                        raise reply
            return replies

        result: list[Any] = _with_retries(self.retries, attempt)
        return result

    def pipeline(self, *, transaction: bool = False) -> Pipeline:
        return Pipeline(self, transaction)

    def subscriber(self) -> Subscriber:
        return Subscriber(self.settings)

    def close(self) -> None:
        self.pool.disconnect()


class Pipeline:
    """Commands queued, then sent in one write by :meth:`execute`; with ``transaction``
    wrapped in MULTI/EXEC so they apply all at once."""

    def __init__(self, client: Client, transaction: bool) -> None:
        self.client = client
        self.transaction = transaction
        self.commands: list[tuple[Arg, ...]] = []
        self._scripts: dict[int, tuple[Script, Sequence[Arg], Sequence[Arg]]] = {}

    def add(self, *command: Arg) -> Pipeline:
        self.commands.append(command)
        return self

    def script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Pipeline:
        """Queue an EVALSHA; one the server does not hold runs by its source afterwards."""
        self._scripts[len(self.commands)] = (script, keys, args)
        return self.add(*script.command(keys, args))

    def execute(self) -> list[Any]:
        """Every command's reply; the first error reply is raised once all have run."""
        if not self.commands:
            return []
        commands: Sequence[Sequence[Arg]] = self.commands
        if self.transaction:
            commands = [("MULTI",), *commands, ("EXEC",)]
        replies = self.client.run_many(commands, raise_errors=False)
        if self.transaction:
            for reply in replies:  # a command refused when queued aborts the EXEC
                if isinstance(reply, ResponseError):
                    raise reply
            replies = replies[-1]
        for index, (script, keys, args) in self._scripts.items():
            if isinstance(replies[index], NoScriptError):
                replies[index] = script(self.client, keys, args)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies


class Script:
    """A Lua script called by its SHA1, sent in full only when the server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def command(self, keys: Sequence[Arg], args: Sequence[Arg]) -> tuple[Arg, ...]:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def __call__(self, target: Executor, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return target.execute(*self.command(keys, args))
        except NoScriptError:
            return target.execute("EVAL", self.source, len(keys), *keys, *args)


class HeldConnection:
    """One connection kept by one caller for the life of the process, for short commands
    whose round trip matters (no pool checkout per command). Threads take turns on it. It
    connects on first use and again in a forked child, leaving the parent's socket alone."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self._connection: Connection | None = None
        self._pid = 0

    @property
    def connection(self) -> Connection:
        """The held connection (take :attr:`lock` while using it)."""
        connection = self._connection
        if connection is None or self._pid != os.getpid():
            if connection is not None:
                connection.disconnect()  # the parent's: closed here, left open there
            connection = self._connection = Connection(self.settings)
            self._pid = os.getpid()
        return connection

    def execute(self, *command: Arg, once: bool = False) -> Any:
        """One command's reply. A broken connection is reconnected and the command sent
        once more; with ``once`` only when the first write failed, so a command whose reply
        was lost never runs twice."""
        data = pack((command,))
        with self.lock:
            connection = self.connection
            try:
                connection.check_health()
                connection.send(data)
            except RedisConnectionError:
                connection.send(data)
            try:
                return connection.read()
            except RedisConnectionError:
                if once:
                    raise
                connection.send(data)
                return connection.read()

    def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """``commands`` in one write; their replies in order, error replies in place. A
        broken connection is reconnected and all are sent once more (for commands that may
        run twice)."""
        with self.lock:
            connection = self.connection
            try:
                return run(connection, commands)
            except RedisConnectionError:
                return run(connection, commands)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and self._pid == os.getpid():
            connection.disconnect()


class Subscriber:
    """Pattern subscriptions on a connection of their own, subscribed again after the
    connection breaks.

    A subscribed connection only ever reads, so a connection the network dropped without a
    word (a NAT or load balancer timing it out) would wait for ever: after
    ``health_check_interval`` of silence it sends a PING, and when not even the answer comes
    within another interval it connects and subscribes again."""

    def __init__(self, settings: Settings) -> None:
        self.connection = Connection(settings)
        self.patterns: list[Arg] = []
        self._heard = time.monotonic()
        self._pinged = 0.0

    def psubscribe(self, *patterns: Arg) -> None:
        self.patterns.extend(patterns)
        self.connection.send(pack([("PSUBSCRIBE", *patterns)]))
        self._heard = time.monotonic()

    def get_message(self, timeout: float) -> tuple[bytes, bytes] | None:
        """The next published ``(channel, data)``, or None after ``timeout`` seconds, on
        any other reply, or when a broken connection was replaced (messages published
        meanwhile are lost, as pub/sub's are)."""
        connection = self.connection
        try:
            if not connection.connected:
                self._subscribe_again()
            if not connection.readable(timeout):
                self._check_silence()
                return None
            reply = connection.read()
        except RedisConnectionError:
            self._subscribe_again()  # raises while the server is away
            return None
        self._heard, self._pinged = time.monotonic(), 0.0
        if not isinstance(reply, list) or not reply:
            return None
        if reply[0] == b"pmessage" and len(reply) == 4:
            return reply[2], reply[3]
        if reply[0] == b"message" and len(reply) == 3:
            return reply[1], reply[2]
        return None

    def _check_silence(self) -> None:
        interval = self.connection.settings.health_check_interval
        now = time.monotonic()
        if not interval or now - self._heard < interval:
            return
        if not self._pinged:
            self._pinged = now
            self.connection.send(pack([("PING",)]))
        elif now - self._pinged >= interval:
            raise RedisConnectionError(f"no answer to a PING for {interval:g} s")

    def _subscribe_again(self) -> None:
        self.connection.disconnect()
        self.connection.send(pack([("PSUBSCRIBE", *self.patterns)]))
        self._heard, self._pinged = time.monotonic(), 0.0

    def close(self) -> None:
        self.connection.disconnect()
