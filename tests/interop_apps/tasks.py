"""The interop tasks, registered on either a Celery or a taskframe app by :func:`define`.

Each task records what it did in Redis itself (not through either framework), so the tests
count runs and read run times without trusting the framework under test.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

URL_VARIABLE = "INTEROP_REDIS_URL"


def redis_url() -> str:
    return os.environ.get(URL_VARIABLE, "redis://127.0.0.1:6379/9")


def define(app: Any, side: str) -> None:
    """Register the interop tasks on ``app`` (Celery or taskframe: the decorator is the same)."""
    client = redis.Redis.from_url(redis_url())

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="interop.describe")
    def describe(value: Any) -> dict[str, Any]:
        """A nested result, to read on the other side."""
        return {"echo": value, "side": side, "items": [1, 2.5, "three", None, True]}

    @app.task(name="interop.fail")
    def fail(text: str) -> None:
        raise ValueError(text)

    @app.task(name="interop.stamp")
    def stamp(key: str) -> float:
        """Record one run and when it happened."""
        now = time.time()
        client.rpush(key, json.dumps({"at": now, "side": side}))
        return now

    @app.task(name="interop.record")
    def record(key: str, label: str) -> str:
        client.rpush(key, label)
        return label

    @app.task(name="interop.flaky", bind=True, max_retries=5)
    def flaky(self: Any, key: str, fails: int) -> dict[str, Any]:
        """Fail (by retrying with a countdown) ``fails`` times, then succeed."""
        attempt = int(client.incr(key))
        if attempt <= fails:
            raise self.retry(countdown=1, exc=RuntimeError(f"attempt {attempt} fails"))
        return {"attempts": attempt, "retries": self.request.retries, "side": side}
