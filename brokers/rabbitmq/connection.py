"""RabbitMQ URLs, pika connections, the float codec, and the one place pika's errors become
taskframe's.

URL forms (kombu's, so one setting serves both fleets)::

    amqp://[user[:password]@]host[:port][/vhost][?option=value&...]
    amqps://...        TLS (port 5671 by default)
    pyamqp://...       the same as amqp://

The vhost is the URL path, percent-decoded: ``//`` or ``/%2F`` or no path is the default vhost
``/``. User and password default to ``guest``/``guest``. Query values override transport
options of the same name.

**Float headers.** pika 1.x cannot encode a Python float in a header table and decodes AMQP
doubles as truncated integers, while Celery (py-amqp) sends ``timelimit: [1.5, 1]`` and reads
doubles back as floats. Neither a string nor a ``Decimal`` works on the Celery side (its prefork
pool computes ``monotonic() + timeout``, which a Decimal or a string breaks), so taskframe
teaches pika the double: at import, :func:`install_float_codec` wraps ``pika.data``'s
``encode_value``/``decode_value`` so a float goes out as an AMQP double (``d``, what py-amqp
writes) and doubles and floats (``d``, ``f``) come back as floats. Every other type keeps pika's
own encoding. This changes pika for the whole process; the change is a strict extension
(floats used to raise, and truncation loses data), which is why it is acceptable.

**Writing frames.** pika queues each outgoing frame and sends it from its I/O loop, so one
publish costs three ``send()`` calls (method, header, body frames) plus a ``poll()`` and two
poller updates, about 13 µs of a 33 µs publish. :class:`FrameWriter` replaces, on taskframe's
own connections only, the method pika sends frames through: the frames of one call go out in
one ``send()`` straight away when nothing is queued ahead of them (what py-amqp does), and
inside :meth:`FrameWriter.holding` they are gathered and sent in large chunks, so a batch of
publishes or acks costs a few system calls instead of three per message. Whatever the socket
does not take at once goes through pika's own buffer, so order, back-pressure and error
handling stay pika's. TLS connections only gather (their socket is pika's to drive).
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pika
import pika.data
import pika.exceptions

from taskframe.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured

__all__ = [
    "AmqpTarget",
    "FrameWriter",
    "connection_parameters",
    "install_float_codec",
    "parse_url",
]

DEFAULT_PORTS = {"amqp": 5672, "pyamqp": 5672, "amqps": 5671}
HELD_BYTES = 256 * 1024
"""Frames gathered by :meth:`FrameWriter.holding` go out once they reach this size."""


@dataclass(frozen=True)
class AmqpTarget:
    """Where a URL points, with the password kept out of everything printable."""

    scheme: str
    host: str
    port: int
    vhost: str
    username: str
    password: str = field(repr=False)
    query: dict[str, str] = field(default_factory=dict)

    @property
    def display(self) -> str:
        """The URL with the password masked: safe for logs and error messages."""
        vhost = "/" if self.vhost == "/" else f"/{self.vhost}"
        return f"{self.scheme}://{self.username}:***@{self.host}:{self.port}{vhost}"


def parse_url(url: str) -> AmqpTarget:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ImproperlyConfigured(f"not a RabbitMQ URL: {url!r}; expected amqp:// or amqps://")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = unquote(path) or "/"
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ImproperlyConfigured(f"bad port in RabbitMQ URL: {exc}") from None
    return AmqpTarget(
        scheme=scheme,
        host=parts.hostname or "localhost",
        port=port,
        vhost=vhost,
        username=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password else "guest",
        query=dict(parse_qsl(parts.query)),
    )


def connection_parameters(target: AmqpTarget, options: dict[str, Any]) -> pika.ConnectionParameters:
    """pika parameters: heartbeat off by default (see the package docstring), one connection
    attempt (the worker's retry policy owns retrying), TLS for ``amqps``."""
    ssl_options = None
    if target.scheme == "amqps":
        context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
        if options.get("ssl_certfile"):
            context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
        if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.check_hostname = bool(options.get("ssl_check_hostname", True))
        ssl_options = pika.SSLOptions(context, target.host)
    timeout = float(options.get("connect_timeout", 5.0))
    return pika.ConnectionParameters(
        host=target.host,
        port=target.port,
        virtual_host=target.vhost,
        credentials=pika.PlainCredentials(target.username, target.password),
        heartbeat=int(options.get("heartbeat", 0)),
        blocked_connection_timeout=options.get("blocked_connection_timeout"),
        socket_timeout=timeout,
        stack_timeout=timeout * 2,
        connection_attempts=1,
        ssl_options=ssl_options,
        client_properties={"connection_name": options.get("connection_name", "taskframe")},
    )


@contextmanager
def translate_errors(target: AmqpTarget) -> Iterator[None]:
    """pika's exceptions out, taskframe's in: unreachable -> ``BrokerConnectionError`` (the
    worker retries it); refused credentials or vhost -> plain ``BrokerError`` (retrying
    cannot fix a password)."""
    where = target.display
    try:
        yield
    except pika.exceptions.ProbableAuthenticationError:
        raise BrokerError(
            f"RabbitMQ at {where} refused the login (ACCESS_REFUSED): check the user name and "
            "password in the broker URL"
        ) from None
    except pika.exceptions.ProbableAccessDeniedError as exc:
        raise BrokerError(
            f"RabbitMQ at {where} refused the vhost {target.vhost!r} ({_reason(exc)}): create it "
            f"(rabbitmqctl add_vhost) or grant {target.username!r} access to it"
        ) from None
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise BrokerError(
            f"RabbitMQ at {where} refused an operation: {exc.reply_code} {exc.reply_text}"
        ) from None
    except (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionWrongStateError) as exc:
        raise BrokerConnectionError(
            f"cannot reach RabbitMQ at {target.host}:{target.port} "
            f"(vhost {target.vhost!r}): {_reason(exc)}"
        ) from None
    except pika.exceptions.AMQPError as exc:
        raise BrokerError(f"RabbitMQ at {where}: {_reason(exc)}") from None
    except OSError as exc:
        raise BrokerConnectionError(
            f"cannot reach RabbitMQ at {target.host}:{target.port}: {exc}"
        ) from None


def _reason(exc: BaseException) -> str:
    return ", ".join(str(arg) for arg in exc.args) or type(exc).__name__


def install_float_codec() -> None:
    """Make pika encode floats as AMQP doubles and decode doubles/floats exactly (once)."""
    if getattr(pika.data.encode_value, "taskframe_floats", False):
        return
    encode_value: Callable[[list[bytes], Any], int] = pika.data.encode_value
    decode_value: Callable[[bytes, int], tuple[Any, int]] = pika.data.decode_value

    def encode_with_floats(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, float):
            pieces.append(struct.pack(">cd", b"d", value))
            return 9
        return encode_value(pieces, value)

    def decode_with_floats(encoded: bytes, offset: int) -> tuple[Any, int]:
        kind = encoded[offset : offset + 1]
        if kind == b"d":
            return struct.unpack_from(">d", encoded, offset + 1)[0], offset + 9
        if kind == b"f":
            return struct.unpack_from(">f", encoded, offset + 1)[0], offset + 5
        return decode_value(encoded, offset)

    encode_with_floats.taskframe_floats = True  # type: ignore[attr-defined]  # idempotence mark
    pika.data.encode_value = encode_with_floats
    pika.data.decode_value = decode_with_floats


class FrameWriter:
    """Sends one connection's frames in as few ``send()`` calls as possible (see the module
    docstring). Lives as long as the connection and is used on its thread only."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self._impl: Any = connection._impl  # the SelectConnection under the blocking facade
        transport = self._impl._transport
        self._direct = transport is not None and not isinstance(transport._sock, ssl.SSLSocket)
        self._held: list[bytes] | None = None
        self._held_bytes = 0
        self._impl._output_marshaled_frames = self._output

    def _output(self, frames: Sequence[bytes]) -> None:
        """pika's ``Connection._output_marshaled_frames``, with the frames of one call joined."""
        data = b"".join(frames)
        self._impl.frames_sent += len(frames)
        self._impl.bytes_sent += len(data)
        if self._held is None:
            self._write(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= HELD_BYTES:
            self._release()

    def _write(self, data: bytes) -> None:
        """Send at once what the socket takes when nothing waits ahead (a queued frame would
        be overtaken); the rest joins pika's buffer, whose writer then sends it or reports
        the socket's error."""
        transport = self._impl._transport
        if self._direct and transport is not None and transport.get_write_buffer_size() == 0:
            try:
                sent = transport._sock.send(data)
            except OSError:
                sent = 0
            data = data[sent:]
        if data:
            self._impl._adapter_emit_data(data)

    def _release(self) -> None:
        if self._held:
            held, self._held = self._held, []
            self._held_bytes = 0
            self._write(b"".join(held))

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Gather the frames written inside and send them together on the way out (the
        outermost of nested ``holding`` blocks sends). Nothing inside may wait for an answer
        from RabbitMQ: its request would still be held."""
        if self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
        finally:
            self._release()
            self._held = None

    @property
    def pending(self) -> bool:
        """Whether pika's buffer still holds frames for its I/O loop to send."""
        transport = self._impl._transport
        return transport is not None and transport.get_write_buffer_size() > 0
