"""The contracts between taskframe's core and the stores it runs on.

A :class:`Broker` moves :class:`Message` objects between named queues and knows nothing of
tasks; a :class:`ResultBackend` keeps task outcomes in Celery's result-meta format. Every
store (memory, sqlite, redis, amqp, sqs) implements these two classes, and nothing above
``taskframe.brokers`` ever sees a client library's exception: each store module translates
them into :class:`~taskframe.exceptions.BrokerError` and its kin at its boundary.

Decisions that fit all of Redis, RabbitMQ and SQS:

* Consumption is a batched pull, ``receive(queues, max_messages, timeout)``, rather than a
  callback. Redis pops up to N entries in one Lua call, SQS receives up to 10 per call and pika
  drains the messages RabbitMQ already pushed under ``basic_qos``. The same thread that
  receives also acks, because pika connections are not thread-safe. ``consume()`` is the
  generator form, written once here on top of ``receive``.
* A delivered message is invisible to other consumers until it is acked or rejected, or its
  visibility timeout passes; :meth:`Delivery.extend` pushes that deadline out while a long task
  runs (SQS ``ChangeMessageVisibility``; on RabbitMQ an unacked message never times out).
* Delayed delivery is durable in the store. ``Capabilities.max_delay`` says how far a single
  publish can defer a message (SQS: 900 s); a broker re-defers longer delays itself.
* Priority is 0-9 and higher runs first, except where Celery itself gives the number the
  opposite meaning on that store (Redis: lower runs first). There taskframe keeps Celery's
  meaning, so a Celery program keeps its behaviour after switching and a mixed fleet agrees on
  the order; ``Capabilities.lower_priority_first`` says which applies.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from taskframe.exceptions import ImproperlyConfigured

__all__ = [
    "BACKEND_SCHEMES",
    "BROKER_SCHEMES",
    "Broker",
    "Capabilities",
    "DeadLetter",
    "Delivery",
    "Message",
    "ResultBackend",
    "Subscription",
    "backend_from_url",
    "broker_from_url",
]


@dataclass
class Message:
    """One message as it travels: AMQP-style headers and properties plus the encoded body.

    ``properties`` holds ``correlation_id``, ``reply_to``, ``priority``, ``delivery_mode`` and
    (optionally) ``expiration``, as Celery puts them; stores add their own envelope keys.
    """

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"

    @property
    def priority(self) -> int | None:
        value = self.properties.get("priority")
        return int(value) if value is not None else None


@dataclass(frozen=True)
class Capabilities:
    """What a store can do, read by the core instead of guessing."""

    priorities: bool = True
    lower_priority_first: bool = False
    max_delay: float | None = None
    broadcast: bool = True
    extend_visibility: bool = True
    max_message_size: int | None = None
    shared_rate_limits: bool = False
    persistent: bool = True
    idle_wait: float = 0.0
    """Seconds an idle worker should wait in one receive at least: SQS counts long polls in
    whole seconds, and a shorter wait becomes short polls (each one a billed request)."""


class Delivery(ABC):
    """A received message that settles itself: exactly one of ack or reject, at most once."""

    def __init__(self, message: Message, queue: str, *, redelivered: bool = False) -> None:
        self.message = message
        self.queue = queue
        self.redelivered = redelivered
        self.settled = False

    def ack(self) -> None:
        if not self.settled:
            self.settled = True
            self._ack()

    def reject(self, requeue: bool = False) -> None:
        """Drop the message (``requeue=False``) or put it back for another consumer."""
        if not self.settled:
            self.settled = True
            self._reject(requeue)

    @abstractmethod
    def _ack(self) -> None: ...

    @abstractmethod
    def _reject(self, requeue: bool) -> None: ...

    def extend(self, seconds: float) -> None:
        """Keep the message invisible to others for ``seconds`` more (no-op where unneeded)."""

    @property
    def delivery_info(self) -> dict[str, Any]:
        return {
            "exchange": "",
            "routing_key": self.queue,
            "priority": self.message.priority,
            "redelivered": self.redelivered,
        }


@dataclass
class DeadLetter:
    """A message parked in a queue's dead-letter store, with why it got there."""

    id: str
    queue: str
    reason: str
    message: Message
    failed_at: float


