"""ResultListener: one pub/sub connection per result backend and process, shared by waiters.

Opening a PubSub for every ``get()`` costs a TCP connection and a SUBSCRIBE: measured, about
half of a client's round trip. The listener keeps one connection open instead. It subscribes
to a result channel while at least one thread waits on it and reads the result key only once
the subscription is in effect, so a result stored in between is never missed:

* RESP3 (Redis 6+, the default): ``SUBSCRIBE`` and ``GET`` go out in one write on the
  subscribed connection, whose replies come back in order, so one round trip does both;
* RESP2 (option ``protocol=2``, or an older server): the ``GET`` goes through the caller's
  ``fetch`` once the server has confirmed the ``SUBSCRIBE``.

A channel nobody waits on any more is unsubscribed in the next write (or once 100 are left),
so a sequence of ``get()`` calls costs one write each.

There is no background thread: a waiting thread reads the connection itself while no other
thread does, and hands what it reads to the threads it belongs to (leader and followers on
one ``threading.Condition``). A lone waiter is woken by its own socket, with no thread hop.
Commands are written under the condition's lock and never check health (a health check would
read a reply another thread is waiting for).

Connection loss: the connection is dropped, and every waiter subscribes again on a new one
and reads its key again. A child process never touches its parent's connection: after a fork
it opens its own (the parent's socket is left alone, not shut down).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable

from taskframe.brokers.redis.client import Client
from taskframe.brokers.redis.link import Connection
from taskframe.brokers.redis.wire import RedisConnectionError, RedisError, ResponseError, pack

__all__ = ["ResultListener"]

Command = tuple[str | bytes, ...]

UNSUBSCRIBE_BATCH = 100
"""Channels left waiting for an UNSUBSCRIBE before one is sent without a write to ride on."""


class _Waiter:
    """One thread waiting on one key; what the reading thread handed it."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.messages: list[bytes] = []
        self.generation = -1
        """The connection generation it is subscribed on (-1: not subscribed)."""
        self.fetching = False
        """A GET sent on the listener's connection (RESP3) has not been answered yet."""
        self.fetched: bytes | None = None
        self.error: ResponseError | None = None


