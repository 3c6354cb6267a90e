"""Connections to one Redis server: TCP, Unix socket or TLS, found directly or through
Sentinel, and the per-process pool that lends them out.

A connection belongs to the process that opened it: after a fork the child opens its own and
leaves the parent's sockets alone (closing a copy of a socket in a child is harmless; talking
on it would interleave with the parent).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from taskframe.brokers.redis.wire import (
    Arg,
    Reader,
    ReadOnlyError,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
    pack,
)

__all__ = ["Connection", "Pool", "Settings"]


@dataclass(frozen=True)
class Settings:
    """How to reach and log in to one server (or, with ``sentinels``, its current master)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    protocol: int | None = None
    """2 or 3; None: RESP3 where the server has it (Redis 6+), else RESP2."""
    socket_timeout: float | None = None
    connect_timeout: float | None = 5.0
    keepalive: bool = True
    health_check_interval: float = 25.0
    tls: Any = None
    """An ``ssl.SSLContext`` for ``rediss://``."""
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        if self.path is not None:
            return self.path
        if self.sentinels:
            hosts = ", ".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"master {self.master_name!r} of sentinels {hosts}"
        return f"{self.host}:{self.port}"


class Connection:
    """One socket to the server, logged in and on its database once :meth:`connect` ran."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.protocol = settings.protocol or 3
        self.sock: socket.socket | None = None
        self.reader: Reader | None = None
        self.pid = os.getpid()
        self.last_used = 0.0

    @property
    def connected(self) -> bool:
        return self.sock is not None and self.pid == os.getpid()

    def connect(self) -> None:
        if self.connected:
            return
        self.disconnect()  # a socket inherited from the parent: closed here, left open there
        self.pid = os.getpid()
        settings = self.settings
        if settings.sentinels:
            host, port = discover_master(settings)
        else:
            host, port = settings.host, settings.port
        try:
            sock = self._open(host, port)
        except OSError as exc:
            where = settings.path or f"{host}:{port}"
            raise RedisConnectionError(f"error connecting to {where}: {exc}") from exc
        self.sock, self.reader = sock, Reader(sock)
        try:
            self._log_in()
        except BaseException:
            self.disconnect()
            raise
        self.last_used = time.monotonic()

    def _open(self, host: str, port: int) -> socket.socket:
        settings = self.settings
        if settings.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(settings.connect_timeout)
            try:
                sock.connect(settings.path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((host, port), timeout=settings.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if settings.keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if settings.tls is not None:
                try:
                    sock = settings.tls.wrap_socket(sock, server_hostname=host)
                except OSError:
                    sock.close()
                    raise
        sock.settimeout(settings.socket_timeout)
        return sock

    def _log_in(self) -> None:
        """HELLO 3 (with AUTH) where RESP3 is wanted, falling back to RESP2 on a server that
        does not know HELLO unless RESP3 was asked for; then SELECT."""
        settings = self.settings
        auth: tuple[Arg, ...] = ()
        if settings.password is not None:
            auth = (settings.username or "default", settings.password)
        if self.protocol == 3:
            reply = self.call("HELLO", 3, *(("AUTH", *auth) if auth else ()), check=False)
            if isinstance(reply, ResponseError):
                if settings.protocol == 3 or "unknown command" not in str(reply).lower():
                    raise reply
                self.protocol = 2
        if self.protocol == 2 and auth:
            self.call(*(("AUTH", *auth) if settings.username else ("AUTH", settings.password)))
        if settings.db:
            self.call("SELECT", settings.db)

    def call(self, *command: Arg, check: bool = True) -> Any:
        """Send one command and read its reply; an error reply is raised (``check``) or
        returned."""
        self.send(pack((command,)))
        return self.read() if check else self.read_reply()

    def send(self, data: bytes) -> None:
        sock = self.sock
        if sock is None or self.pid != os.getpid():
            self.connect()
            sock = self.sock
            assert sock is not None
        try:
            sock.sendall(data)
        except TimeoutError as exc:
            self.disconnect()
            raise RedisTimeoutError(
                f"timed out writing to Redis at {self.settings.address}"
            ) from exc
        except OSError as exc:
            self.disconnect()
            raise RedisConnectionError(
                f"error writing to Redis at {self.settings.address}: {exc}"
            ) from exc
        self.last_used = time.monotonic()

    def read_reply(self) -> Any:
        """The next reply, an error reply as its :class:`ResponseError` value. Any other
        failure drops the connection (a reply half read leaves the stream unusable)."""
        reader = self.reader
        if reader is None:
            raise RedisConnectionError(f"not connected to Redis at {self.settings.address}")
        try:
            reply = reader.read()
        except BaseException:
            self.disconnect()
            raise
        if isinstance(reply, ReadOnlyError) and self.settings.sentinels:
            self.disconnect()  # a failover demoted this server: the next connect asks again
            raise RedisConnectionError(f"the server is no longer the master: {reply}")
        return reply

    def read(self) -> Any:
        reply = self.read_reply()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def read_many(self, count: int) -> list[Any]:
        return [self.read_reply() for _ in range(count)]

    def readable(self, timeout: float | None) -> bool:
        reader = self.reader
        if reader is None:
            raise RedisConnectionError(f"not connected to Redis at {self.settings.address}")
        try:
            return reader.readable(timeout)
        except (OSError, ValueError) as exc:
            self.disconnect()
            raise RedisConnectionError(f"error reading from Redis: {exc}") from exc

    def check_health(self) -> None:
        """PING a connection idle past ``health_check_interval``; reconnect one that fails
        (a load balancer or a restarted server may have dropped it meanwhile)."""
        interval = self.settings.health_check_interval
        if not self.connected or not interval or time.monotonic() - self.last_used < interval:
            return
        try:
            self.call("PING")
        except RedisConnectionError:
            self.disconnect()
            self.connect()

    def disconnect(self) -> None:
        sock, self.sock, self.reader = self.sock, None, None
        if sock is not None:
            try:
                if self.pid == os.getpid():
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def discover_master(settings: Settings) -> tuple[str, int]:
    """Ask each sentinel in turn where ``master_name``'s master is now."""
    errors = []
    for host, port in settings.sentinels:
        sentinel = Connection(
            Settings(
                host,
                port,
                username=settings.sentinel_username,
                password=settings.sentinel_password,
                protocol=2,
                socket_timeout=settings.connect_timeout,
                connect_timeout=settings.connect_timeout,
            )
        )
        try:
            reply = sentinel.call("SENTINEL", "get-master-addr-by-name", settings.master_name or "")
        except (RedisConnectionError, ResponseError) as exc:
            errors.append(f"{host}:{port}: {exc}")
            continue
        finally:
            sentinel.disconnect()
        if reply:
            return reply[0].decode("utf-8"), int(reply[1])
        errors.append(f"{host}:{port}: does not know master {settings.master_name!r}")
    raise RedisConnectionError(f"no sentinel named a master: {'; '.join(errors)}")


