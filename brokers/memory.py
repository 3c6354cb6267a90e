"""In-process broker and result backend: the test double and the store of eager mode.

URL: ``memory://`` (anything after the scheme is ignored). State belongs to the instance, not
to the module: the app holds one broker and an in-process worker uses that same instance, so
two apps never see each other's queues.

Capabilities: priorities (0-9, higher first, FIFO within a priority), delay without limit,
visibility timeout with redelivery and ``extend``, in-process broadcast, rate limits shared by
every thread of the process. Not persistent.

Transport options:

* ``visibility_timeout`` (float seconds, default 3600): how long a received message stays
  invisible before it is delivered again.

Layout: one heap of ready messages per queue ordered by (-priority, arrival), one heap of
delayed messages ordered by due time, a table of unacked deliveries with a heap of their
deadlines, and one ``threading.Condition`` that guards all of it and wakes waiting receivers.
``purge`` drops a queue's waiting messages, delayed ones included; ``size`` counts them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import queue as stdlib_queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from taskframe.brokers.base import (
    Broker,
    Capabilities,
    DeadLetter,
    Delivery,
    Message,
    ResultBackend,
    Subscription,
)
from taskframe.exceptions import ChordError

__all__ = ["MemoryBackend", "MemoryBroker", "clamp_priority", "fair_order"]

DEFAULT_VISIBILITY_TIMEOUT = 3600.0


def clamp_priority(priority: int | None) -> int:
    """Priority on taskframe's 0-9 scale; None means 0."""
    return min(9, max(0, int(priority or 0)))


def fair_order(candidates: Sequence[Sequence[int]], limit: int, rotation: int) -> list[int]:
    """Which queue each of up to ``limit`` deliveries comes from, in delivery order.

    ``candidates[q]`` lists the priorities of queue ``q``'s first messages in queue order.
    Higher priority wins; among equals the queues take turns, starting at ``rotation`` so no
    queue is always first. The n-th time ``q`` appears in the result stands for queue q's
    n-th message, so a caller takes a prefix of each queue.
    """
    count = len(candidates)
    ranked = [
        (-priority, position, (index - rotation) % count, index)
        for index, priorities in enumerate(candidates)
        for position, priority in enumerate(priorities)
    ]
    ranked.sort()
    return [index for *_, index in ranked[:limit]]


@dataclass
class _Entry:
    message: Message
    priority: int
    deliveries: int = 0


class _MemoryDelivery(Delivery):
    def __init__(self, broker: MemoryBroker, entry: _Entry, queue: str, token: int) -> None:
        super().__init__(entry.message, queue, redelivered=entry.deliveries > 1)
        self._broker = broker
        self._token = token

    def _ack(self) -> None:
        self._broker._settle(self._token, requeue=False)

    def _reject(self, requeue: bool) -> None:
        self._broker._settle(self._token, requeue=requeue)

    def extend(self, seconds: float) -> None:
        self._broker._extend(self._token, seconds)


class _MemorySubscription(Subscription):
    def __init__(self, broker: MemoryBroker, channels: Sequence[str]) -> None:
        self.channels = frozenset(channels)
        self.inbox: stdlib_queue.SimpleQueue[tuple[str, bytes]] = stdlib_queue.SimpleQueue()
        self._broker = broker

    def get(self, timeout: float) -> tuple[str, bytes] | None:
        try:
            return self.inbox.get(timeout=max(0.0, timeout))
        except stdlib_queue.Empty:
            return None

    def close(self) -> None:
        self._broker._unsubscribe(self)


