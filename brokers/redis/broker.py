"""RedisBroker: kombu's Redis layout, with durable delays, one-round-trip receives and a DLQ.

See the package docstring for URLs, options and keys.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from taskframe.brokers.base import Broker, Capabilities, DeadLetter, Delivery, Message, Subscription
from taskframe.brokers.redis import envelope as kombu
from taskframe.brokers.redis import scripts
from taskframe.brokers.redis.client import HeldConnection, Pipeline, Script, Subscriber
from taskframe.brokers.redis.connection import connect, parse_url, translate_errors
from taskframe.brokers.redis.unacked import UNACKED, UNACKED_INDEX, Unacked
from taskframe.brokers.redis.wire import NoScriptError
from taskframe.protocol import new_id

__all__ = ["RedisBroker", "RedisDelivery"]

log = logging.getLogger(__name__)

DELAYED = "taskframe.delayed"
DELAYED_COUNTS = "taskframe.delayed.count"
UNKNOWN_CONTENT_TYPE = "application/x-unknown"
PROMOTE_LIMIT = 100


def dead_letter_key(queue: str) -> str:
    return f"{queue}.dlq"


class RedisDelivery(Delivery):
    """A popped message; ``tag`` is its kombu delivery tag (None: not a kombu envelope)."""

    def __init__(
        self,
        broker: RedisBroker,
        message: Message,
        queue: str,
        *,
        tag: str | None,
        envelope: dict[str, Any] | None,
        raw: bytes,
        redelivered: bool = False,
    ) -> None:
        super().__init__(message, queue, redelivered=redelivered)
        self.broker = broker
        self.tag = tag
        self.envelope = envelope
        self.raw = raw

    def _ack(self) -> None:
        self.broker._unacked.remove([self.tag] if self.tag else [])

    def _reject(self, requeue: bool) -> None:
        if requeue:
            self.broker._requeue(self)
        else:
            self._ack()

    def extend(self, seconds: float) -> None:
        if not self.settled:
            self.broker._extend(self, seconds)


class RedisSubscription(Subscription):
    """Pattern subscriptions on kombu's fanout channels ``/{db}.<channel>``."""

    def __init__(self, broker: RedisBroker, subscriber: Subscriber) -> None:
        self.broker = broker
        self.subscriber = subscriber

    def get(self, timeout: float) -> tuple[str, bytes] | None:
        deadline = time.monotonic() + timeout
        with translate_errors(self.broker.target):
            while True:
                remaining = max(0.0, deadline - time.monotonic())
                message = self.subscriber.get_message(remaining)
                if message is not None:
                    channel = message[0].decode("utf-8")
                    prefix = self.broker.fanout_prefix
                    if channel.startswith(prefix):
                        channel = channel[len(prefix) :]
                    return channel, message[1]
                if time.monotonic() >= deadline:
                    return None

    def close(self) -> None:
        self.subscriber.close()


