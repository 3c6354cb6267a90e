"""RESP, Redis's wire protocol: commands packed into one write, replies read from a socket.

taskframe talks to Redis through this small client of its own rather than redis-py: the
worker needs a dozen commands, Lua scripts, pipelines and pub/sub, and importing redis-py
costs every worker process about 19 MiB of memory (it loads asyncio, its cluster and module
commands and ``importlib.metadata``) and each command some 10 µs of wrapper code.

Replies come back as Python values: bulk and simple strings as ``bytes``, integers as
``int``, arrays, sets and pushes as ``list``, maps as ``dict``, nulls as ``None``, RESP3
doubles and booleans as ``float`` and ``bool``. An error reply comes back as a
:class:`ResponseError` *value* (raised by the caller for a single command, kept in place in a
pipeline's or a transaction's replies).
"""

from __future__ import annotations

import math
import select
import socket
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "Arg",
    "DataError",
    "NoScriptError",
    "ReadOnlyError",
    "Reader",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "ResponseError",
    "error_for",
    "pack",
]

Arg = str | bytes | int | float
"""What a command argument may be (a float is sent as its ``repr``, as redis-py does)."""

CRLF = b"\r\n"
CHUNK = 65536


class RedisError(Exception):
    """Anything that went wrong talking to Redis."""


class RedisConnectionError(RedisError):
    """The server could not be reached, or the connection broke."""


class RedisTimeoutError(RedisConnectionError):
    """The server did not answer within the socket timeout; the connection is dropped."""


class ResponseError(RedisError):
    """The server answered with an error."""


class NoScriptError(ResponseError):
    """EVALSHA of a script the server does not hold (a restarted or flushed server)."""


class ReadOnlyError(ResponseError):
    """A write sent to a replica (for example the old master after a Sentinel failover)."""


class DataError(RedisError):
    """An argument that cannot be sent (not str, bytes, int or float)."""


def error_for(text: str) -> ResponseError:
    if text.startswith("NOSCRIPT"):
        return NoScriptError(text)
    if text.startswith("READONLY"):
        return ReadOnlyError(text)
    return ResponseError(text)


def _encode(arg: object) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bool):
        raise DataError(f"cannot send a bool to Redis ({arg!r}): send 0/1 or a string")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode("ascii")
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    raise DataError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")


def pack(commands: Iterable[Sequence[Arg]]) -> bytes:
    """``commands`` as one RESP write."""
    parts: list[bytes] = []
    append = parts.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if type(arg) is bytes else _encode(arg)
            append(b"$%d\r\n" % len(data))
            append(data)
            append(CRLF)
    return b"".join(parts)


class Reader:
    """Replies from one socket, buffered: one ``recv`` often holds many replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self._position = 0
        self._poller = select.poll()  # not select(): it fails on descriptors past 1023
        self._poller.register(sock, select.POLLIN)

    def readable(self, timeout: float | None) -> bool:
        """True once a reply (or part of one) is waiting; ``timeout`` None waits forever."""
        if self._position < len(self._buffer):
            return True
        if getattr(self.sock, "pending", None) is not None and self.sock.pending():  # type: ignore[attr-defined]
            return True  # TLS: bytes already decrypted, invisible to poll
        wait = -1 if timeout is None else math.ceil(max(0.0, timeout) * 1000)
        return bool(self._poller.poll(wait))

    def read(self) -> Any:
        """The next reply; a stream that is not RESP is a :class:`RedisConnectionError`."""
        try:
            return self._read()
        except ValueError as exc:  # a length or number that is not one
            raise RedisConnectionError(f"malformed reply from Redis: {exc}") from exc

    def _read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind in (b"*", b">", b"~"):
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"-":
            return error_for(rest.decode("utf-8", "replace"))
        return self._resp3(kind, rest)

    def _resp3(self, kind: bytes, rest: bytes) -> Any:
        if kind == b"_":
            return None
        if kind == b"%":
            pairs = [(self._read(), self._read()) for _ in range(int(rest))]
            return dict(pairs)
        if kind == b",":
            return float(rest)
        if kind == b"#":
            return rest == b"t"
        if kind == b"(":
            return int(rest)
        if kind == b"=":
            return self._exact(int(rest))[4:]  # drop the "txt:" format prefix
        if kind == b"!":
            return error_for(self._exact(int(rest)).decode("utf-8", "replace"))
        if kind == b"|":  # attributes: metadata ahead of the reply they describe
            for _ in range(2 * int(rest)):
                self._read()
            return self._read()
        raise RedisConnectionError(f"unexpected reply from Redis: {kind + rest!r}")

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(CRLF, self._position)
            if end >= 0:
                line = self._buffer[self._position : end]
                self._position = end + 2
                return line
            self._fill()

    def _exact(self, size: int) -> bytes:
        end = self._position + size
        if len(self._buffer) < end + 2:
            self._fill(end + 2 - len(self._buffer))
            end = self._position + size
        data = self._buffer[self._position : end]
        self._position = end + 2
        return data

    def _fill(self, wanted: int = 1) -> None:
        """Read at least ``wanted`` more bytes, keeping what is unread."""
        pieces = [self._buffer[self._position :]]
        got = 0
        while got < wanted:
            try:
                chunk = self.sock.recv(max(CHUNK, wanted - got))
            except TimeoutError as exc:
                raise RedisTimeoutError("timed out reading from Redis") from exc
            except OSError as exc:
                raise RedisConnectionError(f"error reading from Redis: {exc}") from exc
            if not chunk:
                raise RedisConnectionError("connection closed by the Redis server")
            pieces.append(chunk)
            got += len(chunk)
        self._buffer = b"".join(pieces)
        self._position = 0
