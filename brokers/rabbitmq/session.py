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
from pika.adapters.blocking_connection import BlockingChannel

from taskframe.exceptions import BrokerError

__all__ = ["ASK_TTL", "Received", "Session"]

ASK_TTL = 1.0
"""Seconds an ask for messages stands: the prefetch is not lowered, and a consumer's buffer is
not given back, before that long without a larger (or any) ask."""
MAX_PREFETCH = 65535
"""basic.qos prefetch_count is an AMQP short."""

Received = tuple[str, Any, pika.BasicProperties, bytes]
"""``(queue, Basic.Deliver method, properties, body)``."""


class Session:
    """A connection, its two channels, the consumers on the main channel and their buffers."""

    def __init__(self, parameters: pika.ConnectionParameters, *, confirm: bool) -> None:
        self.pid = os.getpid()
        self.connection = pika.BlockingConnection(parameters)
        self.channel: BlockingChannel = self.connection.channel()
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
        self.prefetch = 0
        self.asked = 0.0
        self.fitted = 0.0
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
        """Return once RabbitMQ confirmed every publish so far (it holds the messages)."""
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
            self.connection.add_callback_threadsafe(_nothing)

    # consuming

    def consume(self, queues: Sequence[str], wanted: int, floor: int) -> None:
        """Consume exactly ``queues``, with room for ``wanted`` more messages than handed out."""
        for queue in [q for q in self.consumers if q not in queues]:
            self._cancel(queue)
        self.asked = time.monotonic()
        self.limit(max(floor, self.handed_out + wanted))
        for queue in queues:
            if queue not in self.consumers:
                self.buffers[queue] = deque()
                tag = self.channel.basic_consume(queue, self._on_message)
                self.consumers[queue] = tag
                self._queue_of_tag[tag] = queue

    def limit(self, wanted: int) -> None:
        """Let RabbitMQ push up to ``wanted`` unsettled messages (handed out or buffered).

        Each change is a basic.qos round trip, so the prefetch is raised at once but lowered
        only after :data:`ASK_TTL` seconds in which no ask needed more than half of it: a
        consumer asking for a few more or fewer each time keeps one value, and the credit an
        ack frees lets RabbitMQ push the next message before the next ask, which then takes
        it from the buffer instead of waiting a round trip. The limit is channel-wide (global
        basic.qos: one limit over every queue consumed; a new value applies to running
        consumers at once, a per-consumer one would not)."""
        wanted = min(max(wanted, 1), MAX_PREFETCH)
        now = time.monotonic()
        if 2 * wanted > self.prefetch:
            self.fitted = now
        if wanted > self.prefetch or now - self.fitted > ASK_TTL:
            self._set_prefetch(wanted)

    def _set_prefetch(self, prefetch: int) -> None:
        self.channel.basic_qos(prefetch_count=prefetch, global_qos=True)
        self.prefetch = prefetch
        self.fitted = time.monotonic()

    def relax(self, floor: int) -> None:
        """Give back what a consumer that stopped asking holds but was not handed: after
        :data:`ASK_TTL` seconds without a ``receive`` the prefetch drops to the messages handed
        out (and ``floor``), and with none of those the consumers are cancelled, which puts
        the buffered messages back on their queues for other consumers; the next ``receive``
        starts them again. Called when settling, so it costs nothing while asks keep coming."""
        if not self.consumers or time.monotonic() - self.asked <= ASK_TTL:
            return
        held = max(floor, self.handed_out)
        if held == 0:
            for queue in list(self.consumers):
                self._cancel(queue)
        elif held < self.prefetch:
            self._set_prefetch(held)

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
        return taken

    def wait(self, timeout: float) -> None:
        self.connection.process_data_events(time_limit=max(timeout, 0.0))

    def sync(self) -> None:
        """Take in every delivery RabbitMQ sent before now: a round trip on the consuming
        channel comes back behind them."""
        if self.consumers:
            self.channel.basic_qos(prefetch_count=self.prefetch, global_qos=True)
            self.wait(0)

    def buffered(self, queues: Sequence[str]) -> bool:
        return any(self.buffers.get(queue) for queue in queues)

    # settling

    def settle(self, tag: int, *, ack: bool = False, requeue: bool = False) -> None:
        if ack:
            self.channel.basic_ack(tag)
        else:
            self.channel.basic_nack(tag, requeue=requeue)
        self._forget([tag])

    def ack_batch(self, tags: Sequence[int]) -> None:
        """Ack ``tags``: the longest run that covers every unacked tag from the oldest goes in
        one ``multiple=True`` ack, the rest one by one."""
        wanted = set(tags)
        covered = 0
        for tag in self.unacked:
            if tag not in wanted:
                break
            covered = tag
        if covered:
            self.channel.basic_ack(covered, multiple=True)
        for tag in sorted(wanted):
            if tag > covered:
                self.channel.basic_ack(tag)
        self._forget(sorted(wanted))

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
        return not (
            isinstance(args, tuple) and args[:1] == (404,) and "Channel.Close" in record.msg
        )


logging.getLogger("pika.channel").addFilter(_QuietProbes())


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 404
