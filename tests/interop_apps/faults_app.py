"""The app the Redis fault tests run: quick reconnect backoff, and one task that notes each run
in a file (``FAULTS_RUN_LOG``), outside Redis and outside the framework."""

from __future__ import annotations

import os
import time

from interop_apps.tasks import redis_url
from taskframe import Taskframe

app = Taskframe(
    "faults",
    broker=redis_url(),
    backend=redis_url(),
    task_ignore_result=True,
    broker_connection_max_retries=int(os.environ.get("FAULTS_MAX_RETRIES", "3")),
    broker_transport_options={"interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.5},
)


@app.task(name="faults.mark")
def mark(number: int, pause: float = 0.0) -> None:
    """Take ``pause`` seconds, then append ``number`` to the run log (one short O_APPEND
    write per run, so runs in several processes cannot interleave)."""
    time.sleep(pause)
    descriptor = os.open(os.environ["FAULTS_RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(descriptor, f"{number}\n".encode())
    finally:
        os.close(descriptor)
