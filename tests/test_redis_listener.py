"""RedisBackend.wait over one shared pub/sub connection (brokers/redis/listener.py): reuse,
many threads at once, unsubscribe when done, a lost connection, and a forked child."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from conftest import wait_for

from taskframe.brokers.redis import RedisBackend
from taskframe.exceptions import BrokerError

pytestmark = pytest.mark.redis


@pytest.fixture
def raw(redis_raw: redis.Redis[bytes]) -> redis.Redis[bytes]:
    return redis_raw


@pytest.fixture
def backend(redis_url: str, resp_protocol: int) -> Iterator[RedisBackend]:
    """RESP3 reads the key on the subscribed connection itself; RESP2 through the client."""
    store = RedisBackend(redis_url, options={"protocol": resp_protocol})
    yield store
    store.close()


def key(task_id: str) -> str:
    return f"celery-task-meta-{task_id}"


def subscribed(raw: redis.Redis[bytes], task_id: str) -> bool:
    return int(raw.pubsub_numsub(key(task_id))[0][1]) > 0


def store_once_subscribed(
    raw: redis.Redis[bytes], backend: RedisBackend, task_id: str, payload: bytes
) -> threading.Thread:
    """A thread that stores ``payload`` as soon as a waiter listens on the result's channel."""

    def store() -> None:
        wait_for(lambda: subscribed(raw, task_id))
        backend.set(task_id, payload, expires=60)

    thread = threading.Thread(target=store)
    thread.start()
    return thread


def test_sequential_waits_reuse_one_connection(
    backend: RedisBackend, raw: redis.Redis[bytes]
) -> None:
    connections = []
    for number in range(3):
        task_id = str(uuid.uuid4())
        writer = store_once_subscribed(raw, backend, task_id, b"%d" % number)
        assert backend.wait(task_id, 10.0, lambda payload: True) == b"%d" % number
        writer.join()
        connections.append(backend._listener._connection)
    assert connections[0] is not None
    assert connections == [connections[0]] * 3


def test_a_stored_result_is_read_without_a_publish(
    backend: RedisBackend, raw: redis.Redis[bytes]
) -> None:
    task_id = str(uuid.uuid4())
    raw.set(key(task_id), b"ready")
    assert backend.wait(task_id, 10.0, lambda payload: True) == b"ready"


def test_waiting_on_a_key_of_another_type_is_an_error(
    backend: RedisBackend, raw: redis.Redis[bytes]
) -> None:
    task_id = str(uuid.uuid4())
    raw.rpush(key(task_id), b"not a result")
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        backend.wait(task_id, 10.0, lambda payload: True)
    other = str(uuid.uuid4())
    raw.set(key(other), b"fine")
    assert backend.wait(other, 10.0, lambda payload: True) == b"fine"


def test_many_sequential_waits_leave_their_channels(
    backend: RedisBackend, raw: redis.Redis[bytes]
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(250)]
    for task_id in ids:
        raw.set(key(task_id), b"done")
        assert backend.wait(task_id, 10.0, lambda payload: True) == b"done"
    wait_for(lambda: sum(subscribed(raw, task_id) for task_id in ids) < 100)


def test_the_channel_is_left_with_the_next_wait(
    backend: RedisBackend, raw: redis.Redis[bytes]
) -> None:
    task_id = str(uuid.uuid4())
    assert backend.wait(task_id, 0.05, lambda payload: True) is None
    raw.set(key("next"), b"x")
    assert backend.wait("next", 10.0, lambda payload: True) == b"x"
    wait_for(lambda: not subscribed(raw, task_id))


def test_many_threads_wait_at_once(backend: RedisBackend, raw: redis.Redis[bytes]) -> None:
    # Given ten waiters: eight on their own results and two on one shared result
    ids = [str(uuid.uuid4()) for _ in range(9)]
    targets = [*ids, ids[0]]
    got: dict[int, bytes | None] = {}

    def wait(index: int) -> None:
        got[index] = backend.wait(targets[index], 20.0, lambda payload: payload != b"STARTED")

    waiters = [threading.Thread(target=wait, args=(index,)) for index in range(len(targets))]
    for waiter in waiters:
        waiter.start()
    # When each result is first marked STARTED, then stored
    wait_for(lambda: all(subscribed(raw, task_id) for task_id in ids))
    for task_id in ids:
        backend.set(task_id, b"STARTED", expires=60)
    for task_id in reversed(ids):
        backend.set(task_id, task_id.encode(), expires=60)
    for waiter in waiters:
        waiter.join(timeout=30)
    # Then every waiter got its own ready result
    assert got == {index: task_id.encode() for index, task_id in enumerate(targets)}


def test_a_lost_connection_is_replaced(backend: RedisBackend, raw: redis.Redis[bytes]) -> None:
    task_id = str(uuid.uuid4())
    got: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: got.append(backend.wait(task_id, 20.0, bool)))
    waiter.start()
    wait_for(lambda: subscribed(raw, task_id))
    # When the server drops the listener's connection
    connection = backend._listener._connection
    assert connection is not None
    host, port = connection.sock.getsockname()
    address = f"{host}:{port}"
    (client,) = [c for c in raw.client_list() if c["addr"] == address]
    assert raw.client_kill_filter(_id=client["id"]) == 1
    # Then the waiter subscribes again (the kill took its subscription) and gets the result
    wait_for(lambda: subscribed(raw, task_id))
    backend.set(task_id, b"after", expires=60)
    waiter.join(timeout=30)
    assert got == [b"after"]


def _wait_in_child(url: str, task_id: str, backend: RedisBackend, answers: object) -> None:
    assert isinstance(answers, multiprocessing.queues.Queue)
    answers.put(backend.wait(task_id, 20.0, bool))


def test_a_forked_child_opens_its_own_connection(
    backend: RedisBackend, raw: redis.Redis[bytes], redis_url: str
) -> None:
    # Given a parent whose listener is connected
    backend.wait(str(uuid.uuid4()), 0.01, bool)
    assert backend._listener._connection is not None
    # When a forked child waits with the same backend object
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    task_id = str(uuid.uuid4())
    child = context.Process(target=_wait_in_child, args=(redis_url, task_id, backend, answers))
    child.start()
    wait_for(lambda: subscribed(raw, task_id))
    backend.set(task_id, b"for the child", expires=60)
    # Then the child gets the result, and the parent's connection still works
    assert answers.get(timeout=20) == b"for the child"
    child.join(timeout=20)
    assert child.exitcode == 0
    other = str(uuid.uuid4())
    writer = store_once_subscribed(raw, backend, other, b"for the parent")
    assert backend.wait(other, 10.0, bool) == b"for the parent"
    writer.join()
