"""SQSBroker and real kombu 5.7 / Celery 5.7 on the same SQS queues (moto).

Covered: kombu's synchronous SQS paths (``Producer.publish``, ``SimpleQueue.get``, boto3
underneath) in both directions, kombu's ``sqs_base64_encoding=False`` bodies, Celery's
``send_task`` run by a taskframe worker, and a real Celery worker process (kombu's asynchronous
receive path, through pycurl, a dev dependency) running a task taskframe sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import wait_for

from taskframe import Taskframe
from taskframe.brokers.base import Delivery, Message
from taskframe.brokers.sqs import SQSBroker

kombu = pytest.importorskip("kombu")
celery = pytest.importorskip("celery")

pytestmark = [pytest.mark.sqs, pytest.mark.interop]


@pytest.fixture
def prefix(sqs_url: str) -> str:
    return parse_qs(urlsplit(sqs_url).query)["queue_name_prefix"][0]


@pytest.fixture
def kombu_url(sqs_endpoint: str) -> str:
    """kombu's spelling: the endpoint as host:port, options in transport_options."""
    return "sqs://test:test@" + sqs_endpoint.removeprefix("http://")


@pytest.fixture
def kombu_options(prefix: str) -> dict[str, Any]:
    return {"queue_name_prefix": prefix, "region": "us-east-1", "wait_time_seconds": 1}


@pytest.fixture
def broker(sqs_url: str) -> Iterator[SQSBroker]:
    store = SQSBroker(sqs_url, transport_options={"visibility_timeout": 30})
    yield store
    store.close()


def receive_one(broker: SQSBroker, queue: str) -> Delivery:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        received = broker.receive([queue], 1, 1.0)
        if received:
            return received[0]
    raise AssertionError(f"nothing arrived on {queue}")


@pytest.mark.parametrize("base64_bodies", [True, False])
def test_kombu_published_message_arrives_unchanged(
    broker: SQSBroker, kombu_url: str, kombu_options: dict[str, Any], base64_bodies: bool
) -> None:
    # Given a message published by kombu's own SQS transport to a dotted queue name
    options = {**kombu_options, "sqs_base64_encoding": base64_bodies}
    with kombu.Connection(kombu_url, transport_options=options) as conn:
        conn.Producer().publish(
            {"x": [1, 2]},
            serializer="json",
            exchange="",
            routing_key="interop.in",
            declare=[kombu.Queue("interop.in")],
            headers={"task": "t.add", "id": "k1", "retries": 0},
            correlation_id="k1",
            reply_to="oid",
            priority=4,
        )
    # When taskframe receives it
    delivery = receive_one(broker, "interop.in")
    # Then every part is what kombu was given
    message = delivery.message
    assert json.loads(message.body) == {"x": [1, 2]}
    assert message.headers == {"task": "t.add", "id": "k1", "retries": 0}
    assert message.properties == {
        "correlation_id": "k1",
        "reply_to": "oid",
        "delivery_mode": 2,
        "priority": 4,
    }
    assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
    assert delivery.redelivered is False
    delivery.ack()
    assert broker.size("interop.in") == 0


def test_kombu_reads_what_taskframe_publishes(
    broker: SQSBroker, kombu_url: str, kombu_options: dict[str, Any]
) -> None:
    # Given a message taskframe published
    sent = Message(
        body=b'{"y": "\\u00e9"}',
        headers={"task": "t.mul", "id": "t1", "timelimit": [None, None]},
        properties={"correlation_id": "t1", "reply_to": "oid", "delivery_mode": 2},
    )
    broker.publish("interop.out", sent, priority=7)
    # When kombu's SimpleQueue reads it
    with kombu.Connection(kombu_url, transport_options=kombu_options) as conn:
        queue = conn.SimpleQueue("interop.out")
        received = queue.get(timeout=10)
        # Then kombu sees the same payload, headers and properties
        assert received.payload == {"y": "é"}
        assert received.headers == sent.headers
        assert received.properties["correlation_id"] == "t1"
        assert received.properties["reply_to"] == "oid"
        assert received.properties["priority"] == 7
        assert received.delivery_info["routing_key"] == "interop.out"
        assert received.content_type == "application/json"
        received.ack()
        queue.close()
    assert broker.size("interop.out") == 0


def test_celery_send_task_runs_on_a_taskframe_worker(
    sqs_url: str, kombu_url: str, kombu_options: dict[str, Any]
) -> None:
    # Given a task sent by Celery to a dotted queue on SQS
    sender = celery.Celery("interop", broker=kombu_url)
    sender.conf.broker_transport_options = kombu_options
    sent = sender.send_task("interop.add", args=(2, 3), queue="interop.tasks")
    sender.close()
    # When a taskframe worker consumes that queue
    app = Taskframe("tf", broker=sqs_url, backend="memory://", set_as_current=False)
    app.conf.task_default_queue = "interop.tasks"
    seen: list[int] = []

    @app.task(name="interop.add")
    def add(x: int, y: int) -> int:
        seen.append(x + y)
        return x + y

    with app.test_worker(pool="solo"):
        assert app.AsyncResult(sent.id).get(timeout=15) == 5
    assert seen == [5]
    app.close()


CELERY_APP = """
import json, os
from celery import Celery

app = Celery("sqsinterop", broker=os.environ["INTEROP_SQS_URL"])
app.conf.broker_transport_options = json.loads(os.environ["INTEROP_SQS_OPTIONS"])
app.conf.broker_connection_retry_on_startup = True


@app.task(name="interop.record")
def record(value):
    with open(os.environ["INTEROP_SQS_OUT"], "a") as sink:
        sink.write(json.dumps(value) + "\\n")
"""


def test_a_celery_worker_runs_what_taskframe_sends(
    sqs_url: str, kombu_url: str, kombu_options: dict[str, Any], tmp_path: Path
) -> None:
    # Given a Celery worker on a dotted queue (kombu's asynchronous SQS receive path)
    (tmp_path / "sqsinterop.py").write_text(textwrap.dedent(CELERY_APP))
    out, log = tmp_path / "out.jsonl", tmp_path / "worker.log"
    env = {
        "PYTHONPATH": str(tmp_path),
        "INTEROP_SQS_URL": kombu_url,
        "INTEROP_SQS_OPTIONS": json.dumps({**kombu_options, "polling_interval": 0.1}),
        "INTEROP_SQS_OUT": str(out),
        "PATH": str(Path(sys.executable).parent),
    }
    argv = [sys.executable, "-m", "celery", "-A", "sqsinterop", "worker", "-P", "solo"]
    argv += ["-Q", "interop.celery", "--without-gossip", "--without-mingle"]
    argv += ["--without-heartbeat", "-l", "info"]
    with log.open("wb") as sink:
        worker = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=sink, stderr=sink)
    try:
        # When taskframe sends tasks there, one plain and one delayed
        app = Taskframe("tf", broker=sqs_url, backend="memory://", set_as_current=False)
        app.send_task("interop.record", args=[{"n": 1}], queue="interop.celery")
        app.send_task("interop.record", args=["later"], queue="interop.celery", countdown=1)
        app.close()
        # Then the Celery worker runs both
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 2, timeout=30)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert sorted(out.read_text().splitlines()) == ['"later"', '{"n": 1}'], log.read_text()
