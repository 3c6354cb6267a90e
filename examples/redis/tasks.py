"""A taskframe project on Redis: Redis carries the messages and keeps the results.

Start Redis, then, from this folder::

    taskframe -A tasks worker -l INFO       # terminal 1 (python -m taskframe ... works too)
    python client.py                        # terminal 2: sends tasks, prints their results

``REDIS_URL`` picks the server and database (default ``redis://127.0.0.1:6379/0``). A Celery
worker started with ``celery -A tasks worker`` on a Celery app with the same task names
could serve the same queue: the keys and messages are Celery's.
"""

from __future__ import annotations

import os
from typing import Any

from taskframe import Taskframe

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Taskframe(
    "redis_example",
    broker=REDIS_URL,
    backend=REDIS_URL,
    task_default_queue="redis-example",
    result_expires=3600,
    broker_transport_options={"visibility_timeout": 600},
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(numbers: list[int]) -> int:
    """The chord body: called once, with every header result, when the last one is in."""
    return sum(numbers)


@app.task(bind=True, max_retries=3)
def fetch_price(self: Any, item: str) -> str:
    """Fails on its first try (a flaky supplier), then succeeds: shows a retry with countdown,
    which waits in Redis, not in the worker's memory."""
    if self.request.retries == 0:
        raise self.retry(countdown=0.5, exc=ConnectionError("supplier did not answer"))
    return f"{item}: 3 (after {self.request.retries} retry)"


@app.task(acks_late=True)
def report(rows: int) -> str:
    """Acked only once done; while it runs, the worker keeps it invisible to other workers."""
    return f"report of {rows} rows"