class ResultListener:
    """Waits for values published on result keys' channels over one shared connection."""

    def __init__(self, client: Client, recheck_interval: float) -> None:
        self.client = client
        self.recheck_interval = recheck_interval
        self._start(os.getpid())

    def _start(self, pid: int) -> None:
        self._pid = pid
        self._condition = threading.Condition(threading.Lock())
        self._connection: Connection | None = None
        self._generation = 0
        self._reading = False
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._unconfirmed: dict[bytes, int] = {}
        """SUBSCRIBEs sent per channel whose confirmation has not been read yet (RESP2)."""
        self._leaving: list[bytes] = []
        """Channels without waiters, to unsubscribe in the next write."""
        self._fetches: deque[_Waiter] = deque()
        """Waiters whose GET was sent on the connection, in the order sent (RESP3)."""

    def wait(
        self,
        key: str,
        fetch: Callable[[], bytes | None],
        is_ready: Callable[[bytes], bool],
        deadline: float | None,
    ) -> bytes | None:
        """The value of ``key`` once ``is_ready`` accepts it, read when the wait starts or
        published later on the channel of the same name (as Celery's result keys).

        Every ``recheck_interval`` of silence (and after a lost connection) the key is read
        again. ``fetch`` reads it where the connection cannot (RESP2). None: the monotonic
        ``deadline`` passed first."""
        if self._pid != os.getpid():
            self._start(os.getpid())
        waiter = _Waiter(key.encode("utf-8"))
        try:
            while True:
                with self._condition:
                    fetched_here = self._join(waiter, deadline)
                payload = waiter.fetched if fetched_here else fetch()
                if payload is not None and is_ready(payload):
                    return payload
                until = time.monotonic() + self.recheck_interval
                if deadline is not None:
                    until = min(until, deadline)
                with self._condition:
                    found = self._next_ready(waiter, until, is_ready)
                if found is not None:
                    return found
                if deadline is not None and time.monotonic() >= deadline:
                    return None
        finally:
            with self._condition:
                self._leave(waiter)

    def close(self) -> None:
        with self._condition:
            self._drop_connection()

    # the rest runs with the condition held

    def _join(self, waiter: _Waiter, deadline: float | None) -> bool:
        """Subscribe ``waiter`` (if it is not) and wait until the subscription is in effect;
        on RESP3 also read the key in the same write. True: ``waiter.fetched`` holds it."""
        connection = self._connection
        if connection is None:
            connection = self._connection = self.client.pool.get()
        resp3 = connection.protocol == 3
        commands: list[Command] = []
        if waiter.generation != self._generation:
            key = waiter.key
            subscribers = self._waiters.setdefault(key, [])
            if not subscribers and key in self._leaving:
                self._leaving.remove(key)
            elif not subscribers:
                commands.append(("SUBSCRIBE", key))
                if not resp3:
                    self._unconfirmed[key] = self._unconfirmed.get(key, 0) + 1
            subscribers.append(waiter)
            waiter.generation = self._generation
        if resp3:
            commands.append(("GET", waiter.key))
            waiter.fetching, waiter.fetched = True, None
            self._fetches.append(waiter)
        if commands:
            self._send(connection, commands)
        until = time.monotonic() + self.recheck_interval
        if deadline is not None:
            until = min(until, deadline)
        while waiter.generation == self._generation and (
            waiter.fetching or self._unconfirmed.get(waiter.key)
        ):
            if not self._pump(until):
                break
        if waiter.error is not None:
            error, waiter.error = waiter.error, None
            raise error
        return resp3 and not waiter.fetching and waiter.generation == self._generation

    def _next_ready(
        self, waiter: _Waiter, until: float, is_ready: Callable[[bytes], bool]
    ) -> bytes | None:
        """The first ready message for ``waiter`` before ``until``; None on timeout or when
        the connection was lost (the caller subscribes again and reads the key)."""
        while True:
            while waiter.messages:
                data = waiter.messages.pop(0)
                if is_ready(data):
                    return data
            if waiter.generation != self._generation or not self._pump(until):
                return None

    def _leave(self, waiter: _Waiter) -> None:
        if waiter.generation != self._generation:
            return
        subscribers = self._waiters.get(waiter.key, [])
        if waiter in subscribers:
            subscribers.remove(waiter)
        if subscribers:
            return
        self._waiters.pop(waiter.key, None)
        self._leaving.append(waiter.key)
        if len(self._leaving) >= UNSUBSCRIBE_BATCH and self._connection is not None:
            self._send(self._connection, [])

    def _pump(self, until: float) -> bool:
        """Read and hand out one reply, or, while another thread reads, sleep until it has
        handed out one. False once ``until`` has passed."""
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        if self._reading:
            self._condition.wait(remaining)
            return True
        connection = self._connection
        if connection is None:
            return False
        generation = self._generation
        self._reading = True
        self._condition.release()
        try:
            reply = None
            ready = connection.readable(remaining)
            if ready:
                reply = connection.read()
        except ResponseError as exc:
            self._condition.acquire()
            self._reading = False
            if self._fetches:
                self._answer(exc)
            self._condition.notify_all()
            return True
        except BaseException as exc:
            self._condition.acquire()
            self._reading = False
            dropped_meanwhile = generation != self._generation
            if not dropped_meanwhile:
                self._drop_connection()
            self._condition.notify_all()
            if isinstance(exc, RedisError) or (dropped_meanwhile and isinstance(exc, Exception)):
                return True
            raise
        self._condition.acquire()
        self._reading = False
        if ready:
            self._dispatch(reply)
        self._condition.notify_all()
        return True

    def _dispatch(self, reply: object) -> None:
        """A push (a list: message or subscription reply) or the answer to the oldest GET."""
        if not isinstance(reply, list):
            if self._fetches:
                self._answer(reply)
            return
        if len(reply) != 3:
            return
        kind, channel, data = reply
        if kind == b"message":
            for waiter in self._waiters.get(channel, ()):
                waiter.messages.append(data)
        elif kind == b"subscribe" and channel in self._unconfirmed:
            left = self._unconfirmed[channel] - 1
            if left > 0:
                self._unconfirmed[channel] = left
            else:
                del self._unconfirmed[channel]

    def _answer(self, reply: object) -> None:
        waiter = self._fetches.popleft()
        waiter.fetching = False
        if isinstance(reply, ResponseError):
            waiter.error = reply
        elif isinstance(reply, bytes):
            waiter.fetched = reply

    def _send(self, connection: Connection, commands: list[Command]) -> None:
        """Write ``commands`` after the UNSUBSCRIBE of every channel left since the last write.

        A write that fails drops the connection: the waiters see it and subscribe again on a
        new one (whose connect raises if the server is really gone)."""
        if self._leaving:
            commands = [("UNSUBSCRIBE", *self._leaving), *commands]
            self._leaving = []
        try:
            connection.send(pack(commands))
        except RedisConnectionError:
            self._drop_connection()

    def _drop_connection(self) -> None:
        """Forget the connection and every subscription on it; waiters subscribe again."""
        connection = self._connection
        self._connection = None
        self._generation += 1
        self._waiters.clear()
        self._unconfirmed.clear()
        self._leaving.clear()
        for waiter in self._fetches:
            waiter.fetching = False
        self._fetches.clear()
        if connection is not None:
            connection.disconnect()
            self.client.pool.release(connection)
