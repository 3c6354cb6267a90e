"""Counting finished tasks outside the frameworks, in Redis.

Keys (in the run's own Redis db): ``bench:count`` (INCR per finished task), ``bench:target``
(the count the harness waits for), ``bench:stamps`` (hash count -> server time of the first
and of the target completion), ``bench:chord`` (list the chord body pushes to).

The task side is :mod:`benchmarks.task_counter`; this is the harness side.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from benchmarks.task_counter import CHORD_KEY, COUNT_KEY, STAMPS_KEY, TARGET_KEY

__all__ = ["Counter"]


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