class RedisBroker(Broker):
    """Redis broker, wire-compatible with kombu/Celery on the same database."""

    scheme = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(
        priorities=True,
        lower_priority_first=True,
        max_delay=None,
        broadcast=True,
        extend_visibility=True,
        shared_rate_limits=True,
    )

    def __init__(self, url: str, *, transport_options: dict[str, Any] | None = None) -> None:
        super().__init__(url, transport_options=transport_options)
        options = self.transport_options
        self.target = parse_url(url)
        self.visibility_timeout = float(options.get("visibility_timeout", 3600))
        self.restore_interval = float(
            options.get("restore_interval", min(60.0, self.visibility_timeout / 2))
        )
        self.promote_interval = float(options.get("promote_interval", 1.0))
        self.durable_delays = bool(options.get("durable_delays", True))
        prefix = options.get("fanout_prefix", True)
        self.fanout_prefix = (
            prefix if isinstance(prefix, str) else f"/{self.target.db}." if prefix else ""
        )
        self.client = connect(self.target, options)
        self._producer = HeldConnection(self.client.settings)
        self._unacked = Unacked(
            self.client,
            self.target,
            visibility_timeout=self.visibility_timeout,
            restore_batch=int(options.get("restore_batch", 100)),
            mutex_expire=float(options.get("unacked_mutex_expire", 300)),
        )
        self._receive_script = Script(scripts.RECEIVE)
        self._promote_script = Script(scripts.PROMOTE)
        self._move_script = Script(scripts.ACK_ONE_INTO)
        self._replay_script = Script(scripts.REPLAY)
        self._rate_script = Script(scripts.RATE_TOKEN)
        self._declared: set[str] = set()
        self._rotation = 0
        self._next_sweep = 0.0
        self._next_promote = 0.0
        self._unanswered: str | None = None
        """Id of a receive call whose reply never came (see ``scripts.RECEIVE``)."""

    # publishing

    def publish(
        self, queue: str, message: Message, *, delay: float = 0.0, priority: int | None = None
    ) -> None:
        """One LPUSH for a message to send now on a declared queue; anything else (a delay,
        the first message to a queue, a promotion due) goes through :meth:`publish_many`."""
        promotion_due = time.monotonic() >= self._next_promote
        if (delay > 0 and self.durable_delays) or queue not in self._declared or promotion_due:
            self.publish_many([(queue, message, delay, priority)])
            return
        number, envelope = kombu.encode(queue, message, priority)
        with translate_errors(self.target):
            self._producer.execute("LPUSH", kombu.list_key(queue, number), kombu.to_json(envelope))

    def publish_many(self, items: Iterable[tuple[str, Message, float, int | None]]) -> None:
        """All items in one pipelined round trip (plus a due-message promotion now and then).

        Messages for one list go out as one multi-value LPUSH, which pushes them in the
        order given, exactly as one LPUSH each would, for a fraction of the client's work."""
        now = time.time()
        ready: dict[str, list[str]] = {}
        with translate_errors(self.target):
            pipe = self.client.pipeline(transaction=False)
            for queue, message, delay, priority in items:
                self._declare(pipe, queue)
                number, envelope = kombu.encode(queue, message, priority)
                data = kombu.to_json(envelope)
                key = kombu.list_key(queue, number)
                if delay > 0 and self.durable_delays:
                    member = json.dumps([queue, key, data])
                    pipe.add("ZADD", DELAYED, now + delay, member)
                    pipe.add("HINCRBY", DELAYED_COUNTS, queue, 1)
                else:
                    ready.setdefault(key, []).append(data)
            for key, values in ready.items():
                pipe.add("LPUSH", key, *values)
            if time.monotonic() >= self._next_promote:
                self._next_promote = time.monotonic() + self.promote_interval
                pipe.script(self._promote_script, [DELAYED, DELAYED_COUNTS], [now, PROMOTE_LIMIT])
            pipe.execute()

    def _declare(self, pipe: Pipeline, queue: str) -> None:
        """Write the binding Celery writes, so kombu producers and workers see the queue."""
        if queue not in self._declared:
            key, member = kombu.binding(queue)
            pipe.add("SADD", key, member)
            pipe.add("SADD", f"_kombu.binding_permanent.{queue}", member)
            self._declared.add(queue)

    # consuming

    def promote_due(self) -> int:
        """Move every due delayed message to its list now; returns how many moved.

        Every receive and (each ``promote_interval``) publish does this already; call it
        where only Celery workers consume, so no taskframe process receives."""
        moved = 0
        with translate_errors(self.target):
            while True:
                count = int(
                    self._promote_script(
                        self.client, [DELAYED, DELAYED_COUNTS], [time.time(), PROMOTE_LIMIT]
                    )
                )
                moved += count
                if count < PROMOTE_LIMIT:
                    return moved

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """One Lua call pops and records up to ``max_messages``; when nothing is ready, one
        BRPOP waits (no longer than the next delayed message's due time)."""
        if max_messages <= 0 or not queues:
            return []
        self._recover()
        if time.monotonic() >= self._next_sweep:
            self.restore_visible()
        deadline = time.monotonic() + timeout
        order = self._rotate(queues)
        keys = [
            key for step in kombu.PRIORITY_STEPS for key in (kombu.list_key(q, step) for q in order)
        ]
        names = [q for _step in kombu.PRIORITY_STEPS for q in order]
        with translate_errors(self.target):
            while True:
                next_due, deliveries = self._pop(keys, names, max_messages)
                if deliveries:
                    return deliveries
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if next_due is not None:
                    remaining = min(remaining, max(next_due - time.time(), 0.001))
                # whole milliseconds: BRPOP rounds a shorter wait to 0, which blocks forever
                popped = self.client.execute("BRPOP", *keys, max(0.001, round(remaining, 3)))
                if popped is not None:
                    key = popped[0].decode("utf-8")
                    return [self._take(names[keys.index(key)], popped[1])]

    def _rotate(self, queues: Sequence[str]) -> list[str]:
        """Queues in round-robin order, so one busy queue cannot starve the others."""
        start = self._rotation % len(queues)
        self._rotation += 1
        return [*queues[start:], *queues[:start]]

    def _pop(
        self, keys: list[str], names: list[str], wanted: int
    ) -> tuple[float | None, list[Delivery]]:
        """Run the receive script (see ``scripts.RECEIVE``) on the held connection, never
        twice: a retry after a lost reply would run it again under the same call id and bury
        what the first run took; the reconnect gives that back by its receipt instead."""
        call = new_id()
        self._unanswered = call
        ledger = [UNACKED, UNACKED_INDEX, DELAYED, DELAYED_COUNTS, self._unacked.receipt_key()]
        args: list[str | float] = [
            time.time(),
            wanted,
            PROMOTE_LIMIT,
            call,
            max(1, int(self.visibility_timeout)),
        ]
        script = self._receive_script
        command = script.command([*ledger, *keys], [*args, *names])
        try:
            reply = self._producer.execute(*command, once=True)
        except NoScriptError:  # the script did not run: a restarted server
            reply = self._producer.execute("EVAL", script.source, *command[2:], once=True)
        self._unanswered = None
        next_due = float(reply[0]) if reply[0] else None
        deliveries: list[Delivery] = []
        for index in range(1, len(reply), 3):
            tag, number, raw = reply[index].decode("utf-8"), int(reply[index + 1]), reply[index + 2]
            deliveries.append(self._delivery(names[number - 1], tag or None, raw))
        return next_due, deliveries

    def _take(self, queue: str, raw: bytes) -> RedisDelivery:
        """A message BRPOP popped, its ``unacked`` entry held for the acks that follow (see
        :meth:`Unacked.hold`). A process that dies before the entry is written loses the
        message, the same window kombu has between its BRPOP and its entry."""
        delivery = self._delivery(queue, None, raw)
        if delivery.envelope is not None:
            entry = kombu.unacked_entry(delivery.envelope, queue, raw)
            if entry is not None:
                self._unacked.hold(*entry)
                delivery.tag = entry[0]
        return delivery

    def _delivery(self, queue: str, tag: str | None, raw: bytes) -> RedisDelivery:
        """A delivery; an entry that is not a kombu envelope comes back with its raw bytes as
        the body and content type ``application/x-unknown``, for the worker to dead-letter."""
        try:
            message, envelope = kombu.decode(raw)
        except ValueError:
            message = Message(
                body=raw, content_type=UNKNOWN_CONTENT_TYPE, content_encoding="binary"
            )
            return RedisDelivery(self, message, queue, tag=tag, envelope=None, raw=raw)
        info = envelope["properties"].get("delivery_info")
        redelivered = bool(message.headers.get("redelivered")) or (
            isinstance(info, dict) and bool(info.get("redelivered"))
        )
        return RedisDelivery(
            self, message, queue, tag=tag, envelope=envelope, raw=raw, redelivered=redelivered
        )

    # settling

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One MULTI for the whole batch."""
        self._settle_batch(deliveries, wait=True)

    def send_acks(self, deliveries: Sequence[Delivery]) -> None:
        """The batch goes out on the ack line, after the held entries it does not ack; the
        replies are read by the next receive (see
        :class:`~taskframe.brokers.redis.unacked.AckLine`)."""
        self._settle_batch(deliveries, wait=False)

    def _settle_batch(self, deliveries: Sequence[Delivery], *, wait: bool) -> None:
        pending = [d for d in deliveries if isinstance(d, RedisDelivery) and not d.settled]
        for delivery in pending:
            delivery.settled = True
        self._unacked.remove([d.tag for d in pending if d.tag], wait=wait)
        for other in deliveries:
            if not isinstance(other, RedisDelivery):
                other.ack()

    def _recover(self) -> None:
        """Send what the ledger kept while Redis was away, and give back what a receive whose
        reply was lost took (the messages its receipt names)."""
        self._unacked.flush()
        if self._unanswered is not None:
            self._unacked.restore_receipt(self._unanswered)
            self._unanswered = None

    def _requeue(self, delivery: RedisDelivery) -> None:
        """Back to the far end of its list (LPUSH, as kombu), flagged redelivered."""
        if delivery.envelope is None:
            key, value = delivery.queue, delivery.raw
        else:
            restored = kombu.mark_redelivered(delivery.envelope)
            key = kombu.list_key(
                delivery.queue, kombu.clamp_priority(restored["properties"].get("priority"))
            )
            value = json.dumps(restored).encode("utf-8")
        self._move(delivery.tag or "", key, value, "left")

    def _move(self, tag: str, key: str, value: str | bytes, side: str) -> None:
        """Settle ``tag`` and push ``value`` onto list ``key`` in one script, once the ack
        line has landed what it carries (the entry may still be on its way there)."""
        self._unacked.flush()
        with translate_errors(self.target):
            self._move_script(self.client, [UNACKED, UNACKED_INDEX, key], [tag, value, side])

    def _extend(self, delivery: RedisDelivery, seconds: float) -> None:
        if delivery.tag is not None:
            self._unacked.extend(delivery.tag, seconds)

    def restore_visible(self) -> int:
        """Put unacked messages older than the visibility timeout back on their queues."""
        self._next_sweep = time.monotonic() + self.restore_interval
        return self._unacked.restore_visible()

    # dead letters

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if not isinstance(delivery, RedisDelivery):
            raise TypeError(f"not a Redis delivery: {delivery!r}")
        tag = "" if delivery.settled else (delivery.tag or "")
        delivery.settled = True
        envelope = delivery.envelope
        if envelope is None:
            envelope = kombu.encode(delivery.queue, delivery.message, 0)[1]
        record = {
            "id": uuid.uuid4().hex,
            "reason": reason,
            "failed_at": time.time(),
            "envelope": envelope,
        }
        self._move(tag, dead_letter_key(delivery.queue), json.dumps(record), "right")

    def _dead_letter_records(self, queue: str, limit: int) -> list[tuple[bytes, dict[str, Any]]]:
        with translate_errors(self.target):
            raws = self.client.execute(
                "LRANGE", dead_letter_key(queue), 0, limit - 1 if limit > 0 else -1
            )
        records = []
        for raw in raws:
            try:
                records.append((raw, json.loads(raw)))
            except ValueError:
                log.error(
                    "unreadable dead-letter record in %s: %r", dead_letter_key(queue), raw[:200]
                )
        return records

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        letters = []
        for _raw, record in self._dead_letter_records(queue, limit):
            message = kombu.decode(json.dumps(record["envelope"]).encode("utf-8"))[0]
            letters.append(
                DeadLetter(
                    record["id"], queue, record["reason"], message, float(record["failed_at"])
                )
            )
        return letters

    def replay_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        wanted = None if ids is None else set(ids)
        args: list[Any] = []
        for raw, record in self._dead_letter_records(queue, 0):
            if wanted is not None and record.get("id") not in wanted:
                continue
            message = kombu.decode(json.dumps(record["envelope"]).encode("utf-8"))[0]
            number, envelope = kombu.encode(queue, message, None)
            args += [raw, kombu.list_key(queue, number), kombu.to_json(envelope)]
        if not args:
            return 0
        with translate_errors(self.target):
            pipe = self.client.pipeline(transaction=False)
            self._declare(pipe, queue)
            pipe.execute()
            return int(self._replay_script(self.client, [dead_letter_key(queue)], args))

    def purge_dead_letters(self, queue: str) -> int:
        with translate_errors(self.target):
            pipe = self.client.pipeline(transaction=True)
            pipe.add("LLEN", dead_letter_key(queue))
            pipe.add("DEL", dead_letter_key(queue))
            return int(pipe.execute()[0])

    # queue management

    def purge(self, queue: str) -> int:
        keys = kombu.list_keys(queue)
        with translate_errors(self.target):
            pipe = self.client.pipeline(transaction=True)
            for key in keys:
                pipe.add("LLEN", key)
            pipe.add("DEL", *keys)
            return sum(int(n) for n in pipe.execute()[: len(keys)])

    def size(self, queue: str) -> int:
        with translate_errors(self.target):
            pipe = self.client.pipeline(transaction=False)
            for key in kombu.list_keys(queue):
                pipe.add("LLEN", key)
            pipe.add("HGET", DELAYED_COUNTS, queue)
            *ready, delayed = pipe.execute()
        return sum(int(n) for n in ready) + int(delayed or 0)

    # fan-out, rate limits, lifecycle

    def broadcast(self, channel: str, payload: bytes) -> None:
        with translate_errors(self.target):
            self.client.execute("PUBLISH", self.fanout_prefix + channel, payload)

    def subscribe(self, channels: Sequence[str]) -> Subscription:
        """PSUBSCRIBE like kombu (``#`` in a channel becomes ``*``)."""
        patterns = [self.fanout_prefix + channel.replace("#", "*") for channel in channels]
        with translate_errors(self.target):
            subscriber = self.client.subscriber()
            subscriber.psubscribe(*patterns)
        return RedisSubscription(self, subscriber)

    def acquire_rate_token(self, key: str, rate: float, capacity: float) -> float:
        with translate_errors(self.target):
            wait = self._rate_script(self.client, [f"taskframe.rate.{key}"], [rate, capacity])
        return float(wait)

    def ensure_connection(self) -> None:
        with translate_errors(self.target):
            self.client.execute("PING")
        self._recover()

    def close(self) -> None:
        self._unacked.close()
        self._producer.close()
        self.client.close()