class MemoryBroker(Broker):
    """Queues in this process's memory, guarded by one condition variable."""

    scheme = "memory"
    capabilities = Capabilities(shared_rate_limits=True, persistent=False)

    def __init__(self, url: str, *, transport_options: dict[str, Any] | None = None) -> None:
        super().__init__(url, transport_options=transport_options)
        self.visibility_timeout = float(
            self.transport_options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)
        )
        self._condition = threading.Condition()
        self._sequence = itertools.count()
        self._ready: dict[str, list[tuple[int, int, _Entry]]] = {}
        self._delayed: list[tuple[float, int, str, _Entry]] = []
        self._unacked: dict[int, tuple[str, _Entry, float]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._dead: dict[str, list[DeadLetter]] = {}
        self._subscriptions: set[_MemorySubscription] = set()
        self._buckets: dict[str, tuple[float, float]] = {}
        self._rotation = 0

    def publish(
        self, queue: str, message: Message, *, delay: float = 0.0, priority: int | None = None
    ) -> None:
        self.publish_many([(queue, message, delay, priority)])

    def publish_many(self, items: Iterable[tuple[str, Message, float, int | None]]) -> None:
        now = time.monotonic()
        with self._condition:
            for queue, message, delay, priority in items:
                level = priority if priority is not None else message.priority
                entry = _Entry(message, clamp_priority(level))
                if delay > 0:
                    heapq.heappush(self._delayed, (now + delay, next(self._sequence), queue, entry))
                else:
                    self._push_ready(queue, entry)
            self._condition.notify_all()

    def _push_ready(self, queue: str, entry: _Entry) -> None:
        heap = self._ready.setdefault(queue, [])
        heapq.heappush(heap, (-entry.priority, next(self._sequence), entry))

    def _promote(self, now: float) -> float | None:
        """Move due delayed messages and expired deliveries to ready; return the next due time."""
        while self._delayed and self._delayed[0][0] <= now:
            _, _, queue, entry = heapq.heappop(self._delayed)
            self._push_ready(queue, entry)
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, token = heapq.heappop(self._deadlines)
            held = self._unacked.get(token)
            if held is not None and held[2] == deadline:
                del self._unacked[token]
                self._push_ready(held[0], held[1])
        dues = [heap[0][0] for heap in (self._delayed, self._deadlines) if heap]
        return min(dues) if dues else None

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        queues = list(dict.fromkeys(queues))
        with self._condition:
            while True:
                now = time.monotonic()
                next_due = self._promote(now)
                deliveries = self._take(queues, max_messages, now)
                if deliveries or now >= deadline:
                    return deliveries
                wake_at = deadline if next_due is None else min(deadline, next_due)
                self._condition.wait(max(0.0, wake_at - now))

    def _take(self, queues: Sequence[str], limit: int, now: float) -> list[Delivery]:
        heaps = [heapq.nsmallest(limit, self._ready.get(queue, [])) for queue in queues]
        picks = fair_order([[-item[0] for item in heap] for heap in heaps], limit, self._rotation)
        self._rotation += 1
        deliveries: list[Delivery] = []
        for index in picks:
            queue = queues[index]
            _, _, entry = heapq.heappop(self._ready[queue])
            entry.deliveries += 1
            token = next(self._sequence)
            visible_at = now + self.visibility_timeout
            self._unacked[token] = (queue, entry, visible_at)
            heapq.heappush(self._deadlines, (visible_at, token))
            deliveries.append(_MemoryDelivery(self, entry, queue, token))
        return deliveries

    def _settle(self, token: int, *, requeue: bool) -> None:
        with self._condition:
            held = self._unacked.pop(token, None)
            if held is not None and requeue:
                self._push_ready(held[0], held[1])
                self._condition.notify_all()
            if len(self._deadlines) > 2 * len(self._unacked) + 64:
                # Settled deliveries leave their deadline behind; drop them now and then.
                self._deadlines = [(item[2], key) for key, item in self._unacked.items()]
                heapq.heapify(self._deadlines)

    def _extend(self, token: int, seconds: float) -> None:
        with self._condition:
            held = self._unacked.get(token)
            if held is not None:
                visible_at = time.monotonic() + seconds
                self._unacked[token] = (held[0], held[1], visible_at)
                heapq.heappush(self._deadlines, (visible_at, token))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._condition:
            parked = DeadLetter(
                str(next(self._sequence)), delivery.queue, reason, delivery.message, time.time()
            )
            self._dead.setdefault(delivery.queue, []).append(parked)
        delivery.ack()

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        with self._condition:
            return list(self._dead.get(queue, [])[:limit])

    def replay_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        with self._condition:
            parked = self._dead.get(queue, [])
            chosen = [item for item in parked if ids is None or item.id in ids]
            self._dead[queue] = [item for item in parked if ids is not None and item.id not in ids]
        self.publish_many((queue, item.message, 0.0, None) for item in chosen)
        return len(chosen)

    def purge_dead_letters(self, queue: str) -> int:
        with self._condition:
            return len(self._dead.pop(queue, []))

    def purge(self, queue: str) -> int:
        with self._condition:
            self._promote(time.monotonic())
            count = len(self._ready.pop(queue, []))
            kept = [item for item in self._delayed if item[2] != queue]
            count += len(self._delayed) - len(kept)
            heapq.heapify(kept)
            self._delayed = kept
            return count

    def size(self, queue: str) -> int:
        with self._condition:
            self._promote(time.monotonic())
            delayed = sum(1 for item in self._delayed if item[2] == queue)
            return len(self._ready.get(queue, [])) + delayed

    def broadcast(self, channel: str, payload: bytes) -> None:
        with self._condition:
            listeners = [sub for sub in self._subscriptions if channel in sub.channels]
        for subscription in listeners:
            subscription.inbox.put((channel, payload))

    def subscribe(self, channels: Sequence[str]) -> Subscription:
        subscription = _MemorySubscription(self, channels)
        with self._condition:
            self._subscriptions.add(subscription)
        return subscription

    def _unsubscribe(self, subscription: _MemorySubscription) -> None:
        with self._condition:
            self._subscriptions.discard(subscription)

    def acquire_rate_token(self, key: str, rate: float, capacity: float) -> float:
        with self._condition:
            now = time.monotonic()
            tokens, updated = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - updated) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            self._buckets[key] = (tokens - 1 if wait == 0.0 else tokens, now)
            return wait


