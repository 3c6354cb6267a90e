"""Counting finished tasks outside the frameworks, in Redis.

Keys (in the run's own Redis db): ``bench:count`` (INCR per finished task), ``bench:target``
(the count the harness waits for), ``bench:stamps`` (hash count -> server time of the first
and of the target completion), ``bench:chord`` (list the chord body pushes to).

The task side (:func:`hit`, :func:`chord_done`) reads ``BENCH_COUNTER_URL`` from the
environment and connects lazily, once per process, so prefork children never share a socket.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

__all__ = ["COUNTER_URL_ENV", "Counter", "chord_done", "hit"]

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


class _TaskSide:
    """The per-process Redis client the tasks use."""

    def __init__(self) -> None:
        self.pid = 0
        self.client: redis.Redis[bytes] | None = None
        self.script: Any = None

    def connect(self) -> tuple[redis.Redis[bytes], Any]:
        if self.client is None or self.pid != os.getpid():
            self.pid = os.getpid()
            self.client = redis.Redis.from_url(os.environ[COUNTER_URL_ENV])
            self.script = self.client.register_script(HIT_SCRIPT)
        return self.client, self.script


_task_side = _TaskSide()


def hit() -> int:
    """Count one finished task (one round trip); returns the new count."""
    _client, script = _task_side.connect()
    return int(script(keys=[COUNT_KEY, TARGET_KEY, STAMPS_KEY]))


def chord_done() -> None:
    """Tell the harness the chord body ran."""
    client, _script = _task_side.connect()
    client.lpush(CHORD_KEY, b"done")


class Counter:
    """The harness side: arm a target, wait for it, read the completion stamps."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def reset(self, target: int) -> None:
        pipe = self.client.pipeline()
        pipe.delete(COUNT_KEY, STAMPS_KEY, CHORD_KEY)
        pipe.set(TARGET_KEY, target)
        pipe.execute()

    def count(self) -> int:
        return int(self.client.get(COUNT_KEY) or 0)

    def wait(self, target: int, timeout: float, alive: Any = None) -> tuple[float, float]:
        """Block until ``target`` tasks finished; returns the server times of the first and
        the last completion. ``alive()`` returning False (the worker died) stops the wait."""
        deadline = time.monotonic() + timeout
        while (done := self.count()) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of {target} tasks finished in {timeout:.0f} s")
            if alive is not None and not alive():
                raise RuntimeError(f"the worker exited after {done} of {target} tasks")
            time.sleep(0.02)
        first, last = self.client.hmget(STAMPS_KEY, ["1", str(target)])
        if first is None or last is None:
            raise RuntimeError("completion stamps missing: was the target armed?")
        return float(first), float(last)

    def wait_chord(self, timeout: float) -> None:
        if self.client.brpop([CHORD_KEY], timeout=timeout) is None:
            raise TimeoutError(f"the chord body did not run within {timeout:.0f} s")

    def close(self) -> None:
        self.client.close()
