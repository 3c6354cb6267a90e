"""The unacked ledger: what consumers hold, in kombu's layout (``unacked`` hash: tag ->
``[envelope, exchange, routing_key]``; ``unacked_index`` zset: tag -> delivery time).

:class:`Unacked` settles entries (acks, sent at once or without waiting for their replies,
kept while Redis is away), gives back what a receive whose reply was lost took (by its
receipt), and puts back entries older than the visibility timeout, as kombu's sweep does.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from contextlib import suppress
from typing import Any

from taskframe.brokers.redis import envelope as kombu
from taskframe.brokers.redis import scripts
from taskframe.brokers.redis.client import Client, HeldConnection, Script
from taskframe.brokers.redis.connection import RedisTarget, translate_errors
from taskframe.brokers.redis.wire import RedisConnectionError, RedisError, ResponseError, pack
from taskframe.exceptions import BrokerConnectionError

__all__ = ["RECEIPT_PREFIX", "UNACKED", "UNACKED_INDEX", "UNACKED_MUTEX", "AckLine", "Unacked"]

log = logging.getLogger(__name__)

UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
UNACKED_MUTEX = "unacked_mutex"
RECEIPT_PREFIX = "taskframe.receipt."

Entry = tuple[str, bytes, float]
"""An ``unacked`` entry: tag, ``[envelope, exchange, routing_key]`` value, delivery time."""


class Unacked:
    """The ledger for one broker: ``client`` and ``target`` are the broker's."""

    def __init__(
        self,
        client: Client,
        target: RedisTarget,
        *,
        visibility_timeout: float,
        restore_batch: int,
        mutex_expire: float,
    ) -> None:
        self.client = client
        self.target = target
        self.visibility_timeout = visibility_timeout
        self.restore_batch = restore_batch
        self.mutex_expire = mutex_expire
        self._line = AckLine(client)
        self._restore_script = Script(scripts.RESTORE)
        self._unlock_script = Script(scripts.UNLOCK)
        self._unsent: list[str] = []
        self._unrecorded: list[Entry] = []
        self._held: list[Entry] = []
        self._receipt_key = ""
        self._receipt_pid = 0

    # entries and acks

    def hold(self, tag: str, value: bytes) -> None:
        """Keep the entry of a message a BRPOP took, to write with the next acks: the worker
        sends those before it hands the message to a child (``Broker.send_acks``), and an
        entry acked in that same batch is never written at all (an early ack: measured, two
        writes off every round trip). Anything that reads the ledger writes it first."""
        self._held.append((tag, value, time.time()))

    def remove(self, tags: list[str], *, wait: bool = True) -> None:
        """Ack ``tags`` (with any kept from before), writing the held entries first: in one
        MULTI, or, without ``wait``, on the ack line. Acks that cannot reach Redis are kept and
        sent first by the next call that can, and do not raise: the worker goes on running
        what it acked, and a restart does not turn an early-acked task into a redelivery an
        hour later. (A process that exits before Redis is back leaves them unacked:
        redelivered, never lost.) Entries go before acks, so no ack lands before its entry."""
        if wait:
            self._collect()
        held, self._held = self._held, []
        if held and tags:
            acked = set(tags)
            settled = {tag for tag, _, _ in held if tag in acked}
            held = [entry for entry in held if entry[0] not in settled]
            tags = [tag for tag in tags if tag not in settled]
        waiting = len(self._unsent) + len(self._unrecorded)
        tags = [*self._unsent, *tags]
        entries = [*self._unrecorded, *held]
        self._unsent, self._unrecorded = [], []
        if not tags and not entries:
            return
        try:
            with translate_errors(self.target):
                if wait:
                    pipe = self.client.pipeline(transaction=True)
                    for tag, value, score in entries:
                        pipe.add("HSET", UNACKED, tag, value)
                        pipe.add("ZADD", UNACKED_INDEX, score, tag)
                    if tags:
                        pipe.add("ZREM", UNACKED_INDEX, *tags)
                        pipe.add("HDEL", UNACKED, *tags)
                    pipe.execute()
                else:
                    self._line.write(entries, tags)
        except BrokerConnectionError as exc:
            self._unsent, self._unrecorded = tags, entries
            if not waiting:
                log.warning("acks wait until Redis is back: %s", exc)

    def flush(self) -> None:
        """Write the held entries, read the ack line's replies and send everything kept;
        BrokerConnectionError while some are still kept. Call it before touching an entry on
        another connection."""
        if self._held:
            self.remove([], wait=False)
        self._collect()
        if self._unsent or self._unrecorded:
            self.remove([])
            if self._unsent or self._unrecorded:
                raise BrokerConnectionError(f"cannot reach Redis at {self.target.address}")

    def _collect(self) -> None:
        """Read the ack line's replies; keep what it lost, to send again."""
        with translate_errors(self.target):
            entries, tags = self._line.settle()
        self._unrecorded += entries
        self._unsent += tags

    def extend(self, tag: str, seconds: float) -> None:
        """Move the index score so that every sweep (ours and kombu's) sees the entry as
        delivered ``seconds`` from now minus the visibility timeout; never earlier."""
        score = time.time() + seconds - self.visibility_timeout
        self.flush()
        with translate_errors(self.target):
            self.client.execute("ZADD", UNACKED_INDEX, "XX", "GT", score, tag)

    # giving back

    def receipt_key(self) -> str:
        """This consumer's receipt key (a forked child gets a key of its own)."""
        if self._receipt_pid != os.getpid():
            self._receipt_pid = os.getpid()
            self._receipt_key = f"{RECEIPT_PREFIX}{uuid.uuid4()}"
        return self._receipt_key

    def restore_receipt(self, call: str) -> None:
        """Put back the messages receive call ``call`` took, if it ran."""
        with translate_errors(self.target):
            raw = self.client.execute("GET", self.receipt_key())
            receipt = json.loads(raw) if raw else None
            if not receipt or receipt[0] != call:
                return
            tags = [str(tag) for tag in receipt[1]]
            values = self.client.execute("HMGET", UNACKED, *tags)
            restored = sum(
                self._restore_one(tag.encode(), value)
                for tag, value in reversed(list(zip(tags, values, strict=True)))
            )
        log.warning("gave back %d message(s) taken by a receive whose reply was lost", restored)

    def restore_visible(self) -> int:
        """Put entries older than the visibility timeout back on their queues.

        Takes kombu's ``unacked_mutex`` the way kombu does, so a Celery worker's sweep and
        this one never run at once; each message moves in one compare-and-swap script."""
        restored = 0
        with translate_errors(self.target):
            token = uuid.uuid4().hex
            expire = max(1, int(self.mutex_expire * 1000))
            if self.client.execute("SET", UNACKED_MUTEX, token, "NX", "PX", expire) is None:
                return 0
            try:
                ceiling = time.time() - self.visibility_timeout
                tags = self.client.execute(
                    "ZRANGEBYSCORE", UNACKED_INDEX, "-inf", ceiling, "LIMIT", 0, self.restore_batch
                )
                values = self.client.execute("HMGET", UNACKED, *tags) if tags else []
                for tag, value in zip(tags, values, strict=True):
                    restored += self._restore_one(tag, value)
            finally:
                self._unlock_script(self.client, [UNACKED_MUTEX], [token])
        return restored

    def _restore_one(self, tag: bytes, value: bytes | None) -> int:
        if value is None:
            self.client.execute("ZREM", UNACKED_INDEX, tag)
            return 0
        try:
            envelope, exchange, routing_key = json.loads(value)
            restored = kombu.mark_redelivered(envelope)
            number = kombu.clamp_priority(restored["properties"].get("priority"))
        except (ValueError, TypeError, KeyError, AttributeError):
            log.error("dropping unreadable unacked entry %r: %r", tag, value[:200])
            pipe = self.client.pipeline()
            pipe.add("ZREM", UNACKED_INDEX, tag).add("HDEL", UNACKED, tag).execute()
            return 0
        keys = [kombu.list_key(q, number) for q in self._lookup(str(exchange), str(routing_key))]
        result = self._restore_script(
            self.client, [UNACKED, UNACKED_INDEX, *keys], [tag, value, json.dumps(restored)]
        )
        return int(result)

    def _lookup(self, exchange: str, routing_key: str) -> list[str]:
        """The queues a message sent to ``exchange`` with ``routing_key`` reaches (direct
        routing through kombu's binding set; the routing key itself for exchange "")."""
        if not exchange:
            return [routing_key]
        members = self.client.execute("SMEMBERS", f"_kombu.binding.{exchange}")
        queues = []
        for member in members:
            key, _pattern, queue = member.decode("utf-8").split(kombu.SEP, 2)
            if key == routing_key:
                queues.append(queue)
        return queues or [routing_key]

    def close(self) -> None:
        """Read what the ack line owes and send what was kept, if Redis answers."""
        with suppress(RedisError, BrokerConnectionError):
            self.flush()
        self._line.close()


