"""Retries with exponential backoff: a task that calls a flaky service.

``autoretry_for`` retries on the listed errors, waiting ``retry_backoff`` * 2**retries seconds
(capped by ``retry_backoff_max``; ``retry_jitter`` spreads them out). A task that runs out of
retries is dead-lettered with its last error: ``taskframe -A tasks dlq list`` shows it and
``taskframe -A tasks dlq replay --all`` sends it again with a fresh retry budget.
"""

from __future__ import annotations

from pathlib import Path

from taskframe import Taskframe

app = Taskframe("tasks")
ATTEMPTS = Path(__file__).with_name("attempts.log")


class ServiceUnavailable(Exception):
    """The remote service said 503."""


def call_service(order: str) -> str:
    """A stand-in for a remote call that fails twice per order before it answers."""
    with ATTEMPTS.open("a+") as log:
        log.seek(0)
        tries = log.read().split().count(order)
        log.write(f"{order}\n")
    if order == "doomed" or tries < 2:
        raise ServiceUnavailable(f"service unavailable for {order} (try {tries + 1})")
    return f"{order}: shipped"


@app.task(
    autoretry_for=(ServiceUnavailable,),
    max_retries=3,
    retry_backoff=0.05,
    retry_backoff_max=1.0,
    retry_jitter=False,
)
def ship(order: str) -> str:
    return call_service(order)
