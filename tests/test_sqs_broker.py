"""SQSBroker specifics the shared contract suite cannot see: kombu's queue names and bodies,
delays past SQS's 900-second limit and on FIFO queues, batching, the size limit, visibility,
the dead-letter queue, URLs and error messages.

Runs against the session's moto server (``sqs_endpoint``); each test has its own queue-name
prefix (``sqs_url``). The raw client reads what the broker wrote, as kombu would.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from conftest import IN_CI, free_port, port_open, wait_for

from taskframe import Taskframe
from taskframe.brokers.base import Delivery, Message, broker_from_url
from taskframe.brokers.sqs import SQSBroker
from taskframe.brokers.sqs.connection import dead_letter_name, parse_settings, sqs_queue_name
from taskframe.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured
from taskframe.worker import Worker

pytestmark = pytest.mark.sqs

CAPTURES = Path(
    os.environ.get(
        "TASKFRAME_WIRE_CAPTURES",
        Path(__file__).resolve().parents[2] / "shared" / "docs" / "wire-capture" / "out",
    )
)


@pytest.fixture
def prefix(sqs_url: str) -> str:
    return parse_qs(urlsplit(sqs_url).query)["queue_name_prefix"][0]


@pytest.fixture
def raw(sqs_endpoint: str) -> Iterator[Any]:
    client = boto3.session.Session().client(
        "sqs",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        endpoint_url=sqs_endpoint,
    )
    yield client
    client.close()


@pytest.fixture
def make_broker(sqs_url: str) -> Iterator[Callable[..., SQSBroker]]:
    made: list[SQSBroker] = []

    def make(**options: Any) -> SQSBroker:
        made.append(SQSBroker(sqs_url, transport_options=options))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def broker(make_broker: Callable[..., SQSBroker]) -> SQSBroker:
    return make_broker(visibility_timeout=1)


def calls_to(broker: SQSBroker, operation: str) -> list[dict[str, Any]]:
    """Records the parameters of every ``operation`` the broker sends (a botocore event hook:
    the requests still reach the server)."""
    seen: list[dict[str, Any]] = []
    broker.client.meta.events.register(
        f"provide-client-params.sqs.{operation}",
        lambda params, **_: seen.append(dict(params)),
    )
    return seen


def receive_until(broker: SQSBroker, queues: list[str], count: int) -> list[Delivery]:
    received: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(received) < count and time.monotonic() < deadline:
        received += broker.receive(queues, count - len(received), 1.0)
    assert len(received) == count, f"received {len(received)} of {count}"
    return received


def raw_envelopes(raw: Any, url: str, count: int) -> list[dict[str, Any]]:
    """The JSON envelopes of ``count`` messages read straight from SQS (held 30 s)."""
    bodies: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(bodies) < count and time.monotonic() < deadline:
        response = raw.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=30
        )
        for item in response.get("Messages", []):
            assert "MessageAttributes" not in item
            bodies.append(json.loads(base64.b64decode(item["Body"])))
    assert len(bodies) == count
    return bodies


def test_queue_names_are_kombus(broker: SQSBroker, raw: Any, prefix: str) -> None:
    # Given kombu's own naming function (it does not use its channel)
    from kombu.transport.SQS import Channel

    kombu_name: Callable[..., str] = Channel.entity_name
    names = ["wire.dotted:name", "a-b_c", "x.y.fifo", "odd!@#$%^&*()+=[]{}|;'<>,?/~`\"q", "fifo"]
    oid = "0dfdea32-f0e3-3d70-9158-9134d93daac5.reply.celery.pidbox"
    for name in [*names, oid]:
        assert sqs_queue_name(name) == kombu_name(None, name)
    assert sqs_queue_name(oid) == "0dfdea32-f0e3-3d70-9158-9134d93daac5-reply-celery-pidbox"
    # When a dotted name is used, Then the queue on the server is prefixed and mangled
    broker.publish("tasks.high:x", Message(b"1"))
    urls = raw.list_queues(QueueNamePrefix=prefix)["QueueUrls"]
    assert [url.rsplit("/", 1)[1] for url in urls] == [f"{prefix}tasks-high_x"]
    attributes = raw.get_queue_attributes(QueueUrl=urls[0], AttributeNames=["VisibilityTimeout"])
    assert attributes["Attributes"]["VisibilityTimeout"] == "1"
    assert dead_letter_name("a.fifo") == "a-fifo-dlq"


def test_envelope_matches_kombus_capture(broker: SQSBroker, raw: Any, prefix: str) -> None:
    # Given the MessageBody kombu sent for add.delay(2, 2) (wire-capture/out)
    path = CAPTURES / "sqs_proxy_tasks.jsonl"
    if not path.exists():
        if IN_CI:
            pytest.fail(f"wire capture {path} is missing (shared/ must sit beside the repository)")
        pytest.skip(f"wire capture {path} is not available")
    sent = next(
        json.loads(line)["request"]
        for line in path.read_text().splitlines()
        if json.loads(line)["x_amz_target"] == "AmazonSQS.SendMessage"
    )
    captured = json.loads(base64.b64decode(sent["MessageBody"]))
    kept = {"correlation_id", "reply_to", "delivery_mode"}
    message = Message(
        base64.b64decode(captured["body"]),
        headers=captured["headers"],
        properties={k: v for k, v in captured["properties"].items() if k in kept},
    )
    # When taskframe publishes the same message to the same queue
    broker.publish("wire_capture", message, priority=0)
    url = raw.get_queue_url(QueueName=f"{prefix}wire_capture")["QueueUrl"]
    [ours] = raw_envelopes(raw, url, 1)
    # Then the JSON text is kombu's, byte for byte, but for the random delivery tag
    ours["properties"]["delivery_tag"] = captured["properties"]["delivery_tag"]
    assert json.dumps(ours) == json.dumps(captured)


def test_a_delay_within_the_limit_is_native(broker: SQSBroker, raw: Any) -> None:
    sends = calls_to(broker, "SendMessage")
    broker.publish("later", Message(b"soon"), delay=0.2)
    assert sends[0]["DelaySeconds"] == 1
    assert broker.size("later") == 1
    assert broker.receive(["later"], 1, 0.0) == []
    [delivery] = receive_until(broker, ["later"], 1)
    assert delivery.message.body == b"soon"
    assert delivery.message.properties == {"priority": 0}


def test_a_delay_past_the_limit_is_re_deferred_and_never_early(
    broker: SQSBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given SQS's 900-second cap lowered to 1 second
    monkeypatch.setattr(SQSBroker, "max_native_delay", 1)
    sends = calls_to(broker, "SendMessage")
    deletes = calls_to(broker, "DeleteMessage")
    published_at = time.monotonic()
    broker.publish("far", Message(b"due later", headers={"id": "x"}), delay=2.2)
    # When a consumer keeps receiving
    received: list[Delivery] = []
    while not received:
        received = broker.receive(["far"], 10, 1.0)
        if not received:
            assert broker.size("far") == 1
    # Then the message hopped (sent again, old copy deleted) and only arrived once due
    assert time.monotonic() - published_at >= 2.2
    assert [call["DelaySeconds"] for call in sends[:2]] == [1, 1]
    assert len(deletes) >= 1
    [delivery] = received
    assert delivery.message.body == b"due later"
    assert delivery.message.headers == {"id": "x"}
    assert "taskframe_due" not in delivery.message.properties
    assert delivery.redelivered is False
    delivery.ack()
    assert broker.size("far") == 0


def test_fifo_queue_delays_without_delay_seconds_and_keeps_order(broker: SQSBroker) -> None:
    sends = calls_to(broker, "SendMessage")
    published_at = time.monotonic()
    broker.publish("jobs.fifo", Message(b"held"), delay=1.2)
    assert "DelaySeconds" not in sends[0]
    assert sends[0]["MessageGroupId"] == "default"
    assert broker.receive(["jobs.fifo"], 1, 0.0) == []
    [delivery] = receive_until(broker, ["jobs.fifo"], 1)
    assert time.monotonic() - published_at >= 1.2
    assert delivery.message.body == b"held"
    delivery.ack()
    broker.publish_many([("jobs.fifo", Message(str(n).encode()), 0.0, None) for n in range(12)])
    bodies: list[bytes] = []
    for _ in range(3):
        batch = broker.receive(["jobs.fifo"], 5, 1.0)
        bodies += [d.message.body for d in batch]
        broker.ack_many(batch)
    assert bodies == [str(n).encode() for n in range(12)]


def test_publish_many_batches_by_count_and_bytes(broker: SQSBroker) -> None:
    batches = calls_to(broker, "SendMessageBatch")
    deletes = calls_to(broker, "DeleteMessageBatch")
    broker.publish_many(
        [("many", Message(str(n).encode()), 0.0, None) for n in range(25)]
        + [("other", Message(b"x"), 0.0, None)]
    )
    assert [len(call["Entries"]) for call in batches] == [10, 10, 5]
    received = receive_until(broker, ["many"], 25)
    assert sorted(int(d.message.body) for d in received) == list(range(25))
    broker.ack_many(received)
    assert [len(call["Entries"]) for call in deletes] == [10, 10, 5]
    assert broker.size("many") == 0
    assert broker.size("other") == 1
    # Bodies of ~90 KiB (~160 KiB once base64'd twice) go one to a batch
    big = [("big", Message(bytes(90_000)), 0.0, None) for _ in range(3)]
    batches.clear()
    broker.publish_many(big)
    assert [len(call["Entries"]) for call in batches] == [1, 1, 1]
    assert broker.purge("big") == 3


def test_a_message_over_256_kib_is_refused_before_anything_is_sent(broker: SQSBroker) -> None:
    too_big = Message(bytes(150_000))
    with pytest.raises(BrokerError, match=r"is \d+ bytes .* over the SQS limit of 262144 bytes"):
        broker.publish("sized", too_big)
    with pytest.raises(BrokerError, match="262144"):
        broker.publish_many([("sized", Message(b"small"), 0.0, None), ("sized", too_big, 0, None)])
    assert broker.size("sized") == 0
    assert broker.capabilities.max_message_size == 262144


def test_extend_hides_and_requeue_shows_at_once(broker: SQSBroker) -> None:
    changes = calls_to(broker, "ChangeMessageVisibility")
    broker.publish("slow", Message(b"long task"))
    [delivery] = receive_until(broker, ["slow"], 1)
    delivery.extend(4.2)
    assert changes[-1]["VisibilityTimeout"] == 5
    assert broker.receive(["slow"], 1, 2.0) == []
    delivery.reject(requeue=True)
    [again] = broker.receive(["slow"], 1, 0.0)
    assert again.redelivered is True
    again.ack()


def test_unacked_message_comes_back_after_the_visibility_timeout(broker: SQSBroker) -> None:
    receives = calls_to(broker, "ReceiveMessage")
    broker.publish("lost", Message(b"worker died"))
    [first] = receive_until(broker, ["lost"], 1)
    assert first.redelivered is False
    assert receives[0]["VisibilityTimeout"] == 1
    assert receives[0]["MessageSystemAttributeNames"] == ["ApproximateReceiveCount"]
    [second] = receive_until(broker, ["lost"], 1)
    assert second.message.body == b"worker died"
    assert second.redelivered is True
    second.ack()


def test_dead_letter_queue_holds_records_with_their_reason(
    broker: SQSBroker, raw: Any, prefix: str
) -> None:
    # Given a message dead-lettered from a FIFO queue
    broker.publish("orders.fifo", Message(b"poison", headers={"task": "t.bad"}))
    [delivery] = receive_until(broker, ["orders.fifo"], 1)
    broker.dead_letter(delivery, "unknown task t.bad")
    assert delivery.settled
    # Then it sits in a standard queue <name>-fifo-dlq with the reason in its headers
    url = raw.get_queue_url(QueueName=f"{prefix}orders-fifo-dlq")["QueueUrl"]
    retention = raw.get_queue_attributes(QueueUrl=url, AttributeNames=["MessageRetentionPeriod"])
    assert retention["Attributes"]["MessageRetentionPeriod"] == "1209600"
    # And listing is a peek: twice the same, still there for a raw reader
    first, second = broker.dead_letters("orders.fifo"), broker.dead_letters("orders.fifo")
    assert [(d.id, d.reason, d.queue) for d in first] == [(d.id, d.reason, d.queue) for d in second]
    assert first[0].message.headers == {"task": "t.bad"}
    [record] = raw_envelopes(raw, url, 1)
    assert record["headers"]["x-death-reason"] == "unknown task t.bad"
    assert record["headers"]["x-death-queue"] == "orders.fifo"


def test_replay_goes_back_to_a_fifo_queue_and_purge_counts(broker: SQSBroker) -> None:
    broker.publish_many([("orders.fifo", Message(str(n).encode()), 0.0, None) for n in range(3)])
    for delivery in receive_until(broker, ["orders.fifo"], 3):
        broker.dead_letter(delivery, f"bad {delivery.message.body.decode()}")
    parked = {d.reason: d.id for d in broker.dead_letters("orders.fifo")}
    assert broker.replay_dead_letters("orders.fifo", [parked["bad 1"]]) == 1
    [replayed] = receive_until(broker, ["orders.fifo"], 1)
    assert replayed.message.body == b"1"
    replayed.ack()
    assert broker.purge_dead_letters("orders.fifo") == 2
    assert broker.dead_letters("orders.fifo") == []
    assert broker.purge_dead_letters("never-used") == 0
    broker.publish_many([("bulk", Message(b"m"), 0.0, None) for _ in range(23)])
    assert broker.purge("bulk") == 23
    assert broker.size("bulk") == 0


def test_a_body_that_is_not_an_envelope_is_handed_over_raw(broker: SQSBroker, raw: Any) -> None:
    broker.publish("mixed", Message(b"ok"))
    url = raw.get_queue_url(QueueName=broker._sqs_name("mixed"))["QueueUrl"]
    raw.send_message(QueueUrl=url, MessageBody="plain text, not kombu")
    received = receive_until(broker, ["mixed"], 2)
    odd = next(d for d in received if d.message.content_type == "application/x-unknown")
    assert odd.message.body == b"plain text, not kombu"
    broker.dead_letter(odd, "malformed message")
    [parked] = broker.dead_letters("mixed")
    assert (parked.reason, parked.message.body) == ("malformed message", b"plain text, not kombu")


def test_one_queue_is_long_polled_from_the_first_request(broker: SQSBroker) -> None:
    polls = calls_to(broker, "ReceiveMessage")
    assert broker.receive(["idle-one"], 1, 1.5) == []
    assert [poll["WaitTimeSeconds"] for poll in polls] == [1]  # the half second left: no poll
    assert broker.receive(["idle-one"], 1, 0.3) == []
    assert [poll["WaitTimeSeconds"] for poll in polls[1:]] == [0, 0]  # before and after a nap


def test_a_worker_long_polls_idle_or_busy_and_takes_messages_at_once(sqs_url: str) -> None:
    # Given a worker on SQS with two slots
    app = Taskframe("polls", broker=sqs_url, backend="memory://", set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def nap(seconds: float) -> None:
        time.sleep(seconds)

    assert isinstance(app.broker, SQSBroker)
    polls = calls_to(app.broker, "ReceiveMessage")
    worker = Worker(app, pool="threads", concurrency=2)
    thread = threading.Thread(target=worker.start)
    thread.start()
    try:
        wait_for(lambda: len(polls) >= 2)  # idle for a while
        # When a task runs on one slot and another is sent meanwhile
        napping = nap.delay(2.5)
        wait_for(lambda: napping.state == "STARTED" or len(polls) >= 4)
        assert add.delay(2, 3).get(timeout=10) == 5
        napping.get(timeout=10)
    finally:
        worker.stop()
        thread.join(10)
        app.close()
    assert not thread.is_alive()
    # Then every receive was a long poll: none of the paid short polls with a sleep between
    assert all(poll["WaitTimeSeconds"] >= 1 for poll in polls), polls


def test_a_long_late_ack_task_is_kept_invisible_while_the_worker_long_polls(sqs_url: str) -> None:
    # Given a worker on SQS whose messages come back after a second unless extended
    app = Taskframe("keep", broker=sqs_url, backend="memory://", set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 1}
    runs: list[float] = []

    @app.task(acks_late=True)
    def slow(seconds: float) -> None:
        runs.append(seconds)
        time.sleep(seconds)

    worker = Worker(app, pool="threads", concurrency=2)
    thread = threading.Thread(target=worker.start)
    thread.start()
    try:
        # When a late-ack task runs for longer than the visibility timeout
        slow.delay(2.5).get(timeout=15)
        time.sleep(1.5)  # room for a redelivery to show up, were the message let go
    finally:
        worker.stop()
        thread.join(10)
        app.close()
    # Then it ran once: its visibility was extended on time between long polls
    assert runs == [2.5]


def test_broadcast_is_refused_with_the_reason(broker: SQSBroker) -> None:
    assert broker.capabilities.broadcast is False
    with pytest.raises(NotImplementedError, match="SQS has no fan-out"):
        broker.broadcast("celery.pidbox", b"x")
    with pytest.raises(NotImplementedError, match="SQS has no fan-out"):
        broker.subscribe(["celery.pidbox"])


def test_url_forms() -> None:
    kombu_style = parse_settings("sqs://AKIA:se%2Fcret@127.0.0.1:5000", {})
    assert kombu_style.endpoint_url == "http://127.0.0.1:5000"
    assert (kombu_style.access_key, kombu_style.secret_key) == ("AKIA", "se/cret")
    assert "se/cret" not in repr(kombu_style) and "cret" not in kombu_style.display
    assert kombu_style.visibility_timeout == 1800 and kombu_style.wait_time_seconds == 10
    secure = parse_settings("sqs://localhost:9324", {"is_secure": True})
    assert secure.endpoint_url == "https://localhost:9324"
    options = parse_settings(
        "sqs://k:s@/?visibility_timeout=0.5&region=eu-west-1",
        {"endpoint_url": "http://elsewhere:1", "wait_time_seconds": 60},
    )
    assert options.endpoint_url == "http://elsewhere:1" and options.region == "eu-west-1"
    assert (options.visibility_seconds, options.wait_time_seconds) == (1, 20)
    with pytest.raises(ImproperlyConfigured, match="give the endpoint in one place"):
        parse_settings("sqs://k:s@host:1", {"endpoint_url": "http://other:2"})
    with pytest.raises(ImproperlyConfigured, match="visibility_timeout"):
        parse_settings("sqs://", {"visibility_timeout": 50000})
    assert isinstance(broker_from_url("sqs://k:s@127.0.0.1:1"), SQSBroker)


def test_an_unreachable_endpoint_is_a_connection_error() -> None:
    port = free_port()
    broker = SQSBroker(f"sqs://k:s@127.0.0.1:{port}")
    with pytest.raises(BrokerConnectionError, match=f"cannot reach SQS at http://127.0.0.1:{port}"):
        broker.ensure_connection()
    with pytest.raises(BrokerConnectionError, match="GetQueueUrl"):
        broker.publish("q", Message(b"x"))
    broker.close()


def test_rejected_credentials_are_a_plain_broker_error(sqs_endpoint: str) -> None:
    """Not a connection error: the worker must stop with the reason, not retry a bad key
    (a moto server of its own with authentication on; ``sqs_endpoint`` checks moto exists)."""
    executable = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    server = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=30)
        broker = SQSBroker(f"sqs://AKIAWRONG:nope@127.0.0.1:{port}")
        with pytest.raises(BrokerError, match="rejected the credentials") as raised:
            broker.ensure_connection()
        assert not isinstance(raised.value, BrokerConnectionError)
        assert "nope" not in str(raised.value)
        broker.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_predefined_queues_are_used_as_given(
    make_broker: Callable[..., SQSBroker], raw: Any, prefix: str
) -> None:
    url = raw.create_queue(QueueName=f"{prefix}fixed")["QueueUrl"]
    broker = make_broker(predefined_queues={f"{prefix}fixed": {"url": url}})
    creates = calls_to(broker, "CreateQueue")
    broker.ensure_connection()
    broker.publish("fixed", Message(b"here"))
    [delivery] = receive_until(broker, ["fixed"], 1)
    delivery.ack()
    assert creates == []
    assert broker.dead_letters("fixed") == []
    with pytest.raises(ImproperlyConfigured, match="not in predefined_queues"):
        broker.publish("unknown", Message(b"x"))
