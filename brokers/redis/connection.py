"""Redis URLs, clients and the one place the client's exceptions become taskframe's.

URL forms (the same as kombu's, so one setting serves both fleets):

* ``redis://[user:password@]host[:port][/db]``
* ``rediss://[user:password@]host[:port][/db][?ssl_cert_reqs=required&ssl_ca_certs=...]`` (TLS)
* ``redis+socket:///path/to/redis.sock[?virtual_host=db]``
* ``sentinel://[user:password@]host:port[/db];sentinel://host2:port2`` with the option
  ``master_name``: each new connection asks the sentinels in turn where the master is now

Options (broker ``transport_options`` or backend ``options``; URL query values override):
``socket_timeout`` (float, None: no read timeout, so blocking pops may wait as long as asked),
``socket_connect_timeout`` (float, 5.0), ``health_check_interval`` (s, 25: a connection idle
that long is PINGed before use, a subscription silent that long is PINGed and replaced when
the PING goes unanswered as long),
``max_connections`` (int, None), ``retries`` (int, 1: times a command is sent again after a
dropped connection), ``ssl_cert_reqs`` (``required`` | ``optional`` | ``none``, or the
``CERT_*`` spellings; default ``required``), ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_check_hostname`` (default True unless ``ssl_cert_reqs`` is none),
``master_name`` and ``sentinel_kwargs`` (``username``/``password`` for the sentinels
themselves), ``protocol`` (2 or 3, the RESP version; unset: RESP3 where the server has it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from taskframe.brokers.redis.client import Client
from taskframe.brokers.redis.link import Settings
from taskframe.brokers.redis.wire import RedisConnectionError, RedisError, ResponseError
from taskframe.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured

__all__ = ["RedisTarget", "connect", "parse_url", "settings_for", "translate_errors"]

_CERT_REQS = {
    "required": "required",
    "cert_required": "required",
    "optional": "optional",
    "cert_optional": "optional",
    "none": "none",
    "cert_none": "none",
}


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


def settings_for(target: RedisTarget, options: dict[str, Any]) -> Settings:
    """The connection settings for ``target``: its URL query overrides ``options``."""
    merged = {**options, **target.query}
    protocol = merged.get("protocol")
    if protocol is not None and int(protocol) not in (2, 3):
        raise ImproperlyConfigured(f"protocol={protocol!r} for {target.display}: use 2 or 3")
    settings: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
        "protocol": None if protocol is None else int(protocol),
        "socket_timeout": _float_or_none(merged.get("socket_timeout")),
        "connect_timeout": _float_or_none(merged.get("socket_connect_timeout", 5.0)),
        "health_check_interval": float(merged.get("health_check_interval", 25)),
    }
    if target.socket_path is not None:
        return Settings(path=target.socket_path, keepalive=False, **settings)
    host, port = target.hosts[0]
    if target.scheme == "rediss":
        settings["tls"] = _tls_context(target, merged)
    if target.scheme == "sentinel":
        master_name = merged.get("master_name")
        if not master_name:
            raise ImproperlyConfigured(
                f"{target.display} needs the transport option master_name "
                "(the name the sentinels monitor)"
            )
        sentinel = dict(merged.get("sentinel_kwargs") or {})
        settings.update(
            sentinels=target.hosts,
            master_name=str(master_name),
            sentinel_username=sentinel.get("username"),
            sentinel_password=sentinel.get("password"),
        )
    return Settings(host=host, port=port, **settings)


def _tls_context(target: RedisTarget, settings: dict[str, Any]) -> Any:
    """An SSL context from the ``ssl_*`` options (``ssl`` is imported only for rediss://)."""
    import ssl

    requested = str(settings.get("ssl_cert_reqs", "required")).lower()
    if requested not in _CERT_REQS:
        raise ImproperlyConfigured(
            f"ssl_cert_reqs={requested!r} for {target.display}: use required, optional or none"
        )
    try:
        context = ssl.create_default_context(cafile=settings.get("ssl_ca_certs"))
        if settings.get("ssl_certfile"):
            context.load_cert_chain(settings["ssl_certfile"], settings.get("ssl_keyfile"))
    except (OSError, ssl.SSLError) as exc:
        files = [
            settings[k] for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if k in settings
        ]
        raise ImproperlyConfigured(
            f"TLS files for {target.display} do not load ({', '.join(map(str, files))}): {exc}"
        ) from exc
    check_hostname = settings.get("ssl_check_hostname", True)
    if isinstance(check_hostname, str):
        check_hostname = check_hostname.lower() in {"1", "true", "yes"}
    context.check_hostname = bool(check_hostname) and requested != "none"
    context.verify_mode = {
        "required": ssl.CERT_REQUIRED,
        "optional": ssl.CERT_OPTIONAL,
        "none": ssl.CERT_NONE,
    }[_CERT_REQS[requested]]
    return context


def _float_or_none(value: object) -> float | None:
    return None if value in (None, "", "none", "None") else float(str(value))


def connect(target: RedisTarget, options: dict[str, Any]) -> Client:
    """A client with its own connection pool for ``target``."""
    merged = {**options, **target.query}
    max_connections = merged.get("max_connections")
    return Client(
        settings_for(target, options),
        retries=int(merged.get("retries", 1)),
        max_connections=None if max_connections is None else int(max_connections),
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
    """Turn the client's exceptions into BrokerConnectionError / BrokerError naming the target.

    Authentication and ACL failures are a plain ``BrokerError`` that says so: the server was
    reached and refused, so a worker stops with that one line instead of retrying a password
    that will never work (only ``BrokerConnectionError`` is retried)."""
    try:
        yield
    except RedisConnectionError as exc:
        raise BrokerConnectionError(
            f"cannot reach Redis at {target.address} ({exc}); check that the server is "
            f"running and that the URL {target.display} is right"
        ) from exc
    except ResponseError as exc:
        if any(marker in str(exc) for marker in _DENIED):
            raise _denied(target, exc) from exc
        raise BrokerError(f"Redis at {target.display} refused a command: {exc}") from exc
    except RedisError as exc:
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
