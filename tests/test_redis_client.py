"""taskframe's own Redis client against the real server: replies in both RESP versions,
pipelines and transactions, scripts, pub/sub, broken connections and forks. redis-py is the
independent client that looks at the server's side."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from taskframe.brokers.redis.client import Client, HeldConnection, Script
from taskframe.brokers.redis.connection import connect, parse_url, translate_errors
from taskframe.brokers.redis.wire import (
    DataError,
    NoScriptError,
    RedisConnectionError,
    ResponseError,
    pack,
)
from taskframe.exceptions import BrokerConnectionError

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url: str, resp_protocol: int) -> Iterator[Client]:
    made = connect(parse_url(redis_url), {"protocol": resp_protocol})
    yield made
    made.close()


def kill(redis_raw: redis.Redis[bytes], name: bytes) -> None:
    """Drop, server side, the connection that named itself ``name``."""
    (victim,) = [c for c in redis_raw.client_list() if c["name"] == name.decode()]
    assert redis_raw.client_kill_filter(_id=victim["id"]) == 1


def test_replies_come_back_as_python_values(client: Client) -> None:
    assert client.execute("SET", "k", "v") == b"OK"
    assert client.execute("GET", "k") == b"v"
    assert client.execute("GET", "missing") is None
    assert client.execute("RPUSH", "l", "a", b"b", 3, 1.5) == 4
    assert client.execute("LRANGE", "l", 0, -1) == [b"a", b"b", b"3", b"1.5"]
    assert client.execute("BRPOP", "empty", 0.01) is None
    client.execute("HSET", "h", "f", "1")
    fields = client.execute("HGETALL", "h")
    assert fields == ({b"f": b"1"} if client.settings.protocol == 3 else [b"f", b"1"])
    nested = client.execute("EVAL", "return {1, {'x', false}, 'y'}", 0)
    assert nested == [1, [b"x", None], b"y"]


def test_a_large_value_crosses_many_reads(client: Client) -> None:
    value = os.urandom(3 * 1024 * 1024 + 7)
    client.execute("SET", "big", value)
    assert client.execute("GET", "big") == value


def test_an_error_reply_raises_and_the_connection_stays_usable(client: Client) -> None:
    client.execute("SET", "s", "text")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        client.execute("LPUSH", "s", "x")
    assert client.execute("GET", "s") == b"text"


def test_an_argument_that_cannot_be_sent_is_named(client: Client) -> None:
    with pytest.raises(DataError, match="cannot send dict to Redis"):
        client.execute("SET", "k", {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(DataError, match="bool"):
        pack([("SET", "k", True)])


def test_pipeline_and_transaction(client: Client, redis_raw: redis.Redis[bytes]) -> None:
    pipe = client.pipeline()
    pipe.add("INCR", "n").add("INCR", "n").add("GET", "n")
    assert pipe.execute() == [1, 2, b"2"]
    transaction = client.pipeline(transaction=True)
    transaction.add("LPUSH", "t", "a").add("LLEN", "t")
    assert transaction.execute() == [1, 1]
    failing = client.pipeline()
    failing.add("SET", "s", "x").add("LPUSH", "s", "y").add("SET", "after", "1")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        failing.execute()
    assert redis_raw.get("after") == b"1"  # every command ran; the first error is raised after


def test_a_script_the_server_lost_runs_from_its_source(
    client: Client, redis_raw: redis.Redis[bytes]
) -> None:
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    redis_raw.script_flush()
    assert script(client, ["c"], [5]) == 5
    redis_raw.script_flush()
    pipe = client.pipeline()
    pipe.script(script, ["c"], [1]).add("GET", "c")
    assert pipe.execute() == [6, b"5"]  # GET ran before the script went again by source
    assert redis_raw.get("c") == b"6"
    with pytest.raises(NoScriptError):
        client.execute("EVALSHA", "0" * 40, 0)


def test_a_dropped_connection_is_replaced_and_the_command_sent_again(
    client: Client, redis_raw: redis.Redis[bytes]
) -> None:
    client.execute("CLIENT", "SETNAME", "victim")
    kill(redis_raw, b"victim")
    assert client.execute("PING") == b"PONG"


def test_a_held_connection_sends_a_command_once_when_asked(
    redis_url: str, redis_raw: redis.Redis[bytes]
) -> None:
    held = HeldConnection(connect(parse_url(redis_url), {}).settings)
    held.execute("CLIENT", "SETNAME", "held")
    kill(redis_raw, b"held")
    # with once, a command whose reply did not come is not sent again
    with pytest.raises(RedisConnectionError):
        held.execute("INCR", "once", once=True)
    assert redis_raw.get("once") is None  # (the server had closed the socket it was written to)
    assert held.execute("INCR", "once", once=True) == 1  # on a new connection
    # without once, it is sent again on a new connection
    held.execute("CLIENT", "SETNAME", "held")
    kill(redis_raw, b"held")
    assert held.execute("INCR", "once") == 2
    assert held.execute_many([("INCR", "many"), ("LPUSH", "once", "x")])[0] == 1
    assert isinstance(held.execute_many([("LPUSH", "once", "x")])[0], ResponseError)
    held.close()


def test_subscriber_gets_messages_and_subscribes_again_after_a_drop(
    client: Client, redis_raw: redis.Redis[bytes]
) -> None:
    subscriber = client.subscriber()
    subscriber.connection.call("CLIENT", "SETNAME", "listener")
    subscriber.psubscribe("news.*")
    # the subscription confirmation is not a message
    while subscriber.get_message(0.2) is not None:
        pass
    redis_raw.publish("news.a", b"one")
    assert subscriber.get_message(2.0) == (b"news.a", b"one")
    kill(redis_raw, b"listener")
    assert subscriber.get_message(2.0) is None  # the drop is seen; subscribed again
    while subscriber.get_message(0.2) is not None:
        pass
    redis_raw.publish("news.b", b"two")
    assert subscriber.get_message(2.0) == (b"news.b", b"two")
    subscriber.close()


def test_a_forked_child_opens_its_own_connections(client: Client) -> None:
    client.execute("SET", "parent", "1")
    parent_connection = client.pool.get()
    client.pool.release(parent_connection)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            mine = client.pool.get()
            ok = mine is not parent_connection and client.execute("GET", "parent") == b"1"
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert client.execute("GET", "parent") == b"1"  # the parent's socket was left alone


def test_threads_share_a_pool(client: Client) -> None:
    errors: list[BaseException] = []

    def work(number: int) -> None:
        try:
            for _ in range(200):
                client.execute("INCR", "shared")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert client.execute("GET", "shared") == b"800"


def test_max_connections_is_a_clear_error(redis_url: str) -> None:
    client = connect(parse_url(redis_url), {"max_connections": 1})
    held = client.pool.get()
    with pytest.raises(RedisConnectionError, match="all 1 connections"):
        client.pool.get()
    client.pool.release(held)
    assert client.execute("PING") == b"PONG"
    client.close()


def test_an_unreachable_server_is_named(redis_url: str) -> None:
    target = parse_url("redis://127.0.0.1:1/0")
    client = connect(target, {"socket_connect_timeout": 1.0, "retries": 0})
    with pytest.raises(BrokerConnectionError, match=r"127\.0\.0\.1:1\b"), translate_errors(target):
        client.execute("PING")


def test_a_silent_subscription_is_pinged_and_replaced_when_even_that_goes_unanswered(
    redis_url: str, redis_raw: redis.Redis[bytes], resp_protocol: int
) -> None:
    client = connect(
        parse_url(redis_url), {"health_check_interval": 0.3, "protocol": resp_protocol}
    )
    subscriber = client.subscriber()
    subscriber.connection.call("CLIENT", "SETNAME", "quiet")
    subscriber.psubscribe("news.*")
    assert subscriber.get_message(0.2) is None  # the confirmation
    # After an interval of silence it sends a PING, and the answer counts as hearing back
    time.sleep(0.35)
    assert subscriber.get_message(0.01) is None
    assert subscriber.get_message(0.5) is None  # the PONG
    (quiet,) = [c for c in redis_raw.client_list() if c["name"] == "quiet"]
    assert quiet["cmd"] == "ping"
    # When the server stops answering (paused), the connection is replaced once the PING has
    # gone unanswered for an interval, and the subscription is made again on the new one
    redis_raw.client_pause(1500)
    time.sleep(0.35)
    subscriber.get_message(0.01)
    time.sleep(0.35)
    subscriber.get_message(0.01)
    assert not [c for c in redis_raw.client_list() if c["name"] == "quiet"]
    subscriber.get_message(0.5)  # the new subscription's confirmation
    redis_raw.publish("news.c", b"three")
    assert subscriber.get_message(2.0) == (b"news.c", b"three")
    subscriber.close()
    client.close()


def test_an_idle_pooled_connection_is_checked_before_use(
    redis_url: str, redis_raw: redis.Redis[bytes]
) -> None:
    # No retries: only the health check can save a command from a connection the server
    # dropped while it sat idle in the pool
    client = connect(parse_url(redis_url), {"health_check_interval": 0.2, "retries": 0})
    client.execute("CLIENT", "SETNAME", "idle")
    kill(redis_raw, b"idle")
    time.sleep(0.3)
    assert client.execute("PING") == b"PONG"
    client.close()


def test_a_server_that_does_not_speak_resp_is_one_clear_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_nonsense() -> None:
        connection, _ = listener.accept()
        connection.recv(1024)
        connection.sendall(b"$not-a-length\r\n")
        connection.close()

    threading.Thread(target=answer_nonsense, daemon=True).start()
    target = parse_url(f"redis://127.0.0.1:{port}/0")
    client = connect(target, {"retries": 0})
    with pytest.raises(BrokerConnectionError, match="malformed reply"), translate_errors(target):
        client.execute("PING")
    client.close()
    listener.close()
