"""Time limits: a long task that cleans up at its soft limit, and one that never returns.

The soft limit raises ``SoftTimeLimitExceeded`` inside the task, which may catch it, save its
progress and return. The hard limit kills the child process running the task (prefork pool),
replaces it, and fails the task with ``TimeLimitExceeded``; the worker goes on.
"""

from __future__ import annotations

import time

from taskframe import Taskframe
from taskframe.exceptions import SoftTimeLimitExceeded

app = Taskframe("tasks")


@app.task(soft_time_limit=0.5, time_limit=5)
def crunch(items: int) -> str:
    done = 0
    try:
        for _ in range(items):
            time.sleep(0.01)
            done += 1
    except SoftTimeLimitExceeded:
        return f"stopped at the soft limit after {done} of {items} items; progress saved"
    return f"all {items} items done"


@app.task(time_limit=0.5)
def stuck() -> None:
    while True:
        time.sleep(0.1)
