"""The task side of the count: each finished task counts itself in Redis.

It speaks just enough RESP over a bare socket for its two commands, so the counter loads no
Redis client library into any framework's worker: worker memory is one of the measurements,
and a client imported for the count would weigh on every framework that does not already
load one. Connects lazily, once per process, so prefork children never share a socket.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CHORD_KEY",
    "COUNTER_URL_ENV",
    "COUNT_KEY",
    "STAMPS_KEY",
    "TARGET_KEY",
    "chord_done",
    "hit",
]

COUNTER_URL_ENV = "BENCH_COUNTER_URL"
COUNT_KEY = "bench:count"
TARGET_KEY = "bench:target"
STAMPS_KEY = "bench:stamps"
CHORD_KEY = "bench:chord"

HIT_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or n == tonumber(redis.call('GET', KEYS[2]) or '-1') then
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[3], n, now[1] .. '.' .. string.format('%06d', tonumber(now[2])))
end
return n
"""
HIT_SHA = hashlib.sha1(HIT_SCRIPT.encode()).hexdigest()


class _Line:
    """One socket per process to the counter's Redis."""

    def __init__(self) -> None:
        self.pid = 0
        self.sock: socket.socket | None = None
        self._reader: Any = None

    def call(self, *args: str | bytes) -> bytes:
        """Send one command; its reply line (``:1``, ``+OK``, ``-ERR ...``)."""
        if self.sock is None or self.pid != os.getpid():
            self._connect()
        assert self.sock is not None
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode() if isinstance(arg, str) else arg
            parts += [b"$%d\r\n" % len(data), data, b"\r\n"]
        self.sock.sendall(b"".join(parts))
        return self._reader.readline().rstrip(b"\r\n")

    def _connect(self) -> None:
        url = urlsplit(os.environ[COUNTER_URL_ENV])
        self.pid = os.getpid()
        self.sock = socket.create_connection((url.hostname or "localhost", url.port or 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self.sock.makefile("rb")
        db = url.path.strip("/") or "0"
        if db != "0":
            self.call("SELECT", db)


_line = _Line()


def hit() -> int:
    """Count one finished task (one round trip); returns the new count."""
    keys = (COUNT_KEY, TARGET_KEY, STAMPS_KEY)
    reply = _line.call("EVALSHA", HIT_SHA, "3", *keys)
    if reply.startswith(b"-NOSCRIPT"):
        reply = _line.call("EVAL", HIT_SCRIPT, "3", *keys)
    if not reply.startswith(b":"):
        raise RuntimeError(f"the counter's Redis refused a hit: {reply!r}")
    return int(reply[1:])


def chord_done() -> None:
    """Tell the harness the chord body ran."""
    reply = _line.call("LPUSH", CHORD_KEY, b"done")
    if not reply.startswith(b":"):
        raise RuntimeError(f"the counter's Redis refused the chord mark: {reply!r}")
