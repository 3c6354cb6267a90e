"""Beat's state and lease lock in Redis (redis-py), for beats on several hosts.

URL: the broker's ``redis://[:password@]host[:port][/db]`` or ``rediss://...``.
Options: ``prefix`` (str, default ``"taskframe:beat:"``) to run several schedules on one
database. The contract and the meaning of each operation are in ``taskframe.beat.store``.

Keys:

- ``<prefix>due``: hash, entry name → last due time fired (integer microseconds, UTC epoch)
- ``<prefix>fingerprint``: hash, entry name → fingerprint of the schedule that fired it
- ``<prefix>lease``: string ``"<expires_us> <owner>"``

Every read-compare-write runs as one Lua script, so it is atomic on the server. Lease expiry is
compared with the caller's clock, like the SQLite store, so a fake clock drives it in tests.
redis-py errors are raised as ``BrokerConnectionError`` / ``BrokerError``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from taskframe.beat.store import BeatStore, EntryState, from_us, to_us
from taskframe.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured

try:
    import redis
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImproperlyConfigured(
        "the Redis beat store needs redis-py: pip install 'taskframe[redis]'"
    ) from exc

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
        with self._errors():
            self._client: Any = redis.Redis.from_url(url, socket_timeout=10.0)
            self._ensure = self._client.register_script(_ENSURE)
            self._claim = self._client.register_script(_CLAIM)
            self._unclaim = self._client.register_script(_UNCLAIM)
            self._acquire = self._client.register_script(_ACQUIRE)
            self._release = self._client.register_script(_RELEASE)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerConnectionError(f"beat store: cannot reach Redis: {exc}") from exc
        except redis.RedisError as exc:
            raise BrokerError(f"beat store (Redis): {exc}") from exc

    def states(self) -> dict[str, EntryState]:
        with self._errors():
            pipe = self._client.pipeline()
            pipe.hgetall(self._due_key)
            pipe.hgetall(self._fingerprint_key)
            dues, fingerprints = pipe.execute()
        return {
            name.decode(): EntryState(from_us(int(due)), fingerprints.get(name, b"").decode())
            for name, due in dues.items()
        }

    def ensure_entry(self, name: str, fingerprint: str, now: datetime) -> EntryState:
        with self._errors():
            due = self._ensure(
                keys=[self._due_key, self._fingerprint_key],
                args=[name, fingerprint, to_us(now)],
            )
        return EntryState(from_us(int(due)), fingerprint)

    def claim(self, name: str, due: datetime) -> bool:
        with self._errors():
            return bool(self._claim(keys=[self._due_key], args=[name, to_us(due)]))

    def unclaim(self, name: str, due: datetime, previous: datetime) -> None:
        with self._errors():
            self._unclaim(keys=[self._due_key], args=[name, to_us(due), to_us(previous)])

    def remove_except(self, names: Collection[str]) -> list[str]:
        keep = set(names)
        with self._errors():
            stored = [name.decode() for name in self._client.hkeys(self._due_key)]
            gone = [name for name in stored if name not in keep]
            if gone:
                pipe = self._client.pipeline()
                pipe.hdel(self._due_key, *gone)
                pipe.hdel(self._fingerprint_key, *gone)
                pipe.execute()
        return gone

    def acquire_lease(self, owner: str, now: datetime, ttl: float) -> bool:
        expires = to_us(now) + int(ttl * 1_000_000)
        with self._errors():
            return bool(self._acquire(keys=[self._lease_key], args=[owner, to_us(now), expires]))

    def release_lease(self, owner: str) -> None:
        with self._errors():
            self._release(keys=[self._lease_key], args=[owner])

    def lease_holder(self, now: datetime) -> str | None:
        with self._errors():
            lease = self._client.get(self._lease_key)
        if lease is None:
            return None
        expires, _, owner = lease.decode().partition(" ")
        return owner if int(expires) > to_us(now) else None

    def close(self) -> None:
        with self._errors():
            self._client.close()