class Pool:
    """Connections for one process, lent out one at a time (thread-safe, last in first out)."""

    def __init__(self, settings: Settings, max_connections: int | None = None) -> None:
        self.settings = settings
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._free: list[Connection] = []
        self._lent: set[Connection] = set()

    def get(self) -> Connection:
        """A connected connection; return it with :meth:`release`."""
        with self._lock:
            if self._pid != os.getpid():
                self._reset()
            if self._free:
                connection = self._free.pop()
            else:
                if self.max_connections and len(self._lent) >= self.max_connections:
                    raise RedisConnectionError(
                        f"all {self.max_connections} connections to {self.settings.address} "
                        "are in use (max_connections)"
                    )
                connection = Connection(self.settings)
            self._lent.add(connection)
        try:
            if connection.connected:
                connection.check_health()
            else:
                connection.connect()
        except BaseException:
            self.release(connection)
            raise
        return connection

    def release(self, connection: Connection) -> None:
        with self._lock:
            if self._pid != os.getpid() or connection not in self._lent:
                return
            self._lent.discard(connection)
            self._free.append(connection)

    def disconnect(self) -> None:
        """Close every connection this process opened (lent ones included)."""
        with self._lock:
            if self._pid != os.getpid():
                self._reset()
                return
            for connection in (*self._free, *self._lent):
                connection.disconnect()


def run(connection: Connection, commands: Sequence[Sequence[Arg]]) -> list[Any]:
    """``commands`` in one write; their replies, error replies in place."""
    connection.send(pack(commands))
    return connection.read_many(len(commands))
