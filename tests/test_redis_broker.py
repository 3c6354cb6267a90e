"""RedisBroker specifics the shared contract suite cannot see: kombu's key layout, the unacked
bookkeeping, durable delays, poison entries, URLs and error messages.

Runs against the shared Redis (db 9, flushed per test) and, for passwords, Unix sockets and
Sentinel, against a private redis-server started on a free port.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import IN_CI, free_port, port_open, wait_for

from taskframe.brokers.base import Delivery, Message, broker_from_url
from taskframe.brokers.redis import RedisBroker
from taskframe.brokers.redis.connection import parse_url
from taskframe.brokers.redis.wire import RedisConnectionError
from taskframe.exceptions import BrokerConnectionError, BrokerError, ImproperlyConfigured

pytestmark = pytest.mark.redis
SEP = "\x06\x16"


@pytest.fixture
def raw(redis_raw: redis.Redis[bytes]) -> redis.Redis[bytes]:
    return redis_raw


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisBroker]:
    store = RedisBroker(redis_url)
    yield store
    store.close()


def task_message(task_id: str, priority: int | None = None) -> Message:
    properties: dict[str, object] = {
        "correlation_id": task_id,
        "reply_to": "oid",
        "delivery_mode": 2,
    }
    if priority is not None:
        properties["priority"] = priority
    return Message(
        b"[[2, 2], {}, {}]", headers={"task": "t.add", "id": task_id}, properties=properties
    )


def test_publish_writes_kombus_envelope_and_binding(
    broker: RedisBroker, raw: redis.Redis[bytes]
) -> None:
    broker.publish("jobs", task_message("a1"))
    [stored] = raw.lrange("jobs", 0, -1)
    envelope = json.loads(stored)
    assert list(envelope) == ["body", "content-encoding", "content-type", "headers", "properties"]
    assert base64.b64decode(envelope["body"]) == b"[[2, 2], {}, {}]"
    assert envelope["headers"] == {"task": "t.add", "id": "a1"}
    properties = envelope["properties"]
    assert properties["correlation_id"] == "a1"
    assert properties["delivery_info"] == {"exchange": "", "routing_key": "jobs"}
    assert properties["priority"] == 0
    assert properties["body_encoding"] == "base64"
    assert len(properties["delivery_tag"]) == 36
    assert raw.smembers("_kombu.binding.jobs") == {f"jobs{SEP}{SEP}jobs".encode()}


def test_priorities_use_kombus_lists_and_lower_numbers_run_first(
    broker: RedisBroker, raw: redis.Redis[bytes]
) -> None:
    for number in (9, 7, 4, 2, 0):
        broker.publish("jobs", task_message(f"p{number}"), priority=number)
    assert raw.llen("jobs") == 2
    assert [raw.llen(f"jobs{SEP}{step}") for step in (3, 6, 9)] == [1, 1, 1]
    received = broker.receive(["jobs"], 10, 1.0)
    assert [d.message.headers["id"] for d in received] == ["p2", "p0", "p4", "p7", "p9"]
    assert [d.message.priority for d in received] == [2, 0, 4, 7, 9]


def test_receive_records_unacked_like_kombu_and_ack_clears_it(
    broker: RedisBroker, raw: redis.Redis[bytes]
) -> None:
    broker.publish("jobs", task_message("u1"))
    [stored] = raw.lrange("jobs", 0, -1)
    [delivery] = broker.receive(["jobs"], 5, 1.0)
    tag = json.loads(stored)["properties"]["delivery_tag"]
    entry = json.loads(raw.hget("unacked", tag) or b"")
    assert entry == [json.loads(stored), "", "jobs"]
    assert raw.zscore("unacked_index", tag) is not None
    delivery.ack()
    assert raw.hlen("unacked") == 0
    assert raw.zcard("unacked_index") == 0


def test_extend_moves_the_unacked_score_forward(
    broker: RedisBroker, raw: redis.Redis[bytes]
) -> None:
    broker.publish("jobs", task_message("x1"))
    [delivery] = broker.receive(["jobs"], 1, 1.0)
    [(tag, before)] = raw.zrange("unacked_index", 0, -1, withscores=True)
    delivery.extend(broker.visibility_timeout + 600)
    after = raw.zscore("unacked_index", tag)
    assert after is not None
    assert after >= before + 599


def test_restore_sweep_flags_and_puts_message_at_the_consuming_end(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    # Given a consumer that took a message and never settled it, and a newer waiting message
    consumer = RedisBroker(redis_url, transport_options={"visibility_timeout": 0})
    consumer.publish("jobs", task_message("lost"))
    [_lost] = consumer.receive(["jobs"], 1, 1.0)
    consumer.publish("jobs", task_message("newer"))
    # When a sweep runs
    assert consumer.restore_visible() == 1
    # Then the lost message is next in line, flagged the way kombu flags it
    first = json.loads(raw.lindex("jobs", -1) or b"")
    assert first["headers"]["redelivered"] is True
    assert first["properties"]["delivery_info"]["redelivered"] is True
    assert raw.hlen("unacked") == 0
    [again] = consumer.receive(["jobs"], 1, 1.0)
    assert (again.message.headers["id"], again.redelivered) == ("lost", True)
    consumer.close()


def test_sweep_skips_while_another_process_holds_the_mutex(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    consumer = RedisBroker(redis_url, transport_options={"visibility_timeout": 0})
    consumer.publish("jobs", task_message("held"))
    consumer.receive(["jobs"], 1, 1.0)
    raw.set("unacked_mutex", "someone-else", px=60_000)
    assert consumer.restore_visible() == 0
    assert raw.hlen("unacked") == 1
    consumer.close()


def test_delayed_message_lives_in_the_store_until_due(
    broker: RedisBroker, raw: redis.Redis[bytes]
) -> None:
    broker.publish("jobs", task_message("later"), delay=0.3)
    assert raw.llen("jobs") == 0
    assert raw.zcard("taskframe.delayed") == 1
    assert broker.size("jobs") == 1
    received: list[Delivery] = []

    def arrived() -> bool:
        received.extend(broker.receive(["jobs"], 1, 0.2))
        return bool(received)

    wait_for(arrived)
    assert raw.zcard("taskframe.delayed") == 0
    assert broker.size("jobs") == 0


def test_delayed_message_is_promoted_for_celery_workers_by_publishing(
    broker: RedisBroker, raw: redis.Redis[bytes]
) -> None:
    broker.promote_interval = 0.0
    broker.publish("jobs", task_message("later"), delay=0.05)

    def promoted() -> bool:
        broker.publish("other", task_message("tick"))
        return raw.llen("jobs") == 1

    wait_for(promoted)
    assert json.loads(raw.lindex("jobs", 0) or b"")["headers"]["id"] == "later"


def test_promote_due_moves_every_due_message_at_once(
    broker: RedisBroker, raw: redis.Redis[bytes]
) -> None:
    broker.publish_many([("jobs", task_message(f"d{n}"), 0.05, None) for n in range(150)])
    broker.publish("jobs", task_message("not yet"), delay=3600)
    wait_for(lambda: broker.promote_due() == 150)
    assert raw.llen("jobs") == 150
    assert raw.zcard("taskframe.delayed") == 1
    assert broker.size("jobs") == 151


def test_without_durable_delays_the_message_goes_out_at_once_with_its_eta(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    store = RedisBroker(redis_url, transport_options={"durable_delays": False})
    message = task_message("held")
    message.headers["eta"] = "2999-01-01T00:00:00+00:00"
    store.publish("jobs", message, delay=60)
    store.close()
    assert raw.zcard("taskframe.delayed") == 0
    assert json.loads(raw.lindex("jobs", 0) or b"")["headers"]["eta"] == message.headers["eta"]


def test_blocking_receive_wakes_when_a_message_arrives(broker: RedisBroker, redis_url: str) -> None:
    producer = RedisBroker(redis_url)
    waiting = threading.Event()

    def publish_later() -> None:
        waiting.wait(5)
        producer.publish_many([("jobs", task_message(f"b{n}"), 0.0, None) for n in range(3)])

    thread = threading.Thread(target=publish_later)
    thread.start()
    waiting.set()
    received: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(received) < 3 and time.monotonic() < deadline:
        received += broker.receive(["jobs", "idle"], 5, 5.0)
    thread.join()
    producer.close()
    assert sorted(d.message.headers["id"] for d in received) == ["b0", "b1", "b2"]


def test_garbage_entry_comes_back_raw_and_can_be_dead_lettered(
    broker: RedisBroker, raw: redis.Redis[bytes]
) -> None:
    raw.lpush("jobs", b"\xffnot json")
    [delivery] = broker.receive(["jobs"], 5, 1.0)
    assert delivery.message.body == b"\xffnot json"
    assert delivery.message.headers == {}
    assert delivery.message.content_type == "application/x-unknown"
    broker.dead_letter(delivery, "not a kombu envelope")
    [parked] = broker.dead_letters("jobs")
    assert (parked.reason, parked.message.body) == ("not a kombu envelope", b"\xffnot json")
    record = json.loads(raw.lindex("jobs.dlq", 0) or b"")
    assert sorted(record) == ["envelope", "failed_at", "id", "reason"]


def test_dead_letter_clears_unacked(broker: RedisBroker, raw: redis.Redis[bytes]) -> None:
    broker.publish("jobs", task_message("bad"))
    [delivery] = broker.receive(["jobs"], 1, 1.0)
    broker.dead_letter(delivery, "unknown task")
    assert raw.hlen("unacked") == 0
    assert broker.dead_letters("jobs")[0].message.headers["id"] == "bad"


def test_broadcast_uses_kombus_fanout_channels(
    broker: RedisBroker, raw: redis.Redis[bytes]
) -> None:
    listener = raw.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe("/9.celery.pidbox")
    broker.broadcast("celery.pidbox", b"payload")
    message = None
    deadline = time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        message = listener.get_message(timeout=1.0)
    listener.close()
    assert message is not None
    assert (message["channel"], message["data"]) == (b"/9.celery.pidbox", b"payload")
    with broker.subscribe(["celeryev/#"]) as subscription:
        raw.publish("/9.celeryev/worker.heartbeat", b"beat")
        assert subscription.get(5.0) == ("celeryev/worker.heartbeat", b"beat")


def test_unreachable_server_names_the_address(redis_url: str) -> None:
    port = free_port()
    store = broker_from_url(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(BrokerConnectionError, match=f"127.0.0.1:{port}"):
        store.ensure_connection()


def test_url_forms_are_parsed() -> None:
    socket_target = parse_url("redis+socket:///run/redis.sock?virtual_host=3")
    assert (socket_target.socket_path, socket_target.db) == ("/run/redis.sock", 3)
    sentinel = parse_url("sentinel://:pw@h1:26379/2;sentinel://h2:26380")
    assert sentinel.hosts == (("h1", 26379), ("h2", 26380))
    assert (sentinel.db, sentinel.password) == (2, "pw")
    tls = parse_url("rediss://u:secret@h:6380/1?ssl_cert_reqs=CERT_NONE")
    assert tls.display == "rediss://u@h:6380/1"
    assert "secret" not in repr(tls)
    with pytest.raises(ImproperlyConfigured, match="not a number"):
        parse_url("redis://h/zero")
    with pytest.raises(ImproperlyConfigured, match="master_name"):
        RedisBroker("sentinel://127.0.0.1:26379")


def test_tls_options_reach_the_connection() -> None:
    store = RedisBroker(
        "rediss://h:6380/0?ssl_cert_reqs=CERT_OPTIONAL",
        transport_options={"ssl_check_hostname": "false"},
    )
    tls = store.client.settings.tls
    assert tls.verify_mode == ssl.CERT_OPTIONAL and not tls.check_hostname
    assert store.client.settings.connect_timeout == 5.0
    store.close()
    # A CA file that does not load is named when the broker is made, not at the first connect
    with pytest.raises(ImproperlyConfigured, match=r"/nowhere/ca\.pem"):
        RedisBroker("rediss://h:6380/0", transport_options={"ssl_ca_certs": "/nowhere/ca.pem"})


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A password-protected redis-server of our own, on a free port and a Unix socket."""
    server = shutil.which("redis-server")
    if server is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (CI=true: fault tests need it)")
        pytest.skip("redis-server is not installed")
    workdir = tmp_path_factory.mktemp("private-redis")
    port, sock = free_port(), workdir / "redis.sock"
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "s3cret",
         "--unixsocket", str(sock), "--unixsocketperm", "700", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: port_open("127.0.0.1", port) and sock.exists())
        yield port, sock
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_wrong_password_is_a_clear_error_without_the_password(
    private_redis: tuple[int, Path],
) -> None:
    port, _sock = private_redis
    store = RedisBroker(f"redis://default:wrong-pw@127.0.0.1:{port}/0")
    with pytest.raises(BrokerError) as failure:
        store.ensure_connection()
    # Not a BrokerConnectionError: the server answered, so retrying cannot help
    assert not isinstance(failure.value, BrokerConnectionError)
    message = str(failure.value)
    assert f"authentication failed for redis://default@127.0.0.1:{port}/0" in message
    assert "wrong-pw" not in message
    store.close()


