"""RedisBroker/RedisBackend and real kombu 5.7 / Celery 5.7 on the same Redis database.

Each side publishes, consumes, restores or stores, and the other side reads the result: the
envelope, the unacked bookkeeping, the result keys and the chord counters are shared.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskframe.brokers.base import Message
from taskframe.brokers.redis import RedisBackend, RedisBroker

kombu = pytest.importorskip("kombu")
celery = pytest.importorskip("celery")

pytestmark = [
    pytest.mark.redis,
    pytest.mark.interop,
    # Celery 5.7's Redis backend calls redis-py's deprecated setex; that is Celery's warning.
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def celery_app(redis_url: str) -> Iterator[Any]:
    app = celery.Celery("interop", broker=redis_url, backend=redis_url)
    yield app
    app.close()


def test_kombu_published_message_arrives_unchanged(redis_url: str, raw: redis.Redis[bytes]) -> None:
    # Given a message published by kombu's own Redis transport
    with kombu.Connection(redis_url) as conn:
        queue = kombu.Queue("interop", kombu.Exchange("interop"), routing_key="interop")
        producer = conn.Producer()
        producer.publish(
            {"x": [1, 2]},
            serializer="json",
            exchange="",
            routing_key="interop",
            declare=[queue],
            headers={"task": "t.add", "id": "k1", "retries": 0},
            correlation_id="k1",
            reply_to="oid",
            priority=4,
            expiration=60,
        )
    [stored] = raw.lrange("interop\x06\x163", 0, -1)
    envelope = json.loads(stored)
    # When RedisBroker receives it
    broker = RedisBroker(redis_url)
    [delivery] = broker.receive(["interop"], 5, 2.0)
    # Then headers, properties and body are kombu's, minus kombu's own envelope keys
    kombu_only = {"delivery_info", "body_encoding", "delivery_tag"}
    expected_properties = {k: v for k, v in envelope["properties"].items() if k not in kombu_only}
    assert (
        delivery.message.headers
        == envelope["headers"]
        == {
            "task": "t.add",
            "id": "k1",
            "retries": 0,
        }
    )
    assert delivery.message.properties == expected_properties
    assert delivery.message.properties["priority"] == 4
    assert json.loads(delivery.message.body) == {"x": [1, 2]}
    assert delivery.message.content_type == "application/json"
    delivery.ack()
    assert raw.hlen("unacked") == 0
    broker.close()


def test_celery_send_task_is_received(celery_app: Any, redis_url: str) -> None:
    result = celery_app.send_task("wire.add", args=(2, 2), queue="interop")
    broker = RedisBroker(redis_url)
    [delivery] = broker.receive(["interop"], 5, 2.0)
    assert delivery.message.headers["task"] == "wire.add"
    assert delivery.message.headers["id"] == result.id
    assert delivery.message.properties["correlation_id"] == result.id
    assert delivery.message.priority == 0
    args, kwargs, _embed = json.loads(delivery.message.body)
    assert (args, kwargs) == ([2, 2], {})
    delivery.ack()
    broker.close()


def test_our_message_is_consumed_and_acked_by_kombu(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    broker = RedisBroker(redis_url)
    sent = Message(
        b'[[3, 4], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
        headers={"lang": "py", "task": "wire.add", "id": "ours-1", "retries": 0},
        properties={"correlation_id": "ours-1", "reply_to": "oid", "delivery_mode": 2},
    )
    broker.publish("interop", sent, priority=0)
    with kombu.Connection(redis_url) as conn:
        received = conn.SimpleQueue("interop").get(timeout=5)
        assert received.headers == sent.headers
        assert received.body == sent.body
        assert received.properties["correlation_id"] == "ours-1"
        assert received.properties["priority"] == 0
        assert received.delivery_info["routing_key"] == "interop"
        assert received.decode() == [[3, 4], {}, {"callbacks": None, "errbacks": None,
                                                   "chain": None, "chord": None}]  # fmt: skip
        assert raw.hlen("unacked") == 1
        received.ack()
        assert raw.hlen("unacked") == 0
    broker.close()


def test_kombu_sweep_restores_what_our_consumer_left(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    # Given our consumer took a message and died without settling it
    broker = RedisBroker(redis_url)
    broker.publish("interop", Message(b'"payload"', headers={"id": "left-1"}))
    [_taken] = broker.receive(["interop"], 1, 2.0)
    broker.close()
    assert raw.llen("interop") == 0
    # When a kombu consumer's restore sweep runs past the visibility timeout
    options = {"visibility_timeout": 0}
    with kombu.Connection(redis_url, transport_options=options) as conn:
        conn.default_channel.qos.restore_visible()
        # Then kombu can consume it again, flagged redelivered
        again = conn.SimpleQueue("interop").get(timeout=5)
        assert again.headers["id"] == "left-1"
        assert again.headers["redelivered"] is True
        assert again.delivery_info["redelivered"] is True
        again.ack()


def test_our_sweep_restores_what_kombu_left(redis_url: str, raw: redis.Redis[bytes]) -> None:
    # Given a kombu consumer holding an unacked message
    with kombu.Connection(redis_url) as conn:
        conn.SimpleQueue("interop").put({"n": 1}, headers={"id": "kombu-left"})
        held = conn.SimpleQueue("interop").get(timeout=5)
        assert held.headers["id"] == "kombu-left"
        assert raw.hlen("unacked") == 1
        # When our broker's sweep finds it past the visibility timeout
        broker = RedisBroker(redis_url, transport_options={"visibility_timeout": 0})
        [delivery] = broker.receive(["interop"], 1, 2.0)
        # Then we receive it, flagged redelivered, exactly once
        assert delivery.message.headers["id"] == "kombu-left"
        assert delivery.redelivered is True
        delivery.ack()
    assert raw.llen("interop") == 0
    assert raw.hlen("unacked") == 0
    broker.close()


def test_celery_reads_our_results_and_we_read_celerys(celery_app: Any, redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    ours = str(uuid.uuid4())
    payload = {
        "status": "SUCCESS",
        "result": 4,
        "traceback": None,
        "children": [],
        "date_done": "2026-11-22T18:14:43.298508+00:00",
        "task_id": ours,
    }
    timer = threading.Timer(0.2, backend.set, (ours, json.dumps(payload).encode()), {"expires": 60})
    timer.start()
    try:
        assert celery_app.AsyncResult(ours).get(timeout=10) == 4
    finally:
        timer.join()
    theirs = str(uuid.uuid4())
    celery_app.backend.store_result(theirs, {"a": 1}, "SUCCESS")
    stored = json.loads(backend.get(theirs) or b"")
    assert (stored["status"], stored["result"], stored["task_id"]) == ("SUCCESS", {"a": 1}, theirs)
    assert backend.wait(theirs, 5.0, lambda p: True) == backend.get(theirs)
    backend.close()


def celery_part(app: Any, gid: str, index: int, tid: str, value: object) -> list[Any]:
    """One header part counted by Celery 5.7's own chord script on the same keys."""
    backend = app.backend
    prefix = backend.get_key_for_group(gid).decode()
    encoded = backend.encode([1, tid, "SUCCESS", value])
    reply: list[Any] = backend._chord_part_return_script(
        keys=[prefix + ".j", prefix + ".t", prefix + ".s", prefix + ".d", prefix, prefix + ".c"],
        args=[tid, encoded, 1, index, 0, 86400, 6, uuid.uuid4().hex],
    )
    return reply


