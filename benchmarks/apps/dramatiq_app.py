"""Dramatiq's side: ``dramatiq benchmarks.apps.dramatiq_app:broker -p 2 -t 1 -Q <queue>``.

Two worker processes with one worker thread each, so two tasks run at a time as with the
other frameworks' two prefork children. Dramatiq's default middleware, plus ``Results``
(Redis) for the round trip and ``GroupCallbacks`` (Redis rate-limiter backend) for the chord.
Publisher confirms (``confirm_delivery``, off by default) only for the confirmed row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RateLimiterBackend
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend as ResultsBackend

from benchmarks.apps import tasks
from benchmarks.settings import (
    BENCH_QUEUE,
    ENV_BACKEND_URL,
    ENV_BROKER_URL,
    ENV_CONFIRM_PUBLISH,
    ENV_QUEUE,
)

__all__ = ["Actors", "broker", "build"]


@dataclass
class Actors:
    broker: dramatiq.Broker
    noop: Any
    echo: Any
    chord_done: Any


def build(
    broker_url: str, backend_url: str, queue: str, *, confirm_publish: bool = False
) -> Actors:
    """A broker (Redis or RabbitMQ by URL scheme) with the three actors on ``queue``."""
    amqp = broker_url.startswith("amqp")
    broker_class: Any = RabbitmqBroker if amqp else RedisBroker  # untyped constructors
    options = {"confirm_delivery": confirm_publish} if amqp else {}
    made: dramatiq.Broker = broker_class(url=broker_url, **options)
    results: Any = Results  # untyped constructor in dramatiq's stubs
    made.add_middleware(results(backend=ResultsBackend(url=backend_url)))
    made.add_middleware(GroupCallbacks(RateLimiterBackend(url=backend_url)))
    return Actors(
        broker=made,
        noop=dramatiq.actor(broker=made, actor_name="noop", queue_name=queue)(tasks.noop),
        echo=dramatiq.actor(broker=made, actor_name="echo", queue_name=queue, store_results=True)(
            tasks.echo
        ),
        chord_done=dramatiq.actor(broker=made, actor_name="chord_done", queue_name=queue)(
            tasks.chord_done
        ),
    )


_actors = build(
    os.environ.get(ENV_BROKER_URL, "redis://127.0.0.1:6379/10"),
    os.environ.get(ENV_BACKEND_URL, "redis://127.0.0.1:6379/10"),
    os.environ.get(ENV_QUEUE, BENCH_QUEUE),
    confirm_publish=os.environ.get(ENV_CONFIRM_PUBLISH) == "1",
)
broker = _actors.broker
