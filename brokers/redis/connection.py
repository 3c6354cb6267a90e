"""Redis URLs, clients and the one place redis-py's exceptions become taskframe's.

URL forms (the same as kombu's, so one setting serves both fleets):

* ``redis://[user:password@]host[:port][/db]``
* ``rediss://[user:password@]host[:port][/db][?ssl_cert_reqs=required&ssl_ca_certs=...]`` (TLS)
* ``redis+socket:///path/to/redis.sock[?virtual_host=db]``
* ``sentinel://[user:password@]host:port[/db];sentinel://host2:port2`` with the option
  ``master_name`` (redis-py ``Sentinel.master_for``)

Options (broker ``transport_options`` or backend ``options``; URL query values override):
``socket_timeout`` (float, None: no read timeout, so blocking pops may wait as long as asked),
``socket_connect_timeout`` (float, 5.0), ``health_check_interval`` (int s, 25),
``max_connections`` (int, None), ``retries`` (int, 1: redis-py retries of a command after a
dropped connection), ``ssl_cert_reqs`` (``required`` | ``optional`` | ``none``, or the
``CERT_*`` spellings; default ``required``), ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_check_hostname``, ``master_name`` and ``sentinel_kwargs`` (Sentinel),
``protocol`` (2 or 3, RESP version; redis-py's default when unset).
hiredis parses replies whenever it is installed (redis-py picks it up by itself).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from taskframe.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured

__all__ = [
    "DedicatedClient",
    "RedisTarget",
    "connect",
    "parse_url",
    "read_replies",
    "translate_errors",
]

_CERT_REQS = {
    "required": "required",
    "cert_required": "required",
    "optional": "optional",
    "cert_optional": "optional",
    "none": "none",
    "cert_none": "none",
}
_SSL_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


@dataclass(frozen=True)
class RedisTarget:
    """Where a URL points, with the password kept out of everything printable."""

    scheme: str
    db: int
    hosts: tuple[tuple[str, int], ...] = ()
    socket_path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        if self.socket_path is not None:
            return self.socket_path
        return ", ".join(f"{host}:{port}" for host, port in self.hosts)

    @property
    def display(self) -> str:
        """The URL with the password left out: safe for logs and error messages."""
        user = f"{self.username}@" if self.username else ""
        if self.socket_path is not None:
            return f"{self.scheme}://{user}{self.socket_path}?virtual_host={self.db}"
        hosts = ";".join(f"{self.scheme}://{user}{h}:{p}/{self.db}" for h, p in self.hosts)
        return hosts


def parse_url(url: str) -> RedisTarget:
    """Split a ``redis://``, ``rediss://``, ``redis+socket://`` or ``sentinel://`` URL."""
    first = urlsplit(url.split(";", 1)[0])
    scheme = first.scheme.lower()
    query = dict(parse_qsl(first.query))
    username = unquote(first.username) if first.username else None
    password = unquote(first.password) if first.password else None
    if scheme == "redis+socket":
        if not first.path:
            raise ImproperlyConfigured(f"{scheme}:// URL needs a socket path: {scheme}:///path")
        db = _db_number(query.pop("virtual_host", "0"), url)
        return RedisTarget(scheme, db, (), first.path, username, password, query)
    hosts = []
    db = 0
    for part in url.split(";"):
        piece = urlsplit(part.strip())
        hosts.append((piece.hostname or "localhost", piece.port or _default_port(scheme)))
        if piece.path.strip("/"):
            db = _db_number(piece.path.strip("/"), url)
    return RedisTarget(scheme, db, tuple(hosts), None, username, password, query)


def _default_port(scheme: str) -> int:
    return 26379 if scheme == "sentinel" else 6379


def _db_number(text: str, url: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ImproperlyConfigured(
            f"Redis database {text!r} in {url!r} is not a number; use e.g. redis://host:6379/0"
        ) from None


def _connection_kwargs(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    settings = {**options, **target.query}
    kwargs: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
        "socket_timeout": _float_or_none(settings.get("socket_timeout")),
        "socket_connect_timeout": _float_or_none(settings.get("socket_connect_timeout", 5.0)),
        "socket_keepalive": True,
        "health_check_interval": int(settings.get("health_check_interval", 25)),
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), int(settings.get("retries", 1))),
    }
    if settings.get("protocol") is not None:
        kwargs["protocol"] = int(settings["protocol"])
    if target.scheme == "rediss":
        requested = str(settings.get("ssl_cert_reqs", "required")).lower()
        if requested not in _CERT_REQS:
            raise ImproperlyConfigured(
                f"ssl_cert_reqs={requested!r} for {target.display}: use required, optional or none"
            )
        kwargs["ssl_cert_reqs"] = _CERT_REQS[requested]
        for key in _SSL_KEYS:
            if key in settings:
                value = settings[key]
                if key == "ssl_check_hostname" and isinstance(value, str):
                    value = value.lower() in {"1", "true", "yes"}
                kwargs[key] = value
    return kwargs


def _float_or_none(value: object) -> float | None:
    return None if value in (None, "", "none", "None") else float(str(value))