def test_chord_parts_counted_by_celery_complete_with_ours(celery_app: Any, redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    gid = str(uuid.uuid4())
    celery_app.backend.set_chord_size(gid, 2)
    readycount, _diff, size, claimed = celery_part(celery_app, gid, 1, "t1", 4)
    assert (readycount, int(size), claimed) == (1, 2, 0)
    ours = json.dumps([1, "t0", "SUCCESS", 2]).encode()
    parts = backend.chord_part_done(gid, 0, ours, expires=86400)
    assert parts is not None
    assert [json.loads(p) for p in parts] == [[1, "t0", "SUCCESS", 2], [1, "t1", "SUCCESS", 4]]
    backend.close()


def test_chord_parts_counted_by_us_complete_with_celery(
    celery_app: Any, redis_url: str, raw: redis.Redis[bytes]
) -> None:
    backend = RedisBackend(redis_url)
    gid = str(uuid.uuid4())
    backend.chord_start(gid, 2, expires=86400)
    part = json.dumps([1, "t0", "SUCCESS", 2]).encode()
    assert backend.chord_part_done(gid, 0, part, expires=86400) is None
    readycount, _diff, size, claimed = celery_part(celery_app, gid, 1, "t1", 4)
    assert (readycount, int(size), claimed) == (2, 2, 1)
    prefix = f"celery-taskset-meta-{gid}"
    members = raw.zrange(prefix + ".j", 0, -1)
    assert [celery_app.backend.decode(m) for m in members] == [
        [1, "t0", "SUCCESS", 2],
        [1, "t1", "SUCCESS", 4],
    ]
    assert raw.smembers(prefix + ".d") == {b"t0:0", b"t1:1"}
    backend.close()
