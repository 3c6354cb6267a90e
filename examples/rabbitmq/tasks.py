"""A taskframe project on RabbitMQ: RabbitMQ carries the messages, Redis keeps the results.

Start RabbitMQ and Redis, then, from this folder::

    taskframe -A tasks worker -l INFO       # terminal 1 (python -m taskframe ... works too)
    python client.py                        # terminal 2: sends tasks, prints their results

``AMQP_URL`` picks the RabbitMQ server and vhost (default ``amqp://guest:guest@127.0.0.1:5672//``)
and ``REDIS_URL`` the result store (default ``redis://127.0.0.1:6379/0``). Results go to Redis
because RabbitMQ does not keep results: the client and the worker are separate processes, so
they need a store both can read.
"""

from __future__ import annotations

import os
from typing import Any

from taskframe import Taskframe

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Taskframe(
    "rabbitmq_example",
    broker=AMQP_URL,
    backend=REDIS_URL,
    # A queue of its own: it is declared with x-max-priority, and an existing queue (Celery's
    # default "celery" has no arguments) keeps the arguments it was first declared with.
    task_default_queue="rabbitmq-example",
    result_expires=3600,
    broker_transport_options={
        "max_priority": 9,  # priorities work on queues this app creates; 9 runs first
        "confirm_publish": True,  # the default, spelled out: delay() returns once RabbitMQ has it
    },
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
    which waits in RabbitMQ's delay queues, not in the worker's memory."""
    if self.request.retries == 0:
        raise self.retry(countdown=0.5, exc=ConnectionError("supplier did not answer"))
    return f"{item}: 3 (after {self.request.retries} retry)"


@app.task(acks_late=True)
def report(rows: int) -> str:
    """Acked only once done: if the worker dies mid-task, RabbitMQ hands the message to another
    worker as soon as the connection drops (no visibility timeout to wait out)."""
    return f"report of {rows} rows"