def test_unix_socket_and_password(private_redis: tuple[int, Path]) -> None:
    _port, sock = private_redis
    store = RedisBroker(f"redis+socket://:s3cret@{sock}?virtual_host=2")
    store.publish("sockq", task_message("s1"))
    [delivery] = store.receive(["sockq"], 1, 1.0)
    assert delivery.message.headers["id"] == "s1"
    delivery.ack()
    store.close()


def test_sentinel_finds_the_master(private_redis: tuple[int, Path], tmp_path: Path) -> None:
    port, _sock = private_redis
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor tfmaster 127.0.0.1 {port} 1\n"
        "sentinel auth-pass tfmaster s3cret\n"
    )
    process = subprocess.Popen(
        [str(shutil.which("redis-server")), str(config), "--sentinel"], stdout=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", sentinel_port))
        store = RedisBroker(
            f"sentinel://:s3cret@127.0.0.1:{sentinel_port}/3",
            transport_options={"master_name": "tfmaster"},
        )
        store.publish("sentq", task_message("m1"))
        [delivery] = store.receive(["sentq"], 1, 1.0)
        assert delivery.message.headers["id"] == "m1"
        delivery.ack()
        store.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_receive_whose_reply_is_lost_gives_its_messages_back_at_once(
    broker: RedisBroker, raw: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three messages, and a receive that runs on the server but whose reply never
    # arrives (the server or the connection dies right after the call ran)
    broker.publish_many([("lost-reply", Message(f"m{n}".encode()), 0.0, None) for n in range(3)])
    connection = broker._producer.connection
    connection.connect()
    read = connection.read

    def reply_lost() -> None:
        read()
        monkeypatch.setattr(connection, "read", read)
        raise RedisConnectionError("connection closed by the Redis server")

    monkeypatch.setattr(connection, "read", reply_lost)
    # (and the call is not run again while the server is up: that would bury what it took)
    with pytest.raises(BrokerConnectionError):
        broker.receive(["lost-reply"], 3, 0.0)
    assert raw.llen("lost-reply") == 0 and raw.hlen("unacked") == 3
    # When the consumer receives again
    received = broker.receive(["lost-reply"], 3, 1.0)
    # Then it gets them at once, in order, flagged redelivered, not after the visibility timeout
    assert [d.message.body for d in received] == [b"m0", b"m1", b"m2"]
    assert all(d.redelivered for d in received)
    assert raw.hlen("unacked") == 3
    broker.ack_many(received)
    assert raw.hlen("unacked") == 0


def test_a_receive_that_never_ran_gives_nothing_back_twice(
    broker: RedisBroker, raw: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a receive that took a message, then one that failed before reaching the server
    broker.publish_many([("no-run", Message(f"m{n}".encode()), 0.0, None) for n in range(2)])
    [first] = broker.receive(["no-run"], 1, 1.0)

    def never_ran(data: bytes) -> None:
        raise RedisConnectionError("error connecting: Connection refused")

    connection = broker._producer.connection
    send = connection.send
    monkeypatch.setattr(connection, "send", never_ran)
    with pytest.raises(BrokerConnectionError):
        broker.receive(["no-run"], 1, 0.0)
    monkeypatch.setattr(connection, "send", send)
    # When the consumer receives again
    [second] = broker.receive(["no-run"], 1, 1.0)
    # Then the first receive's message (still held) was not given back: the next is m1
    assert (first.message.body, second.message.body) == (b"m0", b"m1")
    assert raw.llen("no-run") == 0 and raw.hlen("unacked") == 2


def test_acks_sent_without_waiting_are_applied_and_resent_if_their_fate_is_unknown(
    broker: RedisBroker, raw: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given received messages acked through the worker's path (replies not awaited)
    broker.publish_many([("ack-line", Message(f"m{n}".encode()), 0.0, None) for n in range(4)])
    first = broker.receive(["ack-line"], 2, 1.0)
    broker.send_acks(first)
    # When the next receive runs, the acks are in
    second = broker.receive(["ack-line"], 2, 1.0)
    assert raw.hlen("unacked") == 2
    # And when the line breaks before their replies are read, they are sent again
    broker.send_acks(second)
    connection = broker._unacked._line._line.connection

    def broken(count: int) -> None:
        connection.disconnect()
        raise RedisConnectionError("connection closed by the Redis server")

    monkeypatch.setattr(connection, "read_many", broken)
    assert broker.receive(["ack-line"], 1, 0.0) == []
    assert raw.hlen("unacked") == 0 and raw.zcard("unacked_index") == 0


def test_a_message_a_blocking_wait_takes_is_entered_like_kombu_unless_acked_at_once(
    broker: RedisBroker, raw: redis.Redis[bytes], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer = RedisBroker(redis_url)

    def taken_by_a_blocking_wait(task_id: str) -> Delivery:
        timer = threading.Timer(0.2, producer.publish, ("waited", task_message(task_id)))
        timer.start()
        [delivery] = broker.receive(["waited"], 5, 5.0)
        timer.join()
        return delivery

    def landed(tag: str | None) -> bool:
        deadline = time.monotonic() + 5
        while not raw.hexists("unacked", tag or "") and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(raw.hexists("unacked", tag or ""))

    # Given a message a consumer waiting on an empty queue took, and the call the worker
    # makes after every receive
    first = taken_by_a_blocking_wait("w1")
    broker.send_acks([])
    # Then its entry is in, as kombu writes it
    assert landed(first.tag)
    entry = json.loads(raw.hget("unacked", first.tag or "") or b"")
    assert entry[0]["headers"]["id"] == "w1" and entry[1:] == ["", "waited"]
    first.ack()
    assert raw.hlen("unacked") == 0 and raw.zcard("unacked_index") == 0
    # And a message acked early in that call is neither entered nor removed: nothing is sent
    second = taken_by_a_blocking_wait("w2")
    broker.send_acks([second])
    assert broker._unacked._line._pending == [] and raw.hlen("unacked") == 0
    # And a held entry is written before anything else touches the ledger (here a requeue)
    third = taken_by_a_blocking_wait("w3")
    third.reject(requeue=True)
    assert raw.hlen("unacked") == 0 and raw.llen("waited") == 1
    raw.delete("waited")
    # And when the line breaks before an entry's reply is read, the entry is written again
    # (here it is made to look lost: deleted once it landed)
    fourth = taken_by_a_blocking_wait("w4")
    broker.send_acks([])
    assert landed(fourth.tag)
    raw.hdel("unacked", fourth.tag or "")
    connection = broker._unacked._line._line.connection

    def broken(count: int) -> None:
        connection.disconnect()
        raise RedisConnectionError("connection closed by the Redis server")

    monkeypatch.setattr(connection, "read_many", broken)
    assert broker.receive(["waited"], 1, 0.0) == []
    assert raw.hexists("unacked", fourth.tag or "")
    fourth.ack()
    assert raw.hlen("unacked") == 0 and raw.zcard("unacked_index") == 0
    producer.close()
