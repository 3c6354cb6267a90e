"""A taskframe project on Amazon SQS: SQS carries the messages, Redis keeps the results.

Start an SQS-compatible server (``moto_server -p 9324``, or elasticmq, which listens on 9324)
and Redis, then, from this folder::

    taskframe -A tasks worker -l INFO       # terminal 1 (python -m taskframe ... works too)
    python client.py                        # terminal 2: sends tasks, prints their results

``SQS_URL`` picks the server (default ``sqs://test:test@127.0.0.1:9324``: the host is the
endpoint, over http); on AWS use ``sqs://`` (boto3's credentials) or
``sqs://?region=eu-west-1``. ``REDIS_URL`` picks the result store (default
``redis://127.0.0.1:6379/0``): SQS carries messages only, so results need a store of their own.
"""

from __future__ import annotations

import os
from typing import Any

from taskframe import Taskframe

SQS_URL = os.environ.get("SQS_URL", "sqs://test:test@127.0.0.1:9324")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Taskframe(
    "sqs_example",
    broker=SQS_URL,
    backend=REDIS_URL,
    task_default_queue="sqs-example",  # created on first use (SQS name: "sqs-example")
    result_expires=3600,
    # Seconds a received message stays hidden from other workers; the worker keeps extending
    # it while a task runs, so this only bounds how long a crashed worker's message waits.
    broker_transport_options={"visibility_timeout": 60},
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
    which SQS holds (DelaySeconds), not the worker's memory."""
    if self.request.retries == 0:
        raise self.retry(countdown=1, exc=ConnectionError("supplier did not answer"))
    return f"{item}: 3 (after {self.request.retries} retry)"


@app.task(acks_late=True)
def report(rows: int) -> str:
    """Deleted from SQS only once done: if the worker dies mid-task, SQS hands the message to
    another worker when its visibility timeout ends."""
    return f"report of {rows} rows"
