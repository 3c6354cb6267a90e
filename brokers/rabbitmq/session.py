"""One thread's RabbitMQ connection: a main channel that publishes (with batched publisher
confirms) and consumes, and a side channel for operations the server may answer with a channel
error (a passive declare of a missing queue closes the channel it ran on).

pika's ``BlockingConnection`` is not thread-safe, so :class:`RabbitMQBroker` keeps one session
per thread and per process (a forked child opens its own instead of sharing the parent's
socket). Deliveries are buffered per queue by the consumer callbacks and handed out by
:meth:`Session.take`, round-robin over the queues.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from taskframe.brokers.rabbitmq.connection import FrameWriter
from taskframe.exceptions import BrokerError

__all__ = ["Received", "Session"]

MAX_PREFETCH = 65535
"""basic.qos prefetch_count is an AMQP short."""

Received = tuple[str, Any, pika.BasicProperties, bytes]
"""``(queue, Basic.Deliver method, properties, body)``."""


class Session:
    """A connection, its two channels, the consumers on the main channel and their buffers."""

    def __init__(self, parameters: pika.ConnectionParameters, *, confirm: bool, floor: int) -> None:
        self.pid = os.getpid()
        self.connection = pika.BlockingConnection(parameters)
        self.channel: BlockingChannel = self.connection.channel()
        self.writer = FrameWriter(self.connection)
        self.confirm = confirm
        self._side: BlockingChannel | None = None
        self._unconfirmed: set[int] = set()
        self._next_tag = 1
        self._oldest = 1
        self._nacked = 0
        if confirm:
            # BlockingChannel.confirm_delivery waits for every single publish; the underlying
            # channel confirms asynchronously, so a batch costs one wait (pika has no public
            # batch form).
            self.channel._impl.confirm_delivery(ack_nack_callback=self._on_confirm)
        self.consumers: dict[str, str] = {}
        self._queue_of_tag: dict[str, str] = {}
        self.buffers: dict[str, deque[Received]] = {}
        self.unacked: list[int] = []
        self.handed_out = 0
        self.wanted = 0
        self.floor = floor
        self.prefetch = 0
        self._qos_unanswered = 0
        self._awaiting_qos = False
        # Answers to the basic.qos sent without waiting (see _fit), counted as they arrive.
        self.connection._impl.callbacks.add(
            self.channel.channel_number, pika.spec.Basic.QosOk, self._on_qos_ok, one_shot=False
        )
        self._rotation = 0

    @property
    def usable(self) -> bool:
        return self.pid == os.getpid() and self.connection.is_open and self.channel.is_open

    @property
    def side(self) -> BlockingChannel:
        """The side channel, reopened after the server closed it."""
        if self._side is None or not self._side.is_open:
            self._side = self.connection.channel()
        return self._side

    def close(self) -> None:
        if self.pid == os.getpid() and self.connection.is_open:
            self.connection.close()

    # publishing

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: Any) -> None:
        if self.confirm:
            # Recorded first: basic_publish may read the confirm before it returns.
            self._unconfirmed.add(self._next_tag)
            self._next_tag += 1
        self.channel.basic_publish(exchange, routing_key, body, properties)

    def wait_for_confirms(self, timeout: float) -> None:
        """Return once RabbitMQ confirmed every publish so far (it holds the messages), or
        without confirms once every frame is written to the socket."""
        if self.writer.pending and not self._unconfirmed:
            self.connection.process_data_events(time_limit=0)
        deadline = time.monotonic() + timeout
        while self._unconfirmed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                count, self._unconfirmed = len(self._unconfirmed), set()
                raise BrokerError(
                    f"RabbitMQ did not confirm {count} published message(s) within {timeout}s"
                )
            self.connection.process_data_events(time_limit=remaining)
        if self._nacked:
            count, self._nacked = self._nacked, 0
            raise BrokerError(f"RabbitMQ refused {count} published message(s) (basic.nack)")

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = method.delivery_tag
        if method.multiple:
            done = [t for t in range(self._oldest, tag + 1) if t in self._unconfirmed]
            self._oldest = tag + 1
        else:
            done = [tag] if tag in self._unconfirmed else []
        self._unconfirmed.difference_update(done)
        if isinstance(method, pika.spec.Basic.Nack):
            self._nacked += len(done)
        if not self._unconfirmed:
            # Ends the process_data_events call in wait_for_confirms at once.
            self.connection.call_later(0, _nothing)

    # consuming

    def consume(self, queues: Sequence[str], wanted: int) -> None:
        """Consume exactly ``queues``, asking for ``wanted`` messages beyond those handed out
        (the ask replaces the previous one)."""
        for queue in [q for q in self.consumers if q not in queues]:
            self._cancel(queue)
        self.wanted = wanted
        self._fit()
        for queue in queues:
            if queue not in self.consumers:
                self.buffers[queue] = deque()
                tag = self.channel.basic_consume(queue, self._on_message)
                self.consumers[queue] = tag
                self._queue_of_tag[tag] = queue

    def _fit(self, settling: int = 0) -> None:
        """Let RabbitMQ push what was asked for and not handed out yet, beyond the messages
        handed out and not settled (less ``settling``, about to be), and never fewer than
        the ``floor``; so messages nobody asked for stay on the queue, visible to ``size``
        and to other consumers. An ask stands until the next one: messages that arrive after
        a ``receive`` returned wait in the buffer for the next. The limit is at least one, as
        AMQP reads a prefetch of 0 as "no limit"; a consumer that holds and wants nothing
        stops instead (:meth:`_stop_when_sated`).

        The limit is channel-wide (global basic.qos: one limit over every queue consumed; a
        new value applies to running consumers at once, a per-consumer one would not). It is
        sent without waiting for RabbitMQ's answer: a channel's methods are applied in the
        order they were sent, so an ack written after a lower limit cannot let in a message
        under the old one. Waiting for each answer would cost a round trip per receive and
        per batch of acks; the answers are counted off as they arrive."""
        wanted = max(self.floor, self.handed_out - settling + self.wanted)
        prefetch = min(max(wanted, 1), MAX_PREFETCH)
        if prefetch != self.prefetch:
            self._send_qos(prefetch)

    def _send_qos(self, prefetch: int) -> None:
        if not self.channel.is_open:  # pika checks before every method it sends itself
            raise pika.exceptions.ChannelWrongStateError("the consuming channel is closed")
        self.channel._impl._send_method(pika.spec.Basic.Qos(0, prefetch, True))
        self._qos_unanswered += 1
        self.prefetch = prefetch

    def _on_qos_ok(self, _frame: Any) -> None:
        self._qos_unanswered = max(0, self._qos_unanswered - 1)
        if self._awaiting_qos and not self._qos_unanswered:
            self.connection.call_later(0, _nothing)

    def set_floor(self, floor: int, *, withdraw: bool = False) -> None:
        """A new lower bound for the prefetch, sent at once to running consumers; with
        ``withdraw`` the standing ask goes too, and the consumers stop, giving back what they
        buffered (deliveries handed out can still be settled)."""
        self.floor = floor
        if withdraw:
            self.stop_consuming()
        elif self.consumers:
            self._fit()

    def stop_consuming(self) -> None:
        """Cancel every consumer, putting back what they buffered; ``consume`` restarts them."""
        for queue in list(self.consumers):
            self._cancel(queue)
        self.wanted = 0

    def _cancel(self, queue: str) -> None:
        tag = self.consumers.pop(queue)
        self._queue_of_tag.pop(tag, None)
        self.channel.basic_cancel(tag)
        for _queue, method, _props, _body in self.buffers.pop(queue, deque()):
            self.channel.basic_nack(method.delivery_tag, requeue=True)
            self._forget([method.delivery_tag], handed=False)

    def _on_message(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        queue = self._queue_of_tag.get(method.consumer_tag, method.routing_key)
        bisect.insort(self.unacked, method.delivery_tag)
        self.buffers.setdefault(queue, deque()).append((queue, method, properties, body))

    def take(self, queues: Sequence[str], limit: int) -> list[Received]:
        """Up to ``limit`` buffered deliveries, one queue after another in turn."""
        taken: list[Received] = []
        start = self._rotation % len(queues)
        self._rotation += 1
        order = [*queues[start:], *queues[:start]]
        while len(taken) < limit:
            before = len(taken)
            for queue in order:
                buffer = self.buffers.get(queue)
                if buffer and len(taken) < limit:
                    taken.append(buffer.popleft())
            if len(taken) == before:
                break
        self.handed_out += len(taken)
        self.wanted = max(0, self.wanted - len(taken))
        return taken

    def wait(self, timeout: float) -> None:
        self.connection.process_data_events(time_limit=max(timeout, 0.0))

    def sync(self, timeout: float) -> None:
        """Take in every delivery RabbitMQ sent before now: the answer to a basic.qos on the
        consuming channel comes back behind them."""
        if not self.consumers:
            return
        self._send_qos(self.prefetch)
        deadline = time.monotonic() + timeout
        self._awaiting_qos = True
        try:
            while self._qos_unanswered:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerError(f"RabbitMQ did not answer basic.qos within {timeout}s")
                self.connection.process_data_events(time_limit=remaining)
        finally:
            self._awaiting_qos = False

    def buffered(self, queues: Sequence[str]) -> bool:
        return any(self.buffers.get(queue) for queue in queues)

    # settling

    def settle(self, tag: int, *, ack: bool = False, requeue: bool = False) -> None:
        """Ack or reject one delivery, the prefetch lowered first, in one write."""
        with self.writer.holding():
            self._fit(settling=1)
            if ack:
                self.channel.basic_ack(tag)
            else:
                self.channel.basic_nack(tag, requeue=requeue)
        self._forget([tag])
        self._stop_when_sated()

    def ack_batch(self, tags: Sequence[int]) -> None:
        """Ack ``tags``, the prefetch lowered first, in one write: the longest run that covers
        every unacked tag from the oldest goes in one ``multiple=True`` ack, the rest one by
        one."""
        wanted = set(tags)
        covered = 0
        for tag in self.unacked:
            if tag not in wanted:
                break
            covered = tag
        with self.writer.holding():
            self._fit(settling=len(wanted))
            if covered:
                self.channel.basic_ack(covered, multiple=True)
            for tag in sorted(wanted):
                if tag > covered:
                    self.channel.basic_ack(tag)
        self._forget(sorted(wanted))
        self._stop_when_sated()

    def _stop_when_sated(self) -> None:
        """A consumer that holds nothing and wants nothing stops consuming until its next ask:
        a prefetch cannot be 0 (AMQP reads it as "no limit"), and with 1 RabbitMQ would hand
        it a message nobody asked for, which could wait there for as long as the consumer
        does not ask again. Costs a round trip now and one at the next ask."""
        if self.consumers and max(self.floor, self.handed_out + self.wanted) == 0:
            self.stop_consuming()

    def _forget(self, tags: Sequence[int], *, handed: bool = True) -> None:
        for tag in tags:
            index = bisect.bisect_left(self.unacked, tag)
            if index < len(self.unacked) and self.unacked[index] == tag:
                del self.unacked[index]
                if handed:
                    self.handed_out = max(0, self.handed_out - 1)


def _nothing() -> None:
    """A no-op event: scheduling it makes ``process_data_events`` return."""


class _QuietProbes(logging.Filter):
    """Drops pika's warning for a channel closed with 404: the broker probes for queues that
    may not exist (``size``, ``purge``, dead letters) and handles that answer itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # Compare only an int: pika's method objects compare by __dict__ and raise on an int.
        first = args[0] if isinstance(args, tuple) and args else None
        return not (type(first) is int and first == 404 and "Channel.Close" in str(record.msg))


logging.getLogger("pika.channel").addFilter(_QuietProbes())


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 404
