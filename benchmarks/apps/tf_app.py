"""taskframe's side: ``taskframe -A benchmarks.apps.tf_app worker -c 2 -l WARNING -Q <queue>``."""

from __future__ import annotations

import os

from benchmarks.apps import tasks
from benchmarks.settings import (
    BENCH_QUEUE,
    ENV_BACKEND_URL,
    ENV_BROKER_URL,
    ENV_CONFIRM_PUBLISH,
    ENV_QUEUE,
)
from taskframe import Taskframe

__all__ = ["app", "build"]


def build(
    broker_url: str, backend_url: str, queue: str, *, confirm_publish: bool = False
) -> Taskframe:
    """An app with the three benchmark tasks on ``queue``; Celery's defaults otherwise, which
    on RabbitMQ means no publisher confirms unless ``confirm_publish`` (taskframe's own
    default is confirms on)."""
    options = {"confirm_publish": confirm_publish} if broker_url.startswith("amqp") else {}
    app = Taskframe(
        "bench",
        broker=broker_url,
        backend=backend_url,
        set_as_current=False,
        task_default_queue=queue,
        broker_transport_options=options,
    )
    app.task(name=tasks.NAMES["noop"], ignore_result=True)(tasks.noop)
    app.task(name=tasks.NAMES["echo"])(tasks.echo)
    app.task(name=tasks.NAMES["chord_done"])(tasks.chord_done)
    return app


app = build(
    os.environ.get(ENV_BROKER_URL, "redis://127.0.0.1:6379/10"),
    os.environ.get(ENV_BACKEND_URL, "redis://127.0.0.1:6379/10"),
    os.environ.get(ENV_QUEUE, BENCH_QUEUE),
    confirm_publish=os.environ.get(ENV_CONFIRM_PUBLISH) == "1",
)
