"""The raw clients' own limits on the same payload: what no framework can beat.

Redis (redis-py): LPUSH pipelined in one round trip; LPUSH one round trip each; two consumer
processes draining with one BRPOP per message. RabbitMQ (pika): persistent publish without and
with publisher confirms (at most 5,000 messages); two consumer processes with prefetch 100
acking each message.
Consumers are subprocesses (``python -m benchmarks.floor brpop|consume ...``) that connect,
report ready, and wait on a Redis start key, so their start-up is not timed; each stops at a
sentinel queued after the payloads and prints the time it got there.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pika
import redis

from benchmarks.runner import REPO

__all__ = ["amqp_floors", "redis_floors"]

FLOOR_QUEUE = "taskframe-bench-floor"
READY_KEY = "bench:floor:ready"
GO_KEY = "bench:floor:go"
SENTINEL = b"bench:floor:stop"
CONSUMERS = 2
PREFETCH = 100
CONFIRMED_MAX = 5_000
"""Confirmed publishing waits a round trip per message; this many give a stable rate."""


def redis_floors(url: str, payload: bytes, count: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    try:
        client.delete(FLOOR_QUEUE, READY_KEY, GO_KEY)
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for _ in range(count):
            pipe.lpush(FLOOR_QUEUE, payload)
        pipe.execute()
        pipelined = count / (time.perf_counter() - started)
        client.delete(FLOOR_QUEUE)
        started = time.perf_counter()
        for _ in range(count):
            client.lpush(FLOOR_QUEUE, payload)
        single = count / (time.perf_counter() - started)
        client.lpush(FLOOR_QUEUE, *[SENTINEL] * CONSUMERS)
        drain = _timed_drain(client, ["brpop", url], count)
        return {"lpush_pipelined": pipelined, "lpush_single": single, "brpop_drain": drain}
    finally:
        client.delete(FLOOR_QUEUE, READY_KEY, GO_KEY)
        client.close()


def amqp_floors(amqp_url: str, redis_url: str, payload: bytes, count: int) -> dict[str, float]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    control = redis.Redis.from_url(redis_url)
    try:
        channel = connection.channel()
        channel.queue_delete(FLOOR_QUEUE)
        channel.queue_declare(FLOOR_QUEUE, durable=True)
        persistent = pika.BasicProperties(delivery_mode=2)
        publish = _publisher(channel, persistent, payload)
        plain = _rate(publish, count)
        channel.queue_purge(FLOOR_QUEUE)
        confirmed_channel = connection.channel()
        confirmed_channel.confirm_delivery()
        confirmed = _rate(
            _publisher(confirmed_channel, persistent, payload), min(count, CONFIRMED_MAX)
        )
        channel.queue_purge(FLOOR_QUEUE)
        publish(count)
        for _ in range(CONSUMERS):
            channel.basic_publish("", FLOOR_QUEUE, SENTINEL, persistent)
        control.delete(READY_KEY, GO_KEY)
        drain = _timed_drain(control, ["consume", amqp_url, redis_url], count)
        return {"publish": plain, "publish_confirmed": confirmed, "consume": drain}
    finally:
        connection.channel().queue_delete(FLOOR_QUEUE)
        connection.close()
        control.delete(READY_KEY, GO_KEY)
        control.close()


def _publisher(
    channel: object, properties: pika.BasicProperties, payload: bytes
) -> Callable[[int], None]:
    def publish(count: int) -> None:
        send = channel.basic_publish  # type: ignore[attr-defined]  # pika channels are untyped
        for _ in range(count):
            send("", FLOOR_QUEUE, payload, properties)

    return publish


def _rate(send: Callable[[int], None], count: int) -> float:
    started = time.perf_counter()
    send(count)
    return count / (time.perf_counter() - started)


def _timed_drain(control: redis.Redis[bytes], arguments: list[str], count: int) -> float:
    """Start the consumers, release them together, and time until the last saw its sentinel."""
    command = [sys.executable, "-m", "benchmarks.floor", *arguments]
    consumers = [
        subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        for _ in range(CONSUMERS)
    ]
    try:
        for _ in range(CONSUMERS):
            if control.blpop([READY_KEY], timeout=30) is None:
                raise TimeoutError("floor consumers did not start within 30 s")
        started = time.time()
        control.lpush(GO_KEY, *[b"go"] * CONSUMERS)
        ends = []
        for consumer in consumers:
            stdout, _ = consumer.communicate(timeout=300)
            ends.append(float(stdout.decode().split()[-1]))
        return count / (max(ends) - started)
    finally:
        for consumer in consumers:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait()


def _brpop_consumer(url: str) -> float:
    client = redis.Redis.from_url(url)
    client.ping()
    _ready_then_wait(client)
    pop = client.brpop
    while True:
        popped = pop([FLOOR_QUEUE], timeout=60)
        if popped is None or popped[1] == SENTINEL:
            return time.time()


def _amqp_consumer(amqp_url: str, redis_url: str) -> float:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=PREFETCH)
    _ready_then_wait(redis.Redis.from_url(redis_url))
    ack = channel.basic_ack
    for method, _properties, body in channel.consume(FLOOR_QUEUE, inactivity_timeout=60):
        if method is None:
            break
        ack(method.delivery_tag)
        if body == SENTINEL:
            break
    finished = time.time()
    channel.cancel()
    connection.close()
    return finished


def _ready_then_wait(control: redis.Redis[bytes]) -> None:
    control.rpush(READY_KEY, b"ready")
    control.blpop([GO_KEY], timeout=60)


def main(argv: list[str]) -> None:
    """Consumer entry point: ``brpop <redis url>`` or ``consume <amqp url> <redis url>``."""
    kind, *urls = argv
    finished = _brpop_consumer(*urls) if kind == "brpop" else _amqp_consumer(*urls)
    print(f"{finished:.6f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
