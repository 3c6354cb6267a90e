"""Celery's side: ``celery -A benchmarks.apps.celery_app worker -c 2 --pool prefork -l WARNING``.

Celery's defaults everywhere (prefetch multiplier 4, early acks, gossip, mingle and heartbeats
on) except the queue name and ``broker_connection_retry_on_startup`` (set only to silence
Celery's deprecation warning); on SQS the region and queue-name prefix of the run's moto
server; publisher confirms (kombu's ``confirm_publish``, off by default) only for the
confirmed row.
"""

from __future__ import annotations

import os

from celery import Celery

from benchmarks.apps import tasks
from benchmarks.settings import (
    BENCH_QUEUE,
    ENV_BACKEND_URL,
    ENV_BROKER_URL,
    ENV_CONFIRM_PUBLISH,
    ENV_QUEUE,
    SQS_QUEUE_PREFIX,
)

__all__ = ["app", "build"]


def build(
    broker_url: str, backend_url: str, queue: str, *, confirm_publish: bool = False
) -> Celery:
    app = Celery("bench", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.task_default_queue = queue
    app.conf.broker_connection_retry_on_startup = True
    if confirm_publish:
        app.conf.broker_transport_options = {"confirm_publish": True}
    if broker_url.startswith("sqs://"):
        app.conf.broker_transport_options = {
            "region": "us-east-1",
            "queue_name_prefix": SQS_QUEUE_PREFIX,
        }
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
