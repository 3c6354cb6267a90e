"""The taskframe side: ``python -m taskframe -A interop_apps.taskframe_app worker``."""

from __future__ import annotations

from interop_apps.tasks import define, redis_url
from taskframe import Taskframe

app = Taskframe("interop", broker=redis_url(), backend=redis_url())
define(app, "taskframe")
