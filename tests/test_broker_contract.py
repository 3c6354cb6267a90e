"""The broker contract, run against every broker in ``CONTRACT_BROKERS`` (see conftest).

Written only against :class:`taskframe.brokers.base.Broker`: a new store passes by adding its
name to ``CONTRACT_BROKERS``. Each test uses its own queue names and purges them afterwards, so
brokers on shared servers stay isolated.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest
from conftest import ALL_BROKERS, wait_for

from taskframe.brokers.base import Broker, Delivery, Message, broker_from_url

SHORT_VISIBILITY = 0.5


@pytest.fixture(params=ALL_BROKERS)
def broker_url(request: pytest.FixtureRequest) -> str:
    """Every broker, SQS included, runs this suite."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def broker(broker_url: str) -> Iterator[Broker]:
    store = broker_from_url(broker_url)
    store.ensure_connection()
    yield store
    store.close()


@pytest.fixture
def short_visibility_broker(broker_url: str) -> Iterator[Broker]:
    """A broker whose deliveries become visible again after half a second."""
    store = broker_from_url(broker_url, transport_options={"visibility_timeout": SHORT_VISIBILITY})
    store.ensure_connection()
    yield store
    store.close()


@pytest.fixture
def new_queue(broker: Broker) -> Iterator[Callable[[], str]]:
    """Makes unique queue names; purges their messages and dead letters after the test."""
    names: list[str] = []

    def make() -> str:
        names.append(f"tf-contract-{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield make
    for name in names:
        broker.purge(name)
        broker.purge_dead_letters(name)


def message(body: bytes | str, **headers: object) -> Message:
    raw = body.encode() if isinstance(body, str) else body
    return Message(raw, headers=dict(headers), properties={"correlation_id": raw.decode()})


def receive_until(
    broker: Broker, queues: Sequence[str], count: int, *, batch: int = 10
) -> list[Delivery]:
    """Receive until ``count`` deliveries arrived (acking none), failing after 10 s."""
    received: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(received) < count and time.monotonic() < deadline:
        received += broker.receive(queues, min(batch, count - len(received)), 0.5)
    assert len(received) == count, f"received {len(received)} of {count}"
    return received


def bodies(deliveries: Sequence[Delivery]) -> list[bytes]:
    return [delivery.message.body for delivery in deliveries]


def test_round_trip_preserves_the_message(broker: Broker, new_queue: Callable[[], str]) -> None:
    # Given a message with nested headers, AMQP properties and a binary body
    queue = new_queue()
    sent = Message(
        body=bytes(range(256)),
        headers={"task": "tasks.add", "id": "abc", "retries": 2, "nested": {"a": [1, None]}},
        properties={"correlation_id": "abc", "reply_to": "replies", "delivery_mode": 2},
        content_type="application/x-msgpack",
        content_encoding="binary",
    )
    # When it is published and received
    broker.publish(queue, sent)
    [delivery] = receive_until(broker, [queue], 1)
    # Then every part arrives unchanged
    received = delivery.message
    assert received.body == sent.body
    assert received.headers == sent.headers
    assert {key: received.properties.get(key) for key in sent.properties} == sent.properties
    assert (received.content_type, received.content_encoding) == (
        "application/x-msgpack",
        "binary",
    )
    assert delivery.queue == queue
    assert delivery.redelivered is False
    delivery.ack()


def test_publish_many_reaches_every_queue(broker: Broker, new_queue: Callable[[], str]) -> None:
    first, second = new_queue(), new_queue()
    broker.publish_many(
        [(first, message(f"a{n}"), 0.0, None) for n in range(3)]
        + [(second, message(f"b{n}"), 0.0, None) for n in range(2)]
    )
    assert bodies(receive_until(broker, [first], 3)) == [b"a0", b"a1", b"a2"]
    assert bodies(receive_until(broker, [second], 2)) == [b"b0", b"b1"]


def test_fifo_within_a_priority(broker: Broker, new_queue: Callable[[], str]) -> None:
    queue = new_queue()
    for number in range(20):
        broker.publish(queue, message(str(number)))
    received = [receive_until(broker, [queue], 1)[0] for _ in range(5)]
    received += receive_until(broker, [queue], 15)
    assert bodies(received) == [str(number).encode() for number in range(20)]


def test_priority_order(broker: Broker, new_queue: Callable[[], str]) -> None:
    """Higher runs first, or lower first where the store keeps Celery's meaning (Redis).
    Levels sit in distinct Redis buckets (0-2, 3-5, 6-8, 9) so every store can order them."""
    if not broker.capabilities.priorities:
        pytest.skip(f"{broker.scheme}:// has no priorities")
    queue = new_queue()
    levels = [0, 4, 9, 4, 0]
    for number, level in enumerate(levels):
        broker.publish(queue, message(f"{level}-{number}"), priority=level)
    broker.publish(queue, Message(b"7-props", properties={"priority": 7}))
    received = bodies(receive_until(broker, [queue], len(levels) + 1))
    by_level = {9: [b"9-2"], 7: [b"7-props"], 4: [b"4-1", b"4-3"], 0: [b"0-0", b"0-4"]}
    order = [0, 4, 7, 9] if broker.capabilities.lower_priority_first else [9, 7, 4, 0]
    assert received == [body for level in order for body in by_level[level]]


def test_several_queues_are_served_fairly(broker: Broker, new_queue: Callable[[], str]) -> None:
    """Our stores take from each queue in turn. RabbitMQ pushes, and when a consumer's credit
    frees up it lets the blocked queues deliver in random order (as for Celery), so there a
    short queue waits a few turns at worst: 20 busy turns in a row happen once in a million."""
    patience = 20 if broker.scheme == "amqp" else 2
    # Given a long queue filled before a short one
    busy, quiet = new_queue(), new_queue()
    broker.publish_many([(busy, message(f"busy{n}"), 0.0, None) for n in range(patience + 8)])
    broker.publish_many([(quiet, message(f"quiet{n}"), 0.0, None) for n in range(2)])
    # When a consumer of both takes messages one at a time
    taken: list[Delivery] = []
    while len(taken) < patience and all(d.queue == busy for d in taken):
        taken += receive_until(broker, [busy, quiet], 1)
    # Then the short queue is not starved behind the long one
    assert taken[-1].queue == quiet, f"{len(taken)} turns without the short queue"
    for delivery in taken:
        assert delivery.message.body.startswith(b"busy" if delivery.queue == busy else b"quiet")


def test_delayed_message_waits_until_due(broker: Broker, new_queue: Callable[[], str]) -> None:
    queue = new_queue()
    published_at = time.monotonic()
    broker.publish(queue, message("later"), delay=0.5)
    early = broker.receive([queue], 1, 0.0)
    if time.monotonic() - published_at < 0.5:
        assert early == []
    assert broker.size(queue) == 1 - len(early)
    received = early or receive_until(broker, [queue], 1)
    assert bodies(received) == [b"later"]
    assert time.monotonic() - published_at >= 0.5
    received[0].ack()


def test_ack_removes_the_message(
    short_visibility_broker: Broker, new_queue: Callable[[], str]
) -> None:
    broker, queue = short_visibility_broker, new_queue()
    broker.publish(queue, message("once"))
    [delivery] = receive_until(broker, [queue], 1)
    delivery.ack()
    assert broker.receive([queue], 1, SHORT_VISIBILITY * 2) == []
    assert broker.size(queue) == 0


def test_ack_many_settles_a_batch(
    short_visibility_broker: Broker, new_queue: Callable[[], str]
) -> None:
    broker, queue = short_visibility_broker, new_queue()
    broker.publish_many([(queue, message(str(n)), 0.0, None) for n in range(5)])
    deliveries = receive_until(broker, [queue], 5)
    broker.ack_many(deliveries)
    assert all(delivery.settled for delivery in deliveries)
    assert broker.receive([queue], 5, SHORT_VISIBILITY * 2) == []


def test_reject_with_requeue_redelivers(broker: Broker, new_queue: Callable[[], str]) -> None:
    queue = new_queue()
    broker.publish(queue, message("again"))
    [first] = receive_until(broker, [queue], 1)
    first.reject(requeue=True)
    [second] = receive_until(broker, [queue], 1)
    assert second.message.body == b"again"
    assert second.redelivered is True
    second.ack()


def test_reject_without_requeue_drops(
    short_visibility_broker: Broker, new_queue: Callable[[], str]
) -> None:
    broker, queue = short_visibility_broker, new_queue()
    broker.publish(queue, message("drop me"))
    [delivery] = receive_until(broker, [queue], 1)
    delivery.reject(requeue=False)
    assert broker.receive([queue], 1, SHORT_VISIBILITY * 2) == []
    assert broker.size(queue) == 0


def test_unacked_message_is_redelivered_after_visibility_timeout(
    short_visibility_broker: Broker, new_queue: Callable[[], str]
) -> None:
    broker, queue = short_visibility_broker, new_queue()
    if not broker.capabilities.extend_visibility:
        pytest.skip(
            f"{broker.scheme}:// has no visibility timeout: an unacked message comes back only "
            "when its consumer's channel closes (tested in that store's own suite)"
        )
    broker.publish(queue, message("lost worker"))
    received_at = time.monotonic()
    [first] = receive_until(broker, [queue], 1)
    hidden = broker.receive([queue], 1, 0.0)
    if time.monotonic() - received_at < SHORT_VISIBILITY:
        assert hidden == []
    assert first.redelivered is False
    [again] = hidden or receive_until(broker, [queue], 1)
    assert again.message.body == b"lost worker"
    assert again.redelivered is True
    again.ack()


def test_extend_keeps_the_message_invisible(
    short_visibility_broker: Broker, new_queue: Callable[[], str]
) -> None:
    broker, queue = short_visibility_broker, new_queue()
    if not broker.capabilities.extend_visibility:
        pytest.skip(f"{broker.scheme}:// cannot extend visibility")
    broker.publish(queue, message("long task"))
    [delivery] = receive_until(broker, [queue], 1)
    delivery.extend(30)
    assert broker.receive([queue], 1, SHORT_VISIBILITY * 3) == []
    delivery.ack()


def test_dead_letters_can_be_listed_replayed_and_purged(
    broker: Broker, new_queue: Callable[[], str]
) -> None:
    # Given a message parked in the dead-letter store with a reason
    queue = new_queue()
    broker.publish(queue, message("poison", task="tasks.bad"))
    [delivery] = receive_until(broker, [queue], 1)
    broker.dead_letter(delivery, "unknown task tasks.bad")
    assert delivery.settled
    assert broker.size(queue) == 0
    [parked] = broker.dead_letters(queue)
    assert (parked.queue, parked.reason) == (queue, "unknown task tasks.bad")
    assert parked.message.body == b"poison"
    assert parked.message.headers["task"] == "tasks.bad"
    assert parked.failed_at > 0
    # When it is replayed, Then it is back on the queue and no longer parked
    assert broker.replay_dead_letters(queue) == 1
    assert broker.dead_letters(queue) == []
    [replayed] = receive_until(broker, [queue], 1)
    assert replayed.message.body == b"poison"
    # And a chosen dead letter can be replayed by id, the rest purged
    broker.dead_letter(replayed, "first")
    broker.publish(queue, message("second"))
    broker.dead_letter(receive_until(broker, [queue], 1)[0], "second")
    parked_ids = {item.reason: item.id for item in broker.dead_letters(queue)}
    assert broker.replay_dead_letters(queue, [parked_ids["second"]]) == 1
    assert bodies(receive_until(broker, [queue], 1)) == [b"second"]
    assert [item.reason for item in broker.dead_letters(queue)] == ["first"]
    assert broker.purge_dead_letters(queue) == 1
    assert broker.dead_letters(queue) == []


def test_dead_letters_respect_the_limit(broker: Broker, new_queue: Callable[[], str]) -> None:
    queue = new_queue()
    broker.publish_many([(queue, message(str(n)), 0.0, None) for n in range(3)])
    for delivery in receive_until(broker, [queue], 3):
        broker.dead_letter(delivery, "bad")
    assert len(broker.dead_letters(queue, limit=2)) == 2
    assert len(broker.dead_letters(queue)) == 3


def test_purge_and_size(broker: Broker, new_queue: Callable[[], str]) -> None:
    queue, other = new_queue(), new_queue()
    broker.publish_many([(queue, message(str(n)), 0.0, None) for n in range(3)])
    broker.publish(other, message("kept"))
    assert broker.size(queue) == 3
    assert broker.purge(queue) == 3
    assert broker.size(queue) == 0
    assert broker.receive([queue], 1, 0.1) == []
    assert broker.size(other) == 1


def test_size_leaves_out_messages_being_worked_on(
    broker: Broker, new_queue: Callable[[], str]
) -> None:
    queue = new_queue()
    broker.publish_many([(queue, message(str(n)), 0.0, None) for n in range(3)])
    [delivery] = receive_until(broker, [queue], 1)
    assert broker.size(queue) == 2
    delivery.ack()
    assert broker.size(queue) == 2


def test_receive_on_an_empty_queue_returns_nothing(
    broker: Broker, new_queue: Callable[[], str]
) -> None:
    assert broker.receive([new_queue(), new_queue()], 10, 0.2) == []


def test_broadcast_reaches_every_subscriber(broker: Broker) -> None:
    if not broker.capabilities.broadcast:
        pytest.skip(f"{broker.scheme}:// cannot broadcast")
    channel, other = f"tf-contract-{uuid.uuid4().hex[:12]}", f"tf-other-{uuid.uuid4().hex[:8]}"
    broker.broadcast(channel, b"before anyone listened")
    with broker.subscribe([channel]) as first, broker.subscribe([channel]) as second:
        broker.broadcast(other, b"not for us")
        broker.broadcast(channel, b"hello")
        broker.broadcast(channel, b"world")
        for subscription in (first, second):
            assert subscription.get(5.0) == (channel, b"hello")
            assert subscription.get(5.0) == (channel, b"world")
            assert subscription.get(0.2) is None


def test_rate_tokens_run_out_and_refill(broker: Broker) -> None:
    if not broker.capabilities.shared_rate_limits:
        pytest.skip(f"{broker.scheme}:// holds no shared rate limits")
    key = f"tf-contract-{uuid.uuid4().hex[:12]}"
    assert broker.acquire_rate_token(key, rate=1.0, capacity=2) == 0.0
    assert broker.acquire_rate_token(key, rate=1.0, capacity=2) == 0.0
    wait = broker.acquire_rate_token(key, rate=1.0, capacity=2)
    assert 0.0 < wait <= 1.0
    wait_for(lambda: broker.acquire_rate_token(key, rate=1.0, capacity=2) == 0.0)