def _expiry(expires: float | None) -> float | None:
    """Monotonic deadline for a TTL in seconds; None or <= 0 keeps the value forever."""
    return time.monotonic() + expires if expires is not None and expires > 0 else None


@dataclass
class _Chord:
    size: int
    parts: dict[int, bytes]
    expires_at: float | None
    completed: bool = False


class MemoryBackend(ResultBackend):
    """Results in this process's memory; ``wait`` is woken by ``set`` instead of polling.

    ``expires`` is a time to live in seconds; None or 0 keeps the value until deleted."""

    scheme = "memory"

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options)
        self._condition = threading.Condition()
        self._results: dict[str, tuple[bytes, float | None]] = {}
        self._groups: dict[str, tuple[bytes, float | None]] = {}
        self._chords: dict[str, _Chord] = {}

    @staticmethod
    def _live(table: dict[str, tuple[bytes, float | None]], key: str) -> bytes | None:
        stored = table.get(key)
        if stored is None:
            return None
        if stored[1] is not None and stored[1] <= time.monotonic():
            del table[key]
            return None
        return stored[0]

    def set(self, task_id: str, payload: bytes, *, expires: float | None) -> None:
        with self._condition:
            self._results[task_id] = (payload, _expiry(expires))
            self._condition.notify_all()

    def get(self, task_id: str) -> bytes | None:
        with self._condition:
            return self._live(self._results, task_id)

    def delete(self, task_id: str) -> None:
        with self._condition:
            self._results.pop(task_id, None)

    def wait(
        self,
        task_id: str,
        timeout: float | None,
        is_ready: Callable[[bytes], bool],
        interval: float = 0.01,
    ) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while True:
                payload = self._live(self._results, task_id)
                if payload is not None and is_ready(payload):
                    return payload
                if deadline is None:
                    self._condition.wait()
                elif not self._condition.wait(deadline - time.monotonic()):
                    return None

    def set_group(self, group_id: str, payload: bytes, *, expires: float | None) -> None:
        with self._condition:
            self._groups[group_id] = (payload, _expiry(expires))

    def get_group(self, group_id: str) -> bytes | None:
        with self._condition:
            return self._live(self._groups, group_id)

    def delete_group(self, group_id: str) -> None:
        with self._condition:
            self._groups.pop(group_id, None)

    def chord_start(self, group_id: str, size: int, *, expires: float | None) -> None:
        with self._condition:
            self._chords[group_id] = _Chord(size, {}, _expiry(expires))

    def chord_part_done(
        self, group_id: str, index: int, part: bytes, *, expires: float | None
    ) -> list[bytes] | None:
        with self._condition:
            chord = self._chords.get(group_id)
            if chord is None or (chord.expires_at or math.inf) <= time.monotonic():
                raise ChordError(f"chord {group_id} is unknown: never started, or it expired")
            if chord.completed or index in chord.parts:
                return None
            chord.parts[index] = part
            if expires is not None:
                chord.expires_at = _expiry(expires)
            if len(chord.parts) < chord.size:
                return None
            chord.completed = True
            return [chord.parts[key] for key in sorted(chord.parts)]

    def chord_adjust(self, group_id: str, delta: int) -> None:
        with self._condition:
            chord = self._chords.get(group_id)
            if chord is None:
                raise ChordError(f"chord {group_id} is unknown: never started, or it expired")
            chord.size += delta
