"""RabbitMQBroker: Celery's queues and exchanges, batched confirms, a TTL-chain delay and a
DLQ. See the package docstring for URLs, options and every name it declares."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any, ClassVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from taskframe.brokers.base import Broker, Capabilities, DeadLetter, Delivery, Message, Subscription
from taskframe.brokers.rabbitmq import topology as names
from taskframe.brokers.rabbitmq.connection import (
    connection_parameters,
    install_float_codec,
    parse_url,
    translate_errors,
)
from taskframe.brokers.rabbitmq.session import Received, Session, is_not_found

__all__ = ["RabbitMQBroker", "RabbitMQDelivery"]

log = logging.getLogger(__name__)

install_float_codec()

BROADCAST_EXCHANGE = "taskframe.broadcast"
PRECONDITION_FAILED = 406
_OPTION_TYPES: dict[str, type] = {
    "max_priority": int,
    "prefetch_count": int,
    "confirm_publish": bool,
    "per_message_ttl": bool,
    "confirm_timeout": float,
    "heartbeat": int,
    "connect_timeout": float,
}
_TRUE = ("1", "true", "yes", "on")


class RabbitMQDelivery(Delivery):
    """A message delivered on one thread's channel; settle it on that thread."""

    def __init__(
        self, broker: RabbitMQBroker, session: Session, received: Received, message: Message
    ) -> None:
        queue, method, _properties, _body = received
        super().__init__(message, queue, redelivered=bool(method.redelivered))
        self.broker = broker
        self.session = session
        self.tag: int = method.delivery_tag

    def _ack(self) -> None:
        self.broker._settle(self, ack=True, requeue=False)

    def _reject(self, requeue: bool) -> None:
        self.broker._settle(self, ack=False, requeue=requeue)