def connect(target: RedisTarget, options: dict[str, Any]) -> redis.Redis[bytes]:
    """A client with its own connection pool for ``target``."""
    kwargs = _connection_kwargs(target, options)
    max_connections = options.get("max_connections")
    if target.scheme == "sentinel":
        master_name = options.get("master_name") or target.query.get("master_name")
        if not master_name:
            raise ImproperlyConfigured(
                f"{target.display} needs the transport option master_name "
                "(the name the sentinels monitor)"
            )
        sentinel_kwargs = dict(options.get("sentinel_kwargs") or {})
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs)
        client: redis.Redis[bytes] = sentinel.master_for(str(master_name), redis_class=redis.Redis)
        return client
    pool_kwargs: dict[str, Any] = dict(kwargs)
    if max_connections is not None:
        pool_kwargs["max_connections"] = int(max_connections)
    if target.socket_path is not None:
        pool_kwargs.pop("socket_keepalive")
        pool_kwargs["path"] = target.socket_path
        pool_kwargs["connection_class"] = redis.UnixDomainSocketConnection
    else:
        host, port = target.hosts[0]
        pool_kwargs["host"], pool_kwargs["port"] = host, port
        if target.scheme == "rediss":
            pool_kwargs["connection_class"] = redis.SSLConnection
    return redis.Redis(connection_pool=redis.ConnectionPool(**pool_kwargs))


class DedicatedClient:
    """A client on one connection of ``client``'s pool, held for the life of the process.

    Checking a connection out of redis-py's pool and back costs about 20 µs per command
    (measured: an LPUSH takes 65 µs of CPU through the pool, 45 µs on a held connection), a
    third of a single publish. Commands from several threads take turns on the connection,
    so use it for short commands only, never for blocking pops. It connects on first use
    (inside the caller's ``translate_errors``) and again in a forked child, which leaves the
    parent's socket alone.

    :meth:`execute` goes one step further for the hottest command (a single publish): it
    writes straight to the held connection and reads the raw reply, skipping the client's
    wrapper (retry object, observability hooks, reply callbacks): 19 against 12 µs of CPU
    per LPUSH, measured."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.client = client
        self._held: redis.Redis[bytes] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> redis.Redis[bytes]:
        held = self._held
        if held is None or self._pid != os.getpid():
            with self._lock:
                held = self._held
                if held is None or self._pid != os.getpid():
                    held = redis.Redis(
                        connection_pool=self.client.connection_pool, single_connection_client=True
                    )
                    self._held, self._pid = held, os.getpid()
        return held

    def execute(self, *command: str | bytes | float, once: bool = False) -> Any:
        """Send one command and return its raw reply. A dropped connection is reconnected
        and the command sent once more, as the client's own retry would; with ``once`` only
        when the first write failed, so a command whose reply was lost never runs twice."""
        held: Any = self.get()
        with held.single_connection_lock:
            connection = held.connection
            try:
                connection.send_command(*command, check_health=False)
            except (redis.ConnectionError, redis.TimeoutError):
                connection.disconnect()
                connection.send_command(*command, check_health=False)
            try:
                return connection.read_response()
            except (redis.ConnectionError, redis.TimeoutError):
                connection.disconnect()
                if once:
                    raise
                connection.send_command(*command, check_health=False)
                return connection.read_response()

    def execute_many(self, commands: Sequence[Sequence[str | bytes | float]]) -> list[Any]:
        """Send ``commands`` in one write and return their raw replies in order, an error
        reply as its ``ResponseError``. A dropped connection is reconnected and all are sent
        once more (use it for commands that can run twice)."""
        held: Any = self.get()
        with held.single_connection_lock:
            connection = held.connection
            packed = connection.pack_commands(commands)
            try:
                connection.send_packed_command(packed, False)
                return read_replies(connection, len(commands))
            except (redis.ConnectionError, redis.TimeoutError):
                connection.disconnect()
                connection.send_packed_command(packed, False)
                return read_replies(connection, len(commands))

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None and self._pid == os.getpid():
            held.close()


def read_replies(connection: Any, count: int) -> list[Any]:
    """The next ``count`` raw replies on ``connection``, an error reply as its
    ``ResponseError`` (so one bad reply does not leave the others unread)."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


_AUTH_ERRORS: tuple[type[Exception], ...] = (
    redis.AuthenticationError,
    # redis-py 5+ raises this for an ACL denial at connect; older stubs do not know it.
    getattr(redis.exceptions, "AuthorizationError", redis.AuthenticationError),
    getattr(redis.exceptions, "NoPermissionError", redis.AuthenticationError),
)
_DENIED = (
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "no permissions",
    "invalid password",
    "invalid username",
)


@contextmanager
def translate_errors(target: RedisTarget) -> Iterator[None]:
    """Turn redis-py exceptions into BrokerConnectionError / BrokerError naming the target.

    Authentication and ACL failures are a plain ``BrokerError`` that says so: the server was
    reached and refused, so a worker stops with that one line instead of retrying a password
    that will never work (only ``BrokerConnectionError`` is retried)."""
    try:
        yield
    except _AUTH_ERRORS as exc:
        raise _denied(target, exc) from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerConnectionError(
            f"cannot reach Redis at {target.address} ({exc}); check that the server is "
            f"running and that the URL {target.display} is right"
        ) from exc
    except redis.ResponseError as exc:
        if any(marker in str(exc) for marker in _DENIED):
            raise _denied(target, exc) from exc
        raise BrokerError(f"Redis at {target.display} refused a command: {exc}") from exc
    except redis.RedisError as exc:
        raise BrokerError(f"Redis error on {target.display}: {exc}") from exc


def _denied(target: RedisTarget, exc: Exception) -> BrokerError:
    if "NOPERM" in str(exc) or "no permissions" in str(exc):
        return BrokerError(
            f"permission denied for {target.display} ({exc}); check the user's ACL rules"
        )
    return BrokerError(
        f"authentication failed for {target.display} ({exc}); check the user name and "
        "password in the URL"
    )
