"""RabbitMQBroker and real kombu 5.7 / Celery 5.7 (py-amqp) on the same vhost.

Celery publishes and taskframe receives the very headers, properties and body Celery sent
(float ``timelimit`` included); taskframe publishes and kombu, Celery's worker-side parsing, a
real Celery prefork worker and a taskframe worker all take the message as their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from taskframe import Taskframe
from taskframe.brokers.rabbitmq import RabbitMQBroker

kombu = pytest.importorskip("kombu")
celery = pytest.importorskip("celery")
from celery.signals import before_task_publish  # noqa: E402
from celery.worker.request import Request  # noqa: E402

pytestmark = [pytest.mark.rabbitmq, pytest.mark.interop]


@pytest.fixture
def url(amqp_url: str) -> str:
    """Queues as Celery declares them by default: no ``x-max-priority``."""
    return amqp_url.split("?", 1)[0]


@pytest.fixture
def queue(url: str) -> Iterator[str]:
    name = f"tf-interop-{uuid.uuid4().hex[:10]}"
    yield name
    cleaner = RabbitMQBroker(url)
    cleaner.delete_queue(name)
    cleaner.close()


@pytest.fixture
def celery_app(url: str) -> Iterator[Any]:
    app = celery.Celery("interop", broker=url.replace("amqp://", "pyamqp://"), backend=None)

    @app.task(name="interop.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def test_celery_message_arrives_unchanged(celery_app: Any, url: str, queue: str) -> None:
    # Given a task message Celery (py-amqp) publishes with float time limits and an expiry
    sent: dict[str, Any] = {}

    def capture(**info: Any) -> None:
        sent.update(headers=dict(info["headers"]), body=info["body"], props=info["properties"])

    before_task_publish.connect(capture, weak=False)
    try:
        result = celery_app.send_task(
            "interop.add", (2, 3), queue=queue, time_limit=1.5, soft_time_limit=1, priority=3
        )
    finally:
        before_task_publish.disconnect(capture)
    # When taskframe receives it
    broker = RabbitMQBroker(url)
    try:
        [delivery] = broker.receive([queue], 1, 10)
        message = delivery.message
        # Then headers, properties and body are what Celery sent, floats intact
        assert message.headers == sent["headers"]
        assert message.headers["timelimit"] == [1.5, 1]
        assert isinstance(message.headers["timelimit"][0], float)
        assert json.loads(message.body) == json.loads(json.dumps(sent["body"]))
        assert message.properties["correlation_id"] == result.id
        assert message.properties["reply_to"] == sent["props"]["reply_to"]
        assert (message.properties["delivery_mode"], message.priority) == (2, 3)
        assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
        assert (delivery.queue, delivery.redelivered) == (queue, False)
        delivery.ack()
    finally:
        broker.close()


def test_taskframe_message_is_accepted_by_kombu_and_celery_parsing(
    celery_app: Any, url: str, queue: str
) -> None:
    # Given a task message taskframe publishes with a float hard time limit
    app = Taskframe("tf", broker=url, backend="memory://", set_as_current=False)
    task_id = app.send_task("interop.add", (2, 3), queue=queue, time_limit=2.5, soft_time_limit=1)
    app.close()
    # When kombu (py-amqp) consumes it and Celery's worker parses it
    with kombu.Connection(url.replace("amqp://", "pyamqp://")) as connection:
        simple = connection.SimpleQueue(
            kombu.Queue(queue, kombu.Exchange(queue, "direct"), routing_key=queue)
        )
        message = simple.get(timeout=10)
        # Then py-amqp reads the floats as floats and Celery takes the request as its own
        assert message.headers["timelimit"] == [2.5, 1]
        assert isinstance(message.headers["timelimit"][0], float)
        assert message.properties["correlation_id"] == task_id.id
        assert message.delivery_info["routing_key"] == queue
        request = Request(message, app=celery_app)
        assert (request.task_name, request.id) == ("interop.add", task_id.id)
        assert list(request.time_limits) == [2.5, 1]
        assert request.args == [2, 3]
        message.ack()
        simple.close()


CELERY_APP = """
from celery import Celery
app = Celery("interop", broker={broker!r}, backend={backend!r})
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)

@app.task(name="interop.limits", bind=True)
def limits(self, x):
    return {{"x": x, "timelimit": list(self.request.timelimit or [])}}
"""


def test_a_celery_prefork_worker_runs_a_task_with_float_time_limits(
    url: str, queue: str, tmp_path: Path
) -> None:
    # Given a real Celery worker (prefork, py-amqp) on the queue, results in files
    results = tmp_path / "results"
    results.mkdir()
    backend = f"file://{results}"
    (tmp_path / "celery_side.py").write_text(
        textwrap.dedent(
            CELERY_APP.format(broker=url.replace("amqp://", "pyamqp://"), backend=backend)
        )
    )
    log = tmp_path / "worker.log"
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    with log.open("wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_side", "worker", "-Q", queue,
             "-P", "prefork", "-c", "1", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "INFO"],
            cwd=tmp_path, env=environment, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    app = Taskframe("tf", broker=url, backend="memory://", set_as_current=False)
    try:
        # When taskframe sends it a task with float time limits, immediately and delayed
        now = app.send_task(
            "interop.limits", (1,), queue=queue, time_limit=30.5, soft_time_limit=20.25
        )
        later = app.send_task("interop.limits", (2,), queue=queue, countdown=0.3, time_limit=9.5)
        # Then the Celery worker runs both and sees the floats Celery itself would send
        done = [results / f"celery-task-meta-{task.id}" for task in (now, later)]
        wait_for(lambda: all(path.exists() for path in done), timeout=30)
        metas = [json.loads(path.read_bytes()) for path in done]
        assert [meta["status"] for meta in metas] == ["SUCCESS", "SUCCESS"], log.read_text()
        assert metas[0]["result"] == {"x": 1, "timelimit": [30.5, 20.25]}
        assert metas[1]["result"] == {"x": 2, "timelimit": [9.5, None]}
    finally:
        app.close()
        worker.terminate()
        worker.wait(30)
    assert "Unrecoverable error" not in log.read_text()


def test_taskframe_worker_runs_what_celery_sends(celery_app: Any, url: str, queue: str) -> None:
    # Given a taskframe worker on the queue
    seen: list[Any] = []
    app = Taskframe("tf", broker=url, backend="memory://", set_as_current=False)

    @app.task(name="interop.add", bind=True, shared=False)
    def add(self: Any, x: int, y: int) -> int:
        seen.append((x + y, list(self.request.timelimit)))
        return x + y

    # When Celery sends it a task with float time limits
    celery_app.send_task("interop.add", (4, 5), queue=queue, time_limit=3.5, soft_time_limit=2)
    with app.test_worker(pool="threads", queues=[queue]):
        wait_for(lambda: seen, timeout=15)
    app.close()
    # Then it ran with Celery's limits, to the fraction
    assert seen == [(9, [3.5, 2])]