class RabbitMQSubscription(Subscription):
    """An exclusive, auto-deleted queue bound to ``taskframe.broadcast`` on its own
    connection, so any thread may wait on it."""

    def __init__(self, broker: RabbitMQBroker, channels: Sequence[str]) -> None:
        self.broker = broker
        self.received: list[tuple[str, bytes]] = []
        with translate_errors(broker.target):
            self.connection = pika.BlockingConnection(broker.parameters)
            channel = self.connection.channel()
            channel.exchange_declare(BROADCAST_EXCHANGE, "topic", durable=False)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            for name in channels:
                channel.queue_bind(queue, BROADCAST_EXCHANGE, routing_key=name)
            channel.basic_consume(queue, self._on_message, auto_ack=True)

    def _on_message(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        self.received.append((str(method.routing_key), bytes(body)))

    def get(self, timeout: float) -> tuple[str, bytes] | None:
        deadline = time.monotonic() + timeout
        with translate_errors(self.broker.target):
            self.connection.process_data_events(time_limit=0)
            while not self.received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.connection.process_data_events(time_limit=remaining)
        return self.received.pop(0)

    def close(self) -> None:
        if self.connection.is_open:
            with suppress(pika.exceptions.AMQPError, OSError):
                self.connection.close()


class RabbitMQBroker(Broker):
    """RabbitMQ broker (pika), sharing queues with Celery workers and producers."""

    scheme = "amqp"
    capabilities: ClassVar[Capabilities] = Capabilities(
        priorities=False,
        lower_priority_first=False,
        max_delay=None,
        broadcast=True,
        extend_visibility=False,
        shared_rate_limits=False,
    )

    def __init__(self, url: str, *, transport_options: dict[str, Any] | None = None) -> None:
        super().__init__(url, transport_options=transport_options)
        self.target = parse_url(url)
        options = self.transport_options
        for key, value in self.target.query.items():
            options[key] = _option_value(key, value)
        self.parameters = connection_parameters(self.target, options)
        self.confirm_publish = bool(options.get("confirm_publish", True))
        self.confirm_timeout = float(options.get("confirm_timeout", 30.0))
        self.prefetch_floor = int(options.get("prefetch_count", 0))
        self.per_message_ttl = bool(options.get("per_message_ttl", False))
        max_priority = options.get("max_priority")
        self.max_priority = int(max_priority) if max_priority is not None else None
        self.queue_arguments: dict[str, Any] = dict(options.get("queue_arguments") or {})
        if self.max_priority is not None:
            self.queue_arguments["x-max-priority"] = self.max_priority
        priorities = "x-max-priority" in self.queue_arguments
        # Per instance: whether priorities work depends on the queue arguments configured.
        self.capabilities = replace(self.capabilities, priorities=priorities)  # type: ignore[misc]
        self._local = threading.local()
        self._sessions: list[Session] = []
        self._lock = threading.Lock()
        self._declared: set[str] = set()
        self._delay_declared: set[str] = set()
        self._delay_exchanges = False

    # sessions

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """This thread's session (a new one after a fork or a lost connection), with pika's
        errors translated; a session whose connection broke is dropped for the next call."""
        session: Session | None = getattr(self._local, "session", None)
        try:
            with translate_errors(self.target):
                if session is None or not session.usable:
                    if session is not None:
                        self._discard(session)
                    floor = getattr(self._local, "floor", self.prefetch_floor)
                    session = Session(self.parameters, confirm=self.confirm_publish, floor=floor)
                    self._local.session = session
                    with self._lock:
                        self._sessions.append(session)
                yield session
        finally:
            if session is not None and not session.usable:
                self._discard(session)

    def _discard(self, session: Session) -> None:
        if getattr(self._local, "session", None) is session:
            self._local.session = None
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)
        with suppress(pika.exceptions.AMQPError, OSError):
            session.close()

    def ensure_connection(self) -> None:
        with self._session():
            pass

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            with suppress(pika.exceptions.AMQPError, OSError):
                session.close()
        self._local = threading.local()

    # declarations

    def _declare(self, session: Session, queue: str) -> None:
        """Make sure ``queue`` exists, declared as Celery declares it: durable, the configured
        ``queue_arguments``, and a direct exchange of the same name bound with routing key =
        queue. A queue that exists with other arguments (RabbitMQ answers 406) is used as it
        is: nothing is ever re-declared differently."""
        if queue in self._declared:
            return
        channel = session.side
        try:
            channel.queue_declare(queue, durable=True, arguments=self.queue_arguments or None)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            log.debug("queue %r exists with other arguments; using it as it is", queue)
        else:
            channel.exchange_declare(queue, "direct", durable=True)
            channel.queue_bind(queue, queue, routing_key=queue)
        self._declared.add(queue)

    def _count(self, session: Session, queue: str) -> int | None:
        """Ready messages on ``queue``; None when it does not exist."""
        try:
            return int(session.side.queue_declare(queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if is_not_found(exc):
                return None
            raise

    def _declare_delay(self, session: Session, queue: str) -> None:
        """The delay chain for ``queue``: shared topic exchanges (once), and one TTL queue per
        level for this target, all created together so one probe tells they exist."""
        if queue in self._delay_declared:
            return
        channel = session.side
        if not self._delay_exchanges:
            channel.exchange_declare(names.DELAY_DELIVER_EXCHANGE, "topic", durable=True)
            for level in range(names.DELAY_LEVELS):
                channel.exchange_declare(names.delay_exchange(level), "topic", durable=True)
                channel.exchange_bind(
                    destination=names.delay_exchange(level - 1),
                    source=names.delay_exchange(level),
                    routing_key=names.level_pattern(level, "0", "#"),
                )
            self._delay_exchanges = True
        for level in range(names.DELAY_LEVELS):
            arguments = {
                "x-message-ttl": 1 << level,
                "x-dead-letter-exchange": names.delay_exchange(level - 1),
            }
            channel.queue_declare(
                names.delay_queue(queue, level), durable=True, arguments=arguments
            )
            channel.queue_bind(
                names.delay_queue(queue, level),
                names.delay_exchange(level),
                routing_key=names.level_pattern(level, "1", queue),
            )
        channel.queue_bind(queue, names.DELAY_DELIVER_EXCHANGE, names.deliver_pattern(queue))
        self._delay_declared.add(queue)

    def _delay_counts(self, session: Session, queue: str) -> list[int] | None:
        """Messages waiting at each delay level of ``queue``; None without a delay chain."""
        if self._count(session, names.delay_queue(queue, 0)) is None:
            return None
        counts = [
            self._count(session, names.delay_queue(queue, level)) or 0
            for level in range(names.DELAY_LEVELS)
        ]
        return counts

    # publishing

    def publish(
        self, queue: str, message: Message, *, delay: float = 0.0, priority: int | None = None
    ) -> None:
        self.publish_many([(queue, message, delay, priority)])

    def publish_many(self, items: Iterable[tuple[str, Message, float, int | None]]) -> None:
        """Every item on this thread's channel, written together once what they need is
        declared (a declaration waits for its answer, so none may run while frames are held
        back), then one wait for all the confirms."""
        batch = list(items)
        with self._session() as session:
            for queue, _message, delay, _priority in batch:
                self._prepare(session, queue, delay)
            with session.writer.holding():
                for queue, message, delay, priority in batch:
                    self._publish_one(session, queue, message, delay, priority)
            session.wait_for_confirms(self.confirm_timeout)

    def _prepare(self, session: Session, queue: str, delay: float) -> None:
        """Declare ``queue``, and its delay chain for a delayed message."""
        self._declare(session, queue)
        if delay > 0:
            self._declare_delay(session, queue)

    def _publish_one(
        self, session: Session, queue: str, message: Message, delay: float, priority: int | None
    ) -> None:
        milliseconds = names.delay_milliseconds(delay) if delay > 0 else 0
        # In a delay queue a per-message TTL would cut the wait short.
        expiration = self.per_message_ttl and milliseconds == 0
        properties = names.properties_for(message, priority, expiration=expiration)
        if milliseconds == 0:
            session.publish("", queue, message.body, properties)
            return
        longest = (1 << names.DELAY_LEVELS) - 1
        if milliseconds > longest:
            properties.headers[names.DEFER_UNTIL] = time.time() + delay
            milliseconds = longest
        top = milliseconds.bit_length() - 1
        routing_key = names.delay_routing_key(queue, milliseconds)
        session.publish(names.delay_exchange(top), routing_key, message.body, properties)

    # consuming

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Consumers start on the first call and stay; this asks for ``max_messages`` (the
        channel's prefetch follows, see :meth:`Session._fit`) and waits for what RabbitMQ
        pushes."""
        if max_messages <= 0 or not queues:
            return []
        deadline = time.monotonic() + timeout
        with self._session() as session:
            for queue in queues:
                self._declare(session, queue)
            session.consume(queues, max_messages)
            session.wait(0)
            while True:
                deliveries = self._deliveries(session, session.take(queues, max_messages))
                if deliveries:
                    return deliveries
                remaining = deadline - time.monotonic()
                if remaining <= 0 and not session.buffered(queues):
                    return []
                session.wait(remaining)

    def set_prefetch(self, count: int) -> None:
        """The channel prefetch never goes below ``count`` (nor the ``prefetch_count`` option)
        on this thread's session; 0 also withdraws the standing ask, giving back what was
        pushed and not handed out."""
        floor = max(self.prefetch_floor, count)
        self._local.floor = floor
        session: Session | None = getattr(self._local, "session", None)
        if session is not None and session.usable:
            with self._session():
                session.set_floor(floor, withdraw=count == 0)

    def _deliveries(self, session: Session, received: list[Received]) -> list[Delivery]:
        """Deliveries for the buffered messages; one whose delay outlived a pass through the
        delay chain (longer than 49.7 days) goes back for the rest of it."""
        deliveries: list[Delivery] = []
        deferred: list[RabbitMQDelivery] = []
        for item in received:
            message = names.message_from_amqp(item[2], item[3])
            delivery = RabbitMQDelivery(self, session, item, message)
            due = message.headers.get(names.DEFER_UNTIL)
            if isinstance(due, (int, float)) and due > time.time():
                deferred.append(delivery)
            else:
                message.headers.pop(names.DEFER_UNTIL, None)
                deliveries.append(delivery)
        for delivery in deferred:
            headers = delivery.message.headers
            remaining = float(headers.pop(names.DEFER_UNTIL)) - time.time()
            self._prepare(session, delivery.queue, remaining)
            self._publish_one(session, delivery.queue, delivery.message, remaining, None)
        if deferred:
            session.wait_for_confirms(self.confirm_timeout)
            session.ack_batch([delivery.tag for delivery in deferred])
        return deliveries

    # settling

    def _settle(self, delivery: RabbitMQDelivery, *, ack: bool, requeue: bool) -> None:
        """On a channel that has since closed there is nothing to settle: RabbitMQ put the
        message back when the channel went."""
        session = delivery.session
        if session is not getattr(self._local, "session", None) or not session.usable:
            log.debug("not settling delivery %s: its channel is gone", delivery.tag)
            return
        with self._session():
            session.settle(delivery.tag, ack=ack, requeue=requeue)

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One ``multiple=True`` ack for the oldest contiguous run, single acks for the rest."""
        current = getattr(self._local, "session", None)
        mine = [
            d
            for d in deliveries
            if isinstance(d, RabbitMQDelivery) and not d.settled and d.session is current
        ]
        for delivery in mine:
            delivery.settled = True
        if mine and current is not None and current.usable:
            with self._session() as session:
                session.ack_batch([delivery.tag for delivery in mine])
        for other in deliveries:
            if other not in mine:
                other.ack()

    # dead letters

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish a copy to ``<queue>.dlq`` with the reason (confirmed), then ack."""
        message = delivery.message
        headers = {
            **message.headers,
            names.DLQ_ID: uuid.uuid4().hex,
            names.DLQ_REASON: reason,
            names.DLQ_FAILED_AT: time.time(),
        }
        parked = replace(message, headers=headers)
        dlq = names.dead_letter_queue(delivery.queue)
        with self._session() as session:
            if dlq not in self._declared:
                session.side.queue_declare(dlq, durable=True)
                self._declared.add(dlq)
            session.publish("", dlq, parked.body, names.properties_for(parked, None))
            session.wait_for_confirms(self.confirm_timeout)
        delivery.ack()

    @contextmanager
    def _peek(self, queue: str) -> Iterator[tuple[BlockingChannel, list[Received]]]:
        """Every parked message of ``queue``, taken unacked on a channel of its own; closing
        that channel puts back (in order) all it did not ack."""
        with self._session() as session:
            channel = session.connection.channel()
            taken: list[Received] = []
            try:
                while True:
                    method, properties, body = channel.basic_get(names.dead_letter_queue(queue))
                    if method is None:
                        break
                    taken.append((queue, method, properties, body))
                yield channel, taken
            except pika.exceptions.ChannelClosedByBroker as exc:
                if not is_not_found(exc):
                    raise
                yield channel, []
            finally:
                if channel.is_open:
                    channel.close()

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        with self._peek(queue) as (_channel, taken):
            return [_dead_letter(item) for item in taken[: limit if limit > 0 else None]]

    def replay_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        wanted = None if ids is None else set(ids)
        with self._peek(queue) as (channel, taken):
            chosen = [
                item
                for item in taken
                if wanted is None or (item[2].headers or {}).get(names.DLQ_ID) in wanted
            ]
            if chosen:
                self.publish_many((queue, _dead_letter(item).message, 0.0, None) for item in chosen)
            for item in chosen:
                channel.basic_ack(item[1].delivery_tag)
        return len(chosen)

    def purge_dead_letters(self, queue: str) -> int:
        return self._purge(names.dead_letter_queue(queue))

    # queue management

    def _purge(self, queue: str) -> int:
        with self._session() as session:
            try:
                return int(session.side.queue_purge(queue).method.message_count)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if is_not_found(exc):
                    return 0
                raise

    def purge(self, queue: str) -> int:
        """The ready messages of ``queue`` and those still waiting in its delay chain."""
        purged = self._purge(queue)
        with self._session() as session:
            if self._delay_counts(session, queue) is None:
                return purged
        return purged + sum(
            self._purge(names.delay_queue(queue, level)) for level in range(names.DELAY_LEVELS)
        )

    def size(self, queue: str) -> int:
        """Ready + delayed, plus those this process received but has not handed out yet
        (on this thread exactly: a message RabbitMQ pushed before it answered the count is
        in the buffer by then)."""
        with self._session() as session:
            ready = self._count(session, queue) or 0
            delayed = sum(self._delay_counts(session, queue) or [])
            session.sync(self.confirm_timeout)
        with self._lock:
            buffered = sum(len(s.buffers.get(queue, ())) for s in self._sessions)
        return ready + delayed + buffered

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` with everything this broker declared for it: its exchange, its
        DLQ and its delay chain (a missing one is skipped). Messages in them are lost."""
        chain = [names.delay_queue(queue, level) for level in range(names.DELAY_LEVELS)]
        with self._session() as session:
            for name in [queue, names.dead_letter_queue(queue), *chain]:
                session.side.queue_delete(name)
            session.side.exchange_delete(queue)
        self._declared.difference_update({queue, names.dead_letter_queue(queue)})
        self._delay_declared.discard(queue)

    # fan-out

    def broadcast(self, channel: str, payload: bytes) -> None:
        """Publish on the ``taskframe.broadcast`` topic exchange with routing key ``channel``;
        with no subscriber RabbitMQ drops it, as fan-out should."""
        with self._session() as session:
            side = session.side
            side.exchange_declare(BROADCAST_EXCHANGE, "topic", durable=False)
            side.basic_publish(BROADCAST_EXCHANGE, channel, payload)

    def subscribe(self, channels: Sequence[str]) -> Subscription:
        return RabbitMQSubscription(self, channels)


def _option_value(key: str, value: str) -> Any:
    """A URL query value, typed like the transport option of the same name."""
    kind = _OPTION_TYPES.get(key)
    if kind is bool:
        return value.lower() in _TRUE
    return kind(value) if kind is not None else value


def _dead_letter(item: Received) -> DeadLetter:
    queue, _method, properties, body = item
    message = names.message_from_amqp(properties, body)
    headers = message.headers
    parked_id = str(headers.pop(names.DLQ_ID, ""))
    reason = str(headers.pop(names.DLQ_REASON, ""))
    failed_at = float(headers.pop(names.DLQ_FAILED_AT, 0.0))
    return DeadLetter(parked_id, queue, reason, message, failed_at)
