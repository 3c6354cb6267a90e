"""RabbitMQBroker beyond the shared contract: URLs and errors, Celery's declarations,
confirms, the delay chain, the DLQ, redelivery after a consumer is killed, priorities,
broadcast, threads and fork.

Every test runs in the session's own vhost (``amqp_url``); the queues a test declares are
deleted after it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal

import pika
import pytest
from conftest import RABBITMQ_HOST, RABBITMQ_PORT, free_port, wait_for

from taskframe.brokers.base import Delivery, Message, broker_from_url
from taskframe.brokers.rabbitmq import RabbitMQBroker
from taskframe.brokers.rabbitmq import topology as names
from taskframe.brokers.rabbitmq.connection import parse_url
from taskframe.exceptions import BrokerConnectionError, BrokerError

pytestmark = [pytest.mark.rabbitmq]


@pytest.fixture
def plain_url(amqp_url: str) -> str:
    """The test vhost without ``max_priority``: queues declared exactly as Celery does."""
    return amqp_url.split("?", 1)[0]


@pytest.fixture
def broker(plain_url: str) -> Iterator[RabbitMQBroker]:
    store = RabbitMQBroker(plain_url)
    yield store
    store.close()


@pytest.fixture
def raw(plain_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A plain pika channel on the test vhost, to look at what the broker left there."""
    target = parse_url(plain_url)
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(RABBITMQ_HOST, RABBITMQ_PORT, target.vhost)
    )
    yield connection.channel()
    connection.close()


