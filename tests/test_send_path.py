"""The fast send path: ids made per message, the Redis producer's held connection, and the
per-task caches a send relies on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from taskframe import Taskframe, group
from taskframe.brokers.base import Message
from taskframe.brokers.redis import RedisBroker
from taskframe.exceptions import SerializationError
from taskframe.protocol import new_id


def test_new_id_is_a_random_version_4_uuid() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisBroker]:
    store = RedisBroker(redis_url)
    yield store
    store.close()


@pytest.mark.redis
def test_a_single_publish_survives_a_dropped_held_connection(
    broker: RedisBroker, redis_url: str
) -> None:
    # Given a producer whose held connection the server has dropped
    broker.publish("q", Message(body=b"first"))
    broker.publish("q", Message(body=b"second"))
    held = broker._producer.connection
    assert held is not None
    host, port = held.sock.getsockname()
    raw = redis.Redis.from_url(redis_url)
    (client,) = [c for c in raw.client_list() if c["addr"] == f"{host}:{port}"]
    assert raw.client_kill_filter(_id=client["id"]) == 1
    raw.close()
    # When it publishes again
    broker.publish("q", Message(body=b"third"))
    # Then every message is there once, in order
    bodies = [d.message.body for d in broker.receive(["q"], 10, timeout=1.0)]
    assert bodies == [b"first", b"second", b"third"]


def test_changed_settings_reach_the_next_message() -> None:
    app = Taskframe("send", broker="memory://", backend="memory://", set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    app.conf.task_serializer = "msgpack"
    assert app.build_message(add.name, (1, 2))[2].content_type == "application/x-msgpack"
    del app.conf.task_serializer
    assert app.build_message(add.name, (1, 2))[2].content_type == "application/json"
    app.conf.update(CELERY_DEFAULT_PRIORITY=7)
    assert app.build_message(add.name, (1, 2))[2].priority == 7
    with pytest.raises(TypeError, match=r"add\(\) missing a required argument: 'y'"):
        add.delay(1)


def test_group_members_drafted_once_encode_as_each_would_alone() -> None:
    # Given a group of plain members (the path that drafts the first and derives the rest)
    app = Taskframe("send", broker="memory://", backend="memory://", set_as_current=False)

    @app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    members = [add.s(1, 2), add.s(3), add.s(4, y=5), add.s(6).set(countdown=0)]
    app.broker.purge("celery")
    result = group(members).apply_async()
    sent = app.broker.receive(["celery"], 10, 0.0)
    # Then each message is the one build_message makes for that member alone
    assert [d.message.headers["id"] for d in sent] == [r.id for r in result.results]
    for index, (delivery, member) in enumerate(zip(sent, members, strict=True)):
        options = {"task_id": delivery.message.headers["id"], "group_id": result.id}
        options.update(
            group_index=index, reply_to=app.oid, countdown=member.options.get("countdown")
        )
        _, _, alone = app.build_message(add.name, member.args, member.kwargs, **options)
        assert delivery.message.body == alone.body
        timeless = {"eta": None}  # the member with a countdown was drafted a moment earlier
        assert delivery.message.headers | timeless == alone.headers | timeless
        assert (delivery.message.headers["eta"] is None) == (alone.headers["eta"] is None)
        assert delivery.message.properties == alone.properties


def test_a_group_member_that_cannot_serialize_is_named() -> None:
    app = Taskframe("send", broker="memory://", backend="memory://", set_as_current=False)

    @app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    with pytest.raises(SerializationError, match="argument 'y'"):
        group([add.s(1, 2), add.s(3, object())]).apply_async()
