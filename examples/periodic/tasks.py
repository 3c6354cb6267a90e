"""A periodic project: a weekday-morning crontab entry and a five-minute interval entry.

From this directory::

    taskframe -A tasks worker        # runs the tasks
    taskframe -A tasks beat          # sends them on schedule (start two: only one fires)
    taskframe -A tasks beat --list   # shows each entry's next run time
    taskframe -A tasks worker -B     # or: a worker with beat inside, for small setups
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from taskframe import Taskframe
from taskframe.schedules import crontab

app = Taskframe("periodic")
app.conf.timezone = "Europe/London"
app.conf.beat_schedule = {
    "morning-report": {
        "task": "periodic.send_report",
        "schedule": crontab(hour=7, minute=30, day_of_week="mon-fri"),
        "args": ("daily",),
    },
    "refresh-cache": {
        "task": "periodic.refresh_cache",
        "schedule": timedelta(minutes=5),
        "options": {"expires": 240},
    },
}


@app.task(name="periodic.send_report")
def send_report(kind: str) -> str:
    return f"{kind} report at {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"


@app.task(name="periodic.refresh_cache")
def refresh_cache() -> int:
    """Pretend to refresh a cache; returns how many keys it refreshed."""
    return 42