def ready(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> int:
    """Messages RabbitMQ has not handed to any consumer."""
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def new_queue() -> str:
    return f"tf-rmq-{uuid.uuid4().hex[:10]}"


def receive(broker: RabbitMQBroker, queue: str, count: int, timeout: float = 10) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += broker.receive([queue], count - len(got), 0.5)
    assert len(got) == count, f"received {len(got)} of {count}"
    return got


# URLs and errors


def test_url_forms() -> None:
    assert parse_url("amqp://guest:guest@localhost:5672//").vhost == "/"
    assert parse_url("amqp://u:p@h/%2F").vhost == "/"
    assert parse_url("pyamqp://h").vhost == "/"
    tls = parse_url("amqps://user:secret@rabbit/jobs?heartbeat=30")
    assert (tls.host, tls.port, tls.vhost, tls.username) == ("rabbit", 5671, "jobs", "user")
    assert tls.query == {"heartbeat": "30"}
    assert "secret" not in tls.display and "secret" not in repr(tls)


def test_unreachable_server_is_a_connection_error() -> None:
    broker = broker_from_url(f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    with pytest.raises(BrokerConnectionError, match=r"cannot reach RabbitMQ at 127\.0\.0\.1"):
        broker.ensure_connection()


def test_bad_password_is_refused_once_with_the_password_masked(plain_url: str) -> None:
    url = plain_url.replace("guest:guest@", "guest:hunter2@")
    with pytest.raises(BrokerError) as caught:
        broker_from_url(url).ensure_connection()
    assert not isinstance(caught.value, BrokerConnectionError)  # the worker must not retry
    assert "ACCESS_REFUSED" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "guest:***@" in str(caught.value)


def test_missing_vhost_is_named() -> None:
    url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/tf-no-such-vhost"
    with pytest.raises(BrokerError, match="vhost 'tf-no-such-vhost'") as caught:
        broker_from_url(url).ensure_connection()
    assert not isinstance(caught.value, BrokerConnectionError)


# declarations and publishing


def test_queues_are_declared_as_celery_declares_them(
    broker: RabbitMQBroker, raw: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    queue = new_queue()
    broker.publish(queue, Message(b"x"))
    # Celery's own declarations of the same names succeed (a difference would be a 406).
    assert raw.queue_declare(queue, durable=True).method.message_count == 1
    raw.exchange_declare(queue, "direct", durable=True)
    method, _props, body = raw.basic_get(queue, auto_ack=True)
    assert (method.exchange, method.routing_key, body) == ("", queue, b"x")


def test_an_existing_queue_with_other_arguments_is_used_as_it_is(
    amqp_url: str, raw: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    # Given a queue Celery declared with x-max-priority 5, and a broker configured with 9
    queue = new_queue()
    raw.queue_declare(queue, durable=True, arguments={"x-max-priority": 5})
    broker = RabbitMQBroker(amqp_url)
    try:
        broker.publish(queue, Message(b"high"), priority=9)
        [delivery] = receive(broker, queue, 1)
        assert delivery.message.body == b"high"
        delivery.ack()
    finally:
        broker.delete_queue(queue)
        broker.close()


def test_publish_many_returns_once_every_message_is_confirmed(
    broker: RabbitMQBroker, raw: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    queue = new_queue()
    broker.publish_many([(queue, Message(str(n).encode()), 0.0, None) for n in range(300)])
    assert raw.queue_declare(queue, passive=True).method.message_count == 300


def test_publishing_without_confirms(plain_url: str) -> None:
    broker = RabbitMQBroker(plain_url, transport_options={"confirm_publish": False})
    queue = new_queue()
    try:
        broker.publish_many([(queue, Message(b"a"), 0.0, None), (queue, Message(b"b"), 0.0, None)])
        assert [d.message.body for d in receive(broker, queue, 2)] == [b"a", b"b"]
    finally:
        broker.delete_queue(queue)
        broker.close()


def test_a_batch_larger_than_one_write_arrives_whole_and_in_order(
    broker: RabbitMQBroker,
) -> None:
    # Given a batch of 300 messages of 2 KiB and one of 1 MiB (several frames), more than
    # the frame writer sends in one go
    queue = new_queue()
    bodies = [f"{n:04d}".encode() * 512 for n in range(300)]
    items = [(queue, Message(body), 0.0, None) for body in bodies]
    broker.publish_many([*items, (queue, Message(b"x" * (1 << 20)), 0.0, None)])
    # Then every message arrives intact, in the order it was published
    got = receive(broker, queue, 301)
    assert [d.message.body for d in got] == [*bodies, b"x" * (1 << 20)]
    broker.ack_many(got)


def test_header_values_of_every_amqp_type_survive(broker: RabbitMQBroker) -> None:
    queue = new_queue()
    headers = {
        "text": "héllo",
        "none": None,
        "flags": [True, False],
        "small": -5,
        "large": 2**40,
        "ratio": 0.25,
        "nested": {"list": [1, "two", {"three": None}], "empty": {}},
        "pair": (1, 2),
        "raw": b"\x00\x01",
        "amount": Decimal("1.25"),
        "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    }
    broker.publish(queue, Message(b"{}", headers=headers))
    [delivery] = receive(broker, queue, 1)
    assert delivery.message.headers == {**headers, "pair": [1, 2]}
    delivery.ack()


def test_float_headers_survive_both_ways(
    broker: RabbitMQBroker, raw: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    queue = new_queue()
    headers = {"timelimit": [1.5, 1], "expires": 1795371296.4446356, "n": 2**40}
    broker.publish(queue, Message(b"{}", headers=headers))
    [delivery] = receive(broker, queue, 1)
    assert delivery.message.headers == headers
    assert isinstance(delivery.message.headers["timelimit"][0], float)


# delays


def test_delayed_message_waits_in_the_chain_and_counts_in_size(broker: RabbitMQBroker) -> None:
    # Given a warmed-up chain (its first use declares it) and a message delayed by 1.2 s
    queue = new_queue()
    broker.publish(queue, Message(b"warm-up"), delay=0.001)
    receive(broker, queue, 1)[0].ack()
    sent = time.monotonic()
    broker.publish(queue, Message(b"later", headers={"id": "1"}), delay=1.2)
    # Then it waits, counted by size, and arrives on time with the headers it was sent with
    assert broker.size(queue) == 1
    [delivery] = receive(broker, queue, 1)
    assert time.monotonic() - sent >= 1.2
    assert delivery.message.headers == {"id": "1"}
    assert delivery.redelivered is False
    delivery.ack()


def test_purge_drops_delayed_messages(broker: RabbitMQBroker) -> None:
    queue = new_queue()
    broker.publish_many([(queue, Message(b"now"), 0.0, None), (queue, Message(b"x"), 30.0, None)])
    assert broker.size(queue) == 2
    assert broker.purge(queue) == 2
    assert broker.size(queue) == 0


def test_delay_routing_key_spells_the_levels() -> None:
    assert names.delay_routing_key("celery", 5) == "0." * 29 + "1.0.1.celery"
    assert names.delay_queue("celery", 10) == "taskframe.delay.celery.1024ms"


def test_a_message_deferred_past_the_chain_goes_back_for_the_rest(
    broker: RabbitMQBroker,
) -> None:
    # Given a message marked as due in a second (what the chain's second pass carries)
    queue = new_queue()
    due = time.time() + 1.0
    broker.publish(queue, Message(b"long", headers={names.DEFER_UNTIL: due}))
    # Then receiving does not hand it out early, and hands it out once due, unmarked
    first = broker.receive([queue], 1, 0.3)
    if time.time() < due - 0.1:
        assert first == []
    [delivery] = first or receive(broker, queue, 1)
    assert time.time() >= due - 0.01
    assert names.DEFER_UNTIL not in delivery.message.headers
    delivery.ack()


# dead letters


def test_dead_letter_keeps_the_reason_in_a_header_and_peeking_leaves_it_parked(
    broker: RabbitMQBroker, raw: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    queue = new_queue()
    broker.publish(queue, Message(b"poison", headers={"task": "t.bad"}))
    [delivery] = receive(broker, queue, 1)
    broker.dead_letter(delivery, "unknown task t.bad")
    for _ in range(2):
        [parked] = broker.dead_letters(queue)
        assert (parked.reason, parked.message.headers) == ("unknown task t.bad", {"task": "t.bad"})
    method, props, body = raw.basic_get(f"{queue}.dlq", auto_ack=False)
    assert body == b"poison" and props.headers[names.DLQ_REASON] == "unknown task t.bad"
    raw.basic_nack(method.delivery_tag, requeue=True)
    assert broker.purge_dead_letters(queue) == 1
    assert broker.dead_letters(new_queue()) == []


# settling and redelivery


def test_ack_many_settles_out_of_order_batches(broker: RabbitMQBroker) -> None:
    queue = new_queue()
    broker.publish_many([(queue, Message(str(n).encode()), 0.0, None) for n in range(6)])
    deliveries = receive(broker, queue, 6)
    broker.ack_many([deliveries[0], deliveries[1], deliveries[3]])
    broker.ack_many([deliveries[5], deliveries[2]])
    deliveries[4].reject(requeue=True)
    [again] = receive(broker, queue, 1)
    assert (again.message.body, again.redelivered) == (b"4", True)
    again.ack()
    assert broker.receive([queue], 1, 0.3) == []


HOLDER = """
import sys, time
from taskframe.brokers.rabbitmq import RabbitMQBroker
broker = RabbitMQBroker(sys.argv[1])
got = []
while len(got) < 3:
    got += broker.receive([sys.argv[2]], 3 - len(got), 1.0)
print("holding", flush=True)
time.sleep(60)
"""


def test_messages_held_by_a_killed_consumer_come_back_redelivered(
    broker: RabbitMQBroker, plain_url: str
) -> None:
    # Given a consumer process holding three unacked messages
    queue = new_queue()
    broker.publish_many([(queue, Message(str(n).encode()), 0.0, None) for n in range(3)])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, plain_url, queue], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert broker.receive([queue], 3, 0.2) == []
        assert broker.size(queue) == 0
    finally:
        # When it is killed without a chance to clean up
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    # Then RabbitMQ hands them to the next consumer, flagged redelivered
    again = receive(broker, queue, 3)
    assert sorted(d.message.body for d in again) == [b"0", b"1", b"2"]
    assert all(d.redelivered for d in again)
    broker.ack_many(again)


def test_unrequested_messages_stay_on_the_queue(broker: RabbitMQBroker, plain_url: str) -> None:
    """A consumer takes what it asks for; the rest stays for other consumers."""
    queue = new_queue()
    broker.publish_many([(queue, Message(str(n).encode()), 0.0, None) for n in range(4)])
    [first] = receive(broker, queue, 1)
    other = RabbitMQBroker(plain_url)
    try:
        assert len(receive(other, queue, 3)) == 3
    finally:
        other.close()
    first.ack()


def test_acking_what_was_asked_for_lets_nothing_more_in(
    broker: RabbitMQBroker, plain_url: str
) -> None:
    """An early ack frees a consumer's credit; the prefetch goes down with it, so a consumer
    that took all it asked for holds no more after acking."""
    queue = new_queue()
    broker.publish_many([(queue, Message(str(n).encode()), 0.0, None) for n in range(4)])
    broker.ack_many(receive(broker, queue, 2))
    other = RabbitMQBroker(plain_url)
    try:
        assert sorted(d.message.body for d in receive(other, queue, 2, timeout=3)) == [b"2", b"3"]
    finally:
        other.close()


def test_a_consumer_giving_back_its_last_message_stops_taking_more(
    broker: RabbitMQBroker, plain_url: str
) -> None:
    # Given a consumer that received a message and gives it back, holding nothing else
    queue = new_queue()
    broker.publish(queue, Message(b"back"))
    [delivery] = receive(broker, queue, 1)
    delivery.reject(requeue=True)
    # Then another consumer gets it: the first one does not take it back unasked
    other = RabbitMQBroker(plain_url)
    try:
        [again] = receive(other, queue, 1, timeout=3)
        assert (again.message.body, again.redelivered) == (b"back", True)
        again.ack()
    finally:
        other.close()


def test_a_standing_prefetch_is_pushed_ahead_and_zero_gives_it_back(
    broker: RabbitMQBroker,
    plain_url: str,
    raw: pika.adapters.blocking_connection.BlockingChannel,
) -> None:
    # Given a consumer with a standing prefetch of 4 that took and acked 2 of 6 messages
    queue = new_queue()
    broker.publish_many([(queue, Message(str(n).encode()), 0.0, None) for n in range(6)])
    broker.set_prefetch(4)
    broker.ack_many(receive(broker, queue, 2))
    # Then RabbitMQ pushes the other 4 before the next ask: none is left ready on the queue
    deadline = time.monotonic() + 10
    while ready(raw, queue) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready(raw, queue) == 0
    assert broker.size(queue) == 4  # held by the consumer, still counted
    # And withdrawing the prefetch gives them back, in order, for another consumer
    broker.set_prefetch(0)
    other = RabbitMQBroker(plain_url)
    try:
        again = receive(other, queue, 4)
        assert [d.message.body for d in again] == [b"2", b"3", b"4", b"5"]
        other.ack_many(again)
    finally:
        other.close()


# priorities


def test_priority_needs_max_priority(plain_url: str, amqp_url: str) -> None:
    assert RabbitMQBroker(plain_url).capabilities.priorities is False
    prioritised = RabbitMQBroker(amqp_url)
    assert prioritised.capabilities.priorities is True
    assert prioritised.capabilities.lower_priority_first is False
    queue = new_queue()
    try:
        for level in (1, 9, 5):
            prioritised.publish(queue, Message(str(level).encode()), priority=level)
        assert [d.message.body for d in receive(prioritised, queue, 3)] == [b"9", b"5", b"1"]
    finally:
        prioritised.delete_queue(queue)
        prioritised.close()


# fan-out, threads, fork


def test_broadcast_with_wildcards_and_a_listener_thread(broker: RabbitMQBroker) -> None:
    heard: list[tuple[str, bytes] | None] = []
    with broker.subscribe(["tf.events.#"]) as subscription:
        listener = threading.Thread(target=lambda: heard.append(subscription.get(5.0)))
        listener.start()
        broker.broadcast("tf.other", b"no")
        broker.broadcast("tf.events.task.sent", b"yes")
        listener.join(10)
    assert heard == [("tf.events.task.sent", b"yes")]


def test_publishers_on_many_threads(broker: RabbitMQBroker) -> None:
    queue = new_queue()

    def publish(number: int) -> None:
        for index in range(20):
            broker.publish(queue, Message(f"{number}-{index}".encode()))

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert broker.size(queue) == 120


def _publish_in_child(broker: RabbitMQBroker, queue: str) -> None:
    broker.publish(queue, Message(f"from {os.getpid()}".encode()))


def test_a_forked_child_opens_its_own_connection(broker: RabbitMQBroker) -> None:
    queue = new_queue()
    broker.publish(queue, Message(b"parent"))
    child = multiprocessing.get_context("fork").Process(
        target=_publish_in_child, args=(broker, queue)
    )
    child.start()
    child.join(20)
    assert child.exitcode == 0
    broker.publish(queue, Message(b"parent again"))
    bodies = [d.message.body for d in receive(broker, queue, 3)]
    assert bodies[0] == b"parent" and bodies[2] == b"parent again"
    assert bodies[1].startswith(b"from ")


def test_delivery_from_a_closed_connection_is_not_settled_twice(broker: RabbitMQBroker) -> None:
    queue = new_queue()
    broker.publish(queue, Message(b"once"))
    [delivery] = receive(broker, queue, 1)
    broker.close()
    delivery.ack()  # its channel is gone: nothing to do, RabbitMQ requeued it
    [again] = receive(broker, queue, 1)
    assert again.redelivered is True
    again.ack()
    wait_for(lambda: broker.size(queue) == 0)


def test_pika_info_logging_does_not_break_a_closing_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given pika's loggers at INFO (a worker started with -l INFO): pika then logs the method
    # frame of every channel close, an object that cannot be compared with an int
    broker = RabbitMQBroker(f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//")
    with caplog.at_level("INFO", logger="pika"):
        # When the broker probes a queue that does not exist and closes
        assert broker.size(f"tf-missing-{uuid.uuid4().hex[:8]}") == 0
        broker.close()
    # Then nothing failed in pika's logging, and the expected 404 stays quiet
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert "NOT_FOUND" not in caplog.text