class Subscription(ABC):
    """A fan-out listener: messages broadcast on its channels after it subscribed."""

    @abstractmethod
    def get(self, timeout: float) -> tuple[str, bytes] | None:
        """Next ``(channel, payload)``, or None when ``timeout`` seconds pass without one."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Broker(ABC):
    """Moves messages between named queues. Knows nothing of tasks."""

    scheme: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, url: str, *, transport_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.transport_options = dict(transport_options or {})

    @abstractmethod
    def publish(
        self, queue: str, message: Message, *, delay: float = 0.0, priority: int | None = None
    ) -> None:
        """Store ``message`` on ``queue``; returns only once the store holds it."""

    def publish_many(self, items: Iterable[tuple[str, Message, float, int | None]]) -> None:
        """Publish ``(queue, message, delay, priority)`` items, in as few round trips as the
        store allows. This default is the slow path; stores override it."""
        for queue, message, delay, priority in items:
            self.publish(queue, message, delay=delay, priority=priority)

    @abstractmethod
    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` ready deliveries from ``queues``, waiting at most ``timeout``
        seconds for the first. Higher priority first; queues served fairly."""

    def consume(
        self, queues: Sequence[str], prefetch: int, *, timeout: float = 1.0
    ) -> Iterator[Delivery]:
        """Deliveries forever, fetched in batches of ``prefetch``; stop by closing the iterator."""
        while True:
            yield from self.receive(queues, prefetch, timeout)

    def set_prefetch(self, count: int) -> None:
        """Let this thread's consumer hold up to ``count`` unsettled messages, asked for or not.

        A store that pushes (RabbitMQ) then keeps that many coming ahead of the asks, so a
        busy consumer finds its next batch waiting instead of asking and waiting a round trip;
        what it holds is invisible to other consumers until settled or given back, as with
        Celery's ``worker_prefetch_multiplier``. 0 withdraws it: what was pushed and not
        handed out goes back to the queue. Stores that are asked (pull) ignore it."""

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack a batch; stores that can pipeline override this."""
        for delivery in deliveries:
            delivery.ack()

    def send_acks(self, deliveries: Sequence[Delivery]) -> None:
        """Ack a batch without waiting for the store to confirm it: the acks are on their way,
        in order, when this returns (the worker's hot path). Stores that cannot defer the
        confirmation ack as :meth:`ack_many` does.

        The worker calls it before every hand-off of received messages to its pool and after
        every receive that returned messages (once it has handed off what it could), with an
        empty batch when it acks none: a store that left part of a receive undone (the Redis
        store's entry for a message a blocking wait took) finishes it here, and may skip it
        for a message this very batch acks."""
        self.ack_many(deliveries)

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Park the message in the queue's dead-letter store, settling the delivery if it is
        not settled yet. An already acked delivery (early ack) is parked too: its message is
        still in hand."""

    @abstractmethod
    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]: ...

    @abstractmethod
    def replay_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Republish parked messages (all when ``ids`` is None) to ``queue``; returns how many."""

    @abstractmethod
    def purge_dead_letters(self, queue: str) -> int: ...

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete the ready messages of ``queue``; returns how many."""

    @abstractmethod
    def size(self, queue: str) -> int:
        """Messages waiting on ``queue`` (ready and delayed; not those being worked on)."""

    def broadcast(self, channel: str, payload: bytes) -> None:
        raise NotImplementedError(f"{self.scheme}:// brokers cannot broadcast")

    def subscribe(self, channels: Sequence[str]) -> Subscription:
        raise NotImplementedError(f"{self.scheme}:// brokers cannot broadcast")

    def acquire_rate_token(self, key: str, rate: float, capacity: float) -> float:
        """Take one token from the shared bucket ``key``; returns seconds to wait (0: go).

        Only stores with ``capabilities.shared_rate_limits`` implement this."""
        raise NotImplementedError(f"{self.scheme}:// brokers hold no shared rate limits")

    def ensure_connection(self) -> None:
        """Connect now, so a bad URL or a store that is down fails at start, not mid-task."""

    def close(self) -> None:
        """Release connections; the broker may not be used afterwards."""


class ResultBackend(ABC):
    """Keeps task outcomes as Celery's result meta (``status``, ``result``, ``traceback``,
    ``children``, ``date_done``, ..., ``task_id``), already encoded by the caller.

    Stores keep bytes under keys; ``wait`` is polling with backoff over ``get`` unless a store
    can push (Redis pub/sub)."""

    scheme: ClassVar[str]
    supports_native_chords: ClassVar[bool] = True

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})

    @abstractmethod
    def set(self, task_id: str, payload: bytes, *, expires: float | None) -> None:
        """Store the encoded meta of ``task_id``, replacing what was there."""

    @abstractmethod
    def get(self, task_id: str) -> bytes | None: ...

    @abstractmethod
    def delete(self, task_id: str) -> None: ...

    def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        return [self.get(task_id) for task_id in task_ids]

    def wait(
        self,
        task_id: str,
        timeout: float | None,
        is_ready: Callable[[bytes], bool],
        interval: float = 0.01,
    ) -> bytes | None:
        """The stored meta once ``is_ready(meta)``; None on timeout. Polls with backoff; stores
        that can push (Redis pub/sub) override this."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = interval
        while True:
            payload = self.get(task_id)
            if payload is not None and is_ready(payload):
                return payload
            if deadline is not None and time.monotonic() >= deadline:
                return None
            remaining = 0.5 if deadline is None else max(0.0, deadline - time.monotonic())
            time.sleep(min(delay, remaining, 0.5))
            delay = min(delay * 1.5, 0.5)

    @abstractmethod
    def set_group(self, group_id: str, payload: bytes, *, expires: float | None) -> None: ...

    @abstractmethod
    def get_group(self, group_id: str) -> bytes | None: ...

    @abstractmethod
    def delete_group(self, group_id: str) -> None: ...

    @abstractmethod
    def chord_start(self, group_id: str, size: int, *, expires: float | None) -> None:
        """Record that a chord of ``size`` header parts begins (resets any earlier count)."""

    @abstractmethod
    def chord_part_done(
        self, group_id: str, index: int, part: bytes, *, expires: float | None
    ) -> list[bytes] | None:
        """Record header part ``index`` (its encoded ``[1, task_id, state, result]``) at most
        once, atomically. Returns every part in index order to exactly one caller: the one
        that completed the chord. Others get None."""

    def store_chord_member(
        self,
        task_id: str,
        payload: bytes,
        part: bytes,
        *,
        group_id: str,
        index: int,
        expires: float | None,
    ) -> list[bytes] | None:
        """:meth:`set` a chord header member's result, then :meth:`chord_part_done` its part;
        stores that can do both in one round trip override it."""
        self.set(task_id, payload, expires=expires)
        return self.chord_part_done(group_id, index, part, expires=expires)

    def chord_adjust(self, group_id: str, delta: int) -> None:
        """Grow the expected size of a running chord (``add_to_chord``)."""
        raise NotImplementedError(f"{self.scheme}:// backends cannot grow a chord")

    def close(self) -> None:
        """Release connections."""


BROKER_SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("taskframe.brokers.memory", "MemoryBroker", None),
    "sqlite": ("taskframe.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("taskframe.brokers.redis", "RedisBroker", None),
    "rediss": ("taskframe.brokers.redis", "RedisBroker", None),
    "redis+socket": ("taskframe.brokers.redis", "RedisBroker", None),
    "sentinel": ("taskframe.brokers.redis", "RedisBroker", None),
    "amqp": ("taskframe.brokers.rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "amqps": ("taskframe.brokers.rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "pyamqp": ("taskframe.brokers.rabbitmq", "RabbitMQBroker", "rabbitmq"),
    "sqs": ("taskframe.brokers.sqs", "SQSBroker", "sqs"),
}
"""URL scheme -> (module, class, pip extra that brings its client library)."""

BACKEND_SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("taskframe.brokers.memory", "MemoryBackend", None),
    "sqlite": ("taskframe.brokers.sqlite_backend", "SQLiteBackend", None),
    "redis": ("taskframe.brokers.redis", "RedisBackend", None),
    "rediss": ("taskframe.brokers.redis", "RedisBackend", None),
    "redis+socket": ("taskframe.brokers.redis", "RedisBackend", None),
    "sentinel": ("taskframe.brokers.redis", "RedisBackend", None),
}


def _scheme_of(url: str, what: str) -> str:
    if "://" not in url:
        raise ImproperlyConfigured(
            f"{what} URL {url!r} has no scheme; expected something like 'sqlite:///taskframe.sqlite3'"
        )
    return urlsplit(url).scheme.lower()


def _load(url: str, registry: dict[str, tuple[str, str, str | None]], what: str) -> type[Any]:
    scheme = _scheme_of(url, what)
    try:
        module_name, class_name, extra = registry[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in registry)
        raise ImproperlyConfigured(
            f"unknown {what} URL scheme {scheme!r} in {url!r}; known schemes: {known}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("taskframe"):
            raise ImproperlyConfigured(
                f"{what} URL scheme {scheme}:// is not available in this version of taskframe"
            ) from exc
        hint = f"pip install 'taskframe[{extra}]'" if extra else "reinstall taskframe"
        raise ImproperlyConfigured(
            f"{what} URL {scheme}:// needs the {exc.name!r} package: {hint}"
        ) from exc
    cls: type[Any] = getattr(module, class_name)
    return cls


def broker_from_url(url: str, *, transport_options: dict[str, Any] | None = None) -> Broker:
    """The broker for ``url``; an unknown scheme names the known ones, a missing client library
    names the extra to install."""
    cls = _load(url, BROKER_SCHEMES, "broker")
    broker: Broker = cls(url, transport_options=transport_options)
    return broker


def backend_from_url(url: str, *, options: dict[str, Any] | None = None) -> ResultBackend:
    cls = _load(url, BACKEND_SCHEMES, "result backend")
    backend: ResultBackend = cls(url, options=options)
    return backend