class AckLine:
    """Acks (and entries a BRPOP took) written without waiting for their replies, read back
    by a later call.

    An early ack must reach Redis before its job is handed to a child, but nothing needs its
    reply: waiting for it put a round trip on every hand-off (measured: 80 µs of a 0.66 ms
    round trip, and 15% of a chord's time). The commands go out in order on a connection of
    their own (so no other command reads their replies); :meth:`settle` reads the replies and
    returns what went out in any batch whose fate is unknown because the connection broke, for
    the caller to send again: writing an entry or removing it twice is harmless, and sent
    again in order, an entry still comes before its ack."""

    def __init__(self, client: Client) -> None:
        self._line = HeldConnection(client.settings)
        self._pending: list[tuple[int, list[Entry], list[str]]] = []
        """Per write: its reply count, the entries and the acks it carried."""
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def write(self, entries: list[Entry], tags: list[str]) -> None:
        """Write HSET and ZADD of ``(tag, value, time)`` entries, then ZREM and HDEL of
        ``tags``, in one write (:class:`~.wire.ConnectionError` if it fails)."""
        commands: list[tuple[Any, ...]] = []
        for tag, value, score in entries:
            commands += [("HSET", UNACKED, tag, value), ("ZADD", UNACKED_INDEX, score, tag)]
        if tags:
            commands += [("ZREM", UNACKED_INDEX, *tags), ("HDEL", UNACKED, *tags)]
        with self._lock:
            self._forget_after_fork()
            self._line.connection.send(pack(commands))
            self._pending.append((len(commands), entries, tags))

    def settle(self) -> tuple[list[Entry], list[str]]:
        """Read every reply due; returns the entries and acks that may not have arrived."""
        with self._lock:
            self._forget_after_fork()
            if not self._pending:
                return [], []
            connection = self._line.connection
            while self._pending:
                try:
                    replies = connection.read_many(self._pending[0][0])
                except RedisConnectionError:
                    lost = self._pending
                    self._pending = []
                    return (
                        [entry for _, entries, _ in lost for entry in entries],
                        [tag for _, _, tags in lost for tag in tags],
                    )
                self._pending.pop(0)
                for reply in replies:
                    if isinstance(reply, ResponseError):
                        raise reply
            return [], []

    def close(self) -> None:
        with self._lock:
            self._pending.clear()
            self._line.close()

    def _forget_after_fork(self) -> None:
        """A forked child's line is a new connection: the parent's replies are not on it."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._pending.clear()
