"""Beat's state and lease lock in Redis, for beats on several hosts.

URL: the broker's ``redis://[:password@]host[:port][/db]`` or ``rediss://...``.
Options: ``prefix`` (str, default ``"taskframe:beat:"``) to run several schedules on one
database. The contract and the meaning of each operation are in ``taskframe.beat.store``.

Keys:

- ``<prefix>due``: hash, entry name → last due time fired (integer microseconds, UTC epoch)
- ``<prefix>fingerprint``: hash, entry name → fingerprint of the schedule that fired it
- ``<prefix>lease``: string ``"<expires_us> <owner>"``

Every read-compare-write runs as one Lua script, so it is atomic on the server. Lease expiry is
compared with the caller's clock, like the SQLite store, so a fake clock drives it in tests.
Redis errors are raised as ``BrokerConnectionError`` / ``BrokerError``.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from taskframe.beat.store import BeatStore, EntryState, from_us, to_us
from taskframe.brokers.redis.client import Script
from taskframe.brokers.redis.connection import connect, parse_url, translate_errors

__all__ = ["RedisBeatStore"]

_ENSURE = """
local due = redis.call('HGET', KEYS[1], ARGV[1])
if due and redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then return due end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return ARGV[3]
"""

_CLAIM = """
local due = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if due == nil or due >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_UNCLAIM = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 0
"""

_ACQUIRE = """
local lease = redis.call('GET', KEYS[1])
if lease then
  local space = string.find(lease, ' ', 1, true)
  local expires = tonumber(string.sub(lease, 1, space - 1))
  if string.sub(lease, space + 1) ~= ARGV[1] and expires > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3] .. ' ' .. ARGV[1])
return 1
"""

_RELEASE = """
local lease = redis.call('GET', KEYS[1])
if lease and string.sub(lease, string.find(lease, ' ', 1, true) + 1) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisBeatStore(BeatStore):
    """Beat state in Redis (module docstring)."""

    def __init__(self, url: str, *, prefix: str = "taskframe:beat:") -> None:
        self.url = url
        self._due_key = f"{prefix}due"
        self._fingerprint_key = f"{prefix}fingerprint"
        self._lease_key = f"{prefix}lease"
        self._target = parse_url(url)
        self._client = connect(self._target, {"socket_timeout": 10.0})
        self._ensure = Script(_ENSURE)
        self._claim = Script(_CLAIM)
        self._unclaim = Script(_UNCLAIM)
        self._acquire = Script(_ACQUIRE)
        self._release = Script(_RELEASE)

    def _errors(self) -> AbstractContextManager[None]:
        return translate_errors(self._target)

    def states(self) -> dict[str, EntryState]:
        with self._errors():
            pipe = self._client.pipeline()
            pipe.add("HGETALL", self._due_key).add("HGETALL", self._fingerprint_key)
            dues, fingerprints = (_mapping(reply) for reply in pipe.execute())
        return {
            name.decode(): EntryState(from_us(int(due)), fingerprints.get(name, b"").decode())
            for name, due in dues.items()
        }

    def ensure_entry(self, name: str, fingerprint: str, now: datetime) -> EntryState:
        with self._errors():
            due = self._ensure(
                self._client,
                [self._due_key, self._fingerprint_key],
                [name, fingerprint, to_us(now)],
            )
        return EntryState(from_us(int(due)), fingerprint)

    def claim(self, name: str, due: datetime) -> bool:
        with self._errors():
            return bool(self._claim(self._client, [self._due_key], [name, to_us(due)]))

    def unclaim(self, name: str, due: datetime, previous: datetime) -> None:
        with self._errors():
            self._unclaim(self._client, [self._due_key], [name, to_us(due), to_us(previous)])

    def remove_except(self, names: Collection[str]) -> list[str]:
        keep = set(names)
        with self._errors():
            stored = [name.decode() for name in self._client.execute("HKEYS", self._due_key)]
            gone = [name for name in stored if name not in keep]
            if gone:
                pipe = self._client.pipeline()
                pipe.add("HDEL", self._due_key, *gone).add("HDEL", self._fingerprint_key, *gone)
                pipe.execute()
        return gone

    def acquire_lease(self, owner: str, now: datetime, ttl: float) -> bool:
        expires = to_us(now) + int(ttl * 1_000_000)
        with self._errors():
            return bool(
                self._acquire(self._client, [self._lease_key], [owner, to_us(now), expires])
            )

    def release_lease(self, owner: str) -> None:
        with self._errors():
            self._release(self._client, [self._lease_key], [owner])

    def lease_holder(self, now: datetime) -> str | None:
        with self._errors():
            lease = self._client.execute("GET", self._lease_key)
        if lease is None:
            return None
        expires, _, owner = lease.decode().partition(" ")
        return owner if int(expires) > to_us(now) else None

    def close(self) -> None:
        with self._errors():
            self._client.close()


def _mapping(reply: Any) -> dict[bytes, bytes]:
    """HGETALL's reply: a map on RESP3, a flat list of keys and values on RESP2."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))
