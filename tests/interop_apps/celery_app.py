"""The Celery 5 side: ``python -m celery -A interop_apps.celery_app worker``."""

from __future__ import annotations

from celery import Celery

from interop_apps.tasks import define, redis_url

app = Celery("interop", broker=redis_url(), backend=redis_url())
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
)
define(app, "celery")
