"""SQSBroker: kombu's SQS queues and bodies, long-polled batch receives, durable delays of
any length, and a dead-letter queue per queue.

See the package docstring for URLs, options and queues.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from taskframe.brokers.base import Broker, Capabilities, DeadLetter, Delivery, Message, Subscription
from taskframe.brokers.sqs import envelope as kombu
from taskframe.brokers.sqs.connection import (
    MAX_VISIBILITY,
    SQSSettings,
    dead_letter_name,
    make_client,
    parse_settings,
    sqs_queue_name,
    translate_errors,
)
from taskframe.exceptions import BrokerError, ImproperlyConfigured

__all__ = ["SQSBroker", "SQSDelivery"]

log = logging.getLogger(__name__)

UNKNOWN_CONTENT_TYPE = "application/x-unknown"
DEAD_LETTER_RETENTION = 1209600
"""Dead letters are kept 14 days, the longest SQS allows."""
PEEK_SECONDS = 30
"""How long a dead-letter listing or a purge holds the messages it is reading."""
RECEIVE_ATTRIBUTES = ["ApproximateReceiveCount"]


@dataclass(frozen=True)
class QueueRef:
    """One SQS queue: its SQS name, URL and the client allowed to use it."""

    sqs_name: str
    url: str
    client: Any

    @property
    def fifo(self) -> bool:
        return self.sqs_name.endswith(".fifo")


class SQSDelivery(Delivery):
    """A received SQS message, settled through its receipt handle."""

    def __init__(
        self,
        broker: SQSBroker,
        message: Message,
        queue: str,
        *,
        ref: QueueRef,
        receipt: str,
        envelope: dict[str, Any] | None,
        redelivered: bool,
    ) -> None:
        super().__init__(message, queue, redelivered=redelivered)
        self.broker = broker
        self.ref = ref
        self.receipt = receipt
        self.envelope = envelope

    def _ack(self) -> None:
        self.broker._delete(self.ref, [self.receipt])

    def _reject(self, requeue: bool) -> None:
        if requeue:
            self.broker._set_visibility(self.ref, self.receipt, 0)
        else:
            self.broker._delete(self.ref, [self.receipt])

    def extend(self, seconds: float) -> None:
        """Hidden ``seconds`` from now (whole seconds, rounded up; SQS allows 12 hours)."""
        if not self.settled:
            self.broker._set_visibility(self.ref, self.receipt, math.ceil(seconds))


class SQSBroker(Broker):
    """Amazon SQS broker, wire-compatible with kombu/Celery on the same queues."""

    scheme = "sqs"
    capabilities: ClassVar[Capabilities] = Capabilities(
        priorities=False,
        max_delay=900,
        broadcast=False,
        extend_visibility=True,
        max_message_size=kombu.MAX_MESSAGE_SIZE,
        shared_rate_limits=False,
        idle_wait=2.0,
    )
    max_native_delay: ClassVar[int] = 900
    """Longest DelaySeconds SQS takes; longer delays are re-deferred in hops of this size."""

    def __init__(self, url: str, *, transport_options: dict[str, Any] | None = None) -> None:
        super().__init__(url, transport_options=transport_options)
        self.settings: SQSSettings = parse_settings(url, self.transport_options)
        self.visibility_timeout = self.settings.visibility_timeout
        self.client = make_client(self.settings)
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._queues: dict[str, QueueRef] = {}
        self._rotation = 0

    # queues

    def _ref(self, sqs_name: str, *, create: bool, dead_letters: bool = False) -> QueueRef | None:
        """The queue called ``sqs_name``, created on first use when ``create`` (else None
        when it does not exist). URLs are cached for the life of the broker."""
        cached = self._queues.get(sqs_name)
        if cached is not None:
            return cached
        if self.settings.predefined_queues:
            if not create and sqs_name not in self.settings.predefined_queues:
                return None
            ref = self._predefined(sqs_name)
        else:
            url = self._lookup_or_create(sqs_name, create, dead_letters)
            if url is None:
                return None
            ref = QueueRef(sqs_name, url, self.client)
        self._queues[sqs_name] = ref
        return ref

    def _queue(self, queue: str) -> QueueRef:
        ref = self._ref(self._sqs_name(queue), create=True)
        assert ref is not None
        return ref

    def _dead_letter_queue(self, queue: str, *, create: bool) -> QueueRef | None:
        return self._ref(dead_letter_name(self._sqs_name(queue)), create=create, dead_letters=True)

    def _sqs_name(self, queue: str) -> str:
        return sqs_queue_name(self.settings.queue_name_prefix + queue)

    def _lookup_or_create(self, sqs_name: str, create: bool, dead_letters: bool) -> str | None:
        client = self.client
        with translate_errors(self.settings, f"GetQueueUrl {sqs_name}"):
            try:
                return str(client.get_queue_url(QueueName=sqs_name)["QueueUrl"])
            except client.exceptions.QueueDoesNotExist:
                if not create:
                    return None
        attributes = {"VisibilityTimeout": str(self.settings.visibility_seconds)}
        if sqs_name.endswith(".fifo"):
            attributes["FifoQueue"] = "true"
        if dead_letters:
            attributes["MessageRetentionPeriod"] = str(DEAD_LETTER_RETENTION)
        with translate_errors(self.settings, f"CreateQueue {sqs_name}"):
            try:
                response = client.create_queue(QueueName=sqs_name, Attributes=attributes)
            except client.exceptions.QueueNameExists:
                response = client.get_queue_url(QueueName=sqs_name)
        log.info("created SQS queue %s", sqs_name)
        return str(response["QueueUrl"])

    def _predefined(self, sqs_name: str) -> QueueRef:
        entry = self.settings.predefined_queues.get(sqs_name)
        if entry is None:
            known = ", ".join(sorted(self.settings.predefined_queues))
            raise ImproperlyConfigured(
                f"SQS queue {sqs_name!r} is not in predefined_queues ({known}); add it, or "
                "leave predefined_queues out so taskframe creates queues itself"
            )
        key = (
            entry.get("access_key_id", ""),
            entry.get("secret_access_key", ""),
            entry.get("region", ""),
        )
        if not any(key):
            return QueueRef(sqs_name, entry["url"], self.client)
        if key not in self._clients:
            self._clients[key] = make_client(self.settings, entry)
        return QueueRef(sqs_name, entry["url"], self._clients[key])

    # publishing

    def publish(
        self, queue: str, message: Message, *, delay: float = 0.0, priority: int | None = None
    ) -> None:
        self.publish_many([(queue, message, delay, priority)])

    def publish_many(self, items: Iterable[tuple[str, Message, float, int | None]]) -> None:
        """SendMessage for one message, SendMessageBatch (10 and 256 KiB at most) for more.
        Every size is checked before anything is sent."""
        groups: dict[str, tuple[QueueRef, list[dict[str, Any]]]] = {}
        for queue, message, delay, priority in items:
            ref = self._queue(queue)
            entry = self._entry(ref, queue, message, delay, priority)
            groups.setdefault(ref.sqs_name, (ref, []))[1].append(entry)
        for ref, entries in groups.values():
            if len(entries) == 1:
                self._send_one(ref, entries[0])
                continue
            for chunk in kombu.chunks(entries):
                self._send_batch(ref, chunk)

    def _entry(
        self, ref: QueueRef, queue: str, message: Message, delay: float, priority: int | None
    ) -> dict[str, Any]:
        """SendMessage parameters. A delay SQS cannot hold natively (over ``max_native_delay``,
        or any delay on a FIFO queue) also records its due time in the envelope."""
        seconds, due = 0, None
        if delay > 0:
            seconds = math.ceil(delay)
            if ref.fifo or seconds > self.max_native_delay:
                seconds, due = (0 if ref.fifo else self.max_native_delay), time.time() + delay
        body = kombu.body_of(kombu.encode(queue, message, priority, due))
        kombu.check_size(body, queue)
        entry: dict[str, Any] = {"MessageBody": body}
        group = message.properties.get("MessageGroupId")
        if group is not None:
            entry["MessageGroupId"] = str(group)
        if ref.fifo:
            entry.setdefault("MessageGroupId", "default")
            dedupe = message.properties.get("MessageDeduplicationId") or uuid.uuid4()
            entry["MessageDeduplicationId"] = str(dedupe)
        elif seconds:
            entry["DelaySeconds"] = seconds
        return entry

    def _send_one(self, ref: QueueRef, entry: dict[str, Any]) -> None:
        with translate_errors(self.settings, f"SendMessage to {ref.sqs_name}"):
            ref.client.send_message(QueueUrl=ref.url, **entry)

    def _send_batch(self, ref: QueueRef, entries: list[dict[str, Any]]) -> None:
        batch = [{"Id": str(number), **entry} for number, entry in enumerate(entries)]
        with translate_errors(self.settings, f"SendMessageBatch to {ref.sqs_name}"):
            response = ref.client.send_message_batch(QueueUrl=ref.url, Entries=batch)
        _raise_failures(response, f"SendMessageBatch to {ref.sqs_name}", len(batch))

    # consuming

    def receive(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Long polls while a whole second of ``timeout`` is left (up to ``wait_time_seconds``
        each; they return as soon as a message is there); the fraction of a second left
        after one is not waited out, as a long poll just looked. A ``timeout`` under a
        second is a short poll, a wait for the fraction and a last short poll, so a call
        returns within ``timeout`` and an idle consumer with short timeouts sends a few
        requests a second, not a stream. Several queues get a short poll each first, so one
        queue's long poll does not hold up another's messages, then long polls of a second
        in turn; the first queue rotates from call to call, for fairness."""
        if max_messages <= 0 or not queues:
            return []
        deadline = time.monotonic() + timeout
        start = self._rotation % len(queues)
        self._rotation += 1
        order = [*queues[start:], *queues[:start]]
        refs = [(queue, self._queue(queue)) for queue in order]
        wait = min(self.settings.wait_time_seconds, int(timeout)) if len(refs) == 1 else 0
        long_polled = False
        while True:
            deliveries: list[Delivery] = []
            for queue, ref in refs:
                wanted = max_messages - len(deliveries)
                if wanted <= 0:
                    break
                deliveries += self._poll(queue, ref, wanted, 0 if deliveries else wait)
            long_polled = long_polled or wait > 0
            remaining = deadline - time.monotonic()
            if deliveries or remaining <= 0:
                return deliveries
            longest = self.settings.wait_time_seconds if len(refs) == 1 else 1
            wait = min(longest, int(remaining))
            if wait == 0:
                if long_polled:
                    return []
                time.sleep(remaining)
                deadline = time.monotonic()

    def _poll(self, queue: str, ref: QueueRef, wanted: int, wait: int) -> list[Delivery]:
        """Up to ``wanted`` due deliveries from one queue; more than 10 take several calls."""
        deliveries: list[Delivery] = []
        while len(deliveries) < wanted:
            count = min(kombu.MAX_BATCH, wanted - len(deliveries))
            messages = self._receive_raw(ref, count, wait, self.settings.visibility_seconds)
            for raw in messages:
                delivery = self._delivery(queue, ref, raw)
                due = (delivery.envelope or {}).get("properties", {}).get(kombu.DUE)
                if isinstance(due, (int, float)) and due > time.time():
                    self._defer(ref, raw, float(due))
                else:
                    deliveries.append(delivery)
            if len(messages) < count:
                return deliveries
            wait = 0
        return deliveries

    def _receive_raw(
        self, ref: QueueRef, count: int, wait: int, visibility: int
    ) -> list[dict[str, Any]]:
        with translate_errors(self.settings, f"ReceiveMessage from {ref.sqs_name}"):
            response = ref.client.receive_message(
                QueueUrl=ref.url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=wait,
                VisibilityTimeout=visibility,
                MessageSystemAttributeNames=RECEIVE_ATTRIBUTES,
            )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    def _delivery(self, queue: str, ref: QueueRef, raw: dict[str, Any]) -> SQSDelivery:
        """A delivery; a body that is not a kombu envelope comes back as raw bytes with
        content type ``application/x-unknown``, for the worker to dead-letter."""
        text = str(raw.get("Body", ""))
        envelope: dict[str, Any] | None
        try:
            message, envelope = kombu.decode(text)
        except ValueError:
            message = Message(
                text.encode("utf-8"), content_type=UNKNOWN_CONTENT_TYPE, content_encoding="binary"
            )
            envelope = None
        count = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return SQSDelivery(
            self,
            message,
            queue,
            ref=ref,
            receipt=str(raw["ReceiptHandle"]),
            envelope=envelope,
            redelivered=count > 1,
        )

    def _defer(self, ref: QueueRef, raw: dict[str, Any], due: float) -> None:
        """Hold a message that is not due yet. Standard queue: send it again with the rest of
        the delay (one hop of at most ``max_native_delay``), then delete this copy. FIFO queue:
        keep it invisible until due (its group waits behind it, as FIFO order demands)."""
        remaining = math.ceil(due - time.time())
        if ref.fifo:
            self._set_visibility(ref, str(raw["ReceiptHandle"]), remaining)
            return
        delay = min(remaining, self.max_native_delay)
        self._send_one(ref, {"MessageBody": raw["Body"], "DelaySeconds": delay})
        self._delete(ref, [str(raw["ReceiptHandle"])])

    # settling

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """DeleteMessageBatch per queue, 10 receipts a call."""
        by_queue: dict[str, tuple[QueueRef, list[str]]] = {}
        for delivery in deliveries:
            if isinstance(delivery, SQSDelivery) and not delivery.settled:
                delivery.settled = True
                group = by_queue.setdefault(delivery.ref.sqs_name, (delivery.ref, []))
                group[1].append(delivery.receipt)
            elif not isinstance(delivery, SQSDelivery):
                delivery.ack()
        for ref, receipts in by_queue.values():
            self._delete(ref, receipts)

    def _delete(self, ref: QueueRef, receipts: Sequence[str]) -> None:
        action = f"DeleteMessage on {ref.sqs_name}"
        if len(receipts) == 1:
            with translate_errors(self.settings, action):
                ref.client.delete_message(QueueUrl=ref.url, ReceiptHandle=receipts[0])
            return
        for start in range(0, len(receipts), kombu.MAX_BATCH):
            chunk = receipts[start : start + kombu.MAX_BATCH]
            entries = [{"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(chunk)]
            with translate_errors(self.settings, action):
                response = ref.client.delete_message_batch(QueueUrl=ref.url, Entries=entries)
            _raise_failures(response, action, len(entries))

    def _set_visibility(self, ref: QueueRef, receipt: str, seconds: int) -> None:
        with translate_errors(self.settings, f"ChangeMessageVisibility on {ref.sqs_name}"):
            ref.client.change_message_visibility(
                QueueUrl=ref.url,
                ReceiptHandle=receipt,
                VisibilityTimeout=max(0, min(MAX_VISIBILITY, seconds)),
            )

    def _release(self, ref: QueueRef, receipts: Sequence[str]) -> None:
        """Make held messages visible again at once."""
        for start in range(0, len(receipts), kombu.MAX_BATCH):
            chunk = receipts[start : start + kombu.MAX_BATCH]
            entries = [
                {"Id": str(n), "ReceiptHandle": r, "VisibilityTimeout": 0}
                for n, r in enumerate(chunk)
            ]
            action = f"ChangeMessageVisibilityBatch on {ref.sqs_name}"
            with translate_errors(self.settings, action):
                response = ref.client.change_message_visibility_batch(
                    QueueUrl=ref.url, Entries=entries
                )
            _raise_failures(response, action, len(entries))

    # dead letters

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Send a record to ``<queue>-dlq`` first, then delete the original (a crash in
        between leaves a duplicate, never a loss)."""
        if not isinstance(delivery, SQSDelivery):
            raise TypeError(f"not an SQS delivery: {delivery!r}")
        message = delivery.message
        headers = {
            **message.headers,
            "x-death-id": uuid.uuid4().hex,
            "x-death-reason": reason,
            "x-death-queue": delivery.queue,
            "x-death-time": time.time(),
        }
        record = Message(
            message.body,
            headers,
            dict(message.properties),
            message.content_type,
            message.content_encoding,
        )
        body = kombu.body_of(kombu.encode(delivery.queue, record, None))
        kombu.check_size(body, dead_letter_name(self._sqs_name(delivery.queue)))
        ref = self._dead_letter_queue(delivery.queue, create=True)
        assert ref is not None
        self._send_one(ref, {"MessageBody": body})
        if not delivery.settled:
            delivery.settled = True
            self._delete(delivery.ref, [delivery.receipt])

    def _read_dead_letters(
        self, ref: QueueRef, limit: int | None
    ) -> Iterator[tuple[str, DeadLetter | None]]:
        """Receive parked records (each held ``PEEK_SECONDS``) with their receipt handles;
        None for a record that cannot be read or was already read (a listing so long that
        its first holds ran out: reading stops there, so no record comes back twice)."""
        seen: set[str] = set()
        while limit is None or len(seen) < limit:
            count = kombu.MAX_BATCH if limit is None else min(kombu.MAX_BATCH, limit - len(seen))
            messages = self._receive_raw(ref, count, 0, PEEK_SECONDS)
            repeated = False
            for raw in messages:
                receipt, message_id = str(raw["ReceiptHandle"]), str(raw["MessageId"])
                repeated = repeated or message_id in seen
                if message_id in seen:
                    yield receipt, None
                    continue
                seen.add(message_id)
                yield receipt, kombu.dead_letter_of(str(raw.get("Body", "")))
            if not messages or repeated:
                return

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """A peek: receive up to ``limit`` records, then make them visible again at once.
        Another peek running at the same moment may miss them; order is by failure time."""
        ref = self._dead_letter_queue(queue, create=False)
        if ref is None or limit <= 0:
            return []
        receipts, letters = [], []
        for receipt, letter in self._read_dead_letters(ref, limit):
            receipts.append(receipt)
            if letter is not None:
                letters.append(letter)
        self._release(ref, receipts)
        return sorted(letters, key=lambda letter: letter.failed_at)

    def replay_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        ref = self._dead_letter_queue(queue, create=False)
        if ref is None:
            return 0
        wanted = None if ids is None else set(ids)
        chosen, skipped = [], []
        for receipt, letter in self._read_dead_letters(ref, None):
            if letter is not None and (wanted is None or letter.id in wanted):
                chosen.append((receipt, letter))
            else:
                skipped.append(receipt)
        self._release(ref, skipped)
        items = []
        for _receipt, letter in chosen:
            message = letter.message
            message.properties.pop("MessageDeduplicationId", None)
            items.append((queue, message, 0.0, None))
        self.publish_many(items)
        self._delete(ref, [receipt for receipt, _letter in chosen])
        return len(chosen)

    def purge_dead_letters(self, queue: str) -> int:
        ref = self._dead_letter_queue(queue, create=False)
        return 0 if ref is None else self._drain(ref)

    # queue management

    def purge(self, queue: str) -> int:
        """Receive and delete in batches (PurgeQueue may run once a minute per queue on AWS)."""
        ref = self._ref(self._sqs_name(queue), create=False)
        return 0 if ref is None else self._drain(ref)

    def _drain(self, ref: QueueRef) -> int:
        """Delete every visible message; an empty short poll is trusted only when the queue's
        approximate count agrees (short polls sample a subset of SQS's servers)."""
        deleted = 0
        while True:
            messages = self._receive_raw(ref, kombu.MAX_BATCH, 0, PEEK_SECONDS)
            if not messages and self._counts(ref)[0]:
                messages = self._receive_raw(ref, kombu.MAX_BATCH, 1, PEEK_SECONDS)
            if not messages:
                return deleted
            self._delete(ref, [str(raw["ReceiptHandle"]) for raw in messages])
            deleted += len(messages)

    def size(self, queue: str) -> int:
        """Ready plus delayed messages (approximate, as SQS counts them)."""
        ref = self._ref(self._sqs_name(queue), create=False)
        return 0 if ref is None else sum(self._counts(ref))

    def _counts(self, ref: QueueRef) -> tuple[int, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
        with translate_errors(self.settings, f"GetQueueAttributes of {ref.sqs_name}"):
            response = ref.client.get_queue_attributes(QueueUrl=ref.url, AttributeNames=names)
        attributes = response.get("Attributes", {})
        return int(attributes.get(names[0], 0)), int(attributes.get(names[1], 0))

    # fan-out and lifecycle

    def broadcast(self, channel: str, payload: bytes) -> None:
        raise NotImplementedError(_NO_FANOUT)

    def subscribe(self, channels: Sequence[str]) -> Subscription:
        raise NotImplementedError(_NO_FANOUT)

    def ensure_connection(self) -> None:
        """One cheap authenticated call, so a bad endpoint or key fails at start."""
        with translate_errors(self.settings, "connecting"):
            predefined = self.settings.predefined_queues
            if predefined:
                name = next(iter(predefined))
                ref = self._predefined(name)
                ref.client.get_queue_attributes(QueueUrl=ref.url, AttributeNames=["QueueArn"])
            else:
                self.client.list_queues(
                    QueueNamePrefix=self.settings.queue_name_prefix, MaxResults=1
                )

    def close(self) -> None:
        for client in (self.client, *self._clients.values()):
            client.close()


_NO_FANOUT = (
    "sqs:// brokers cannot broadcast: SQS has no fan-out, so remote control (ping, inspect, "
    "revoke broadcast) and events need a broker that can (sqlite, redis, amqp)"
)


def _raise_failures(response: dict[str, Any], action: str, count: int) -> None:
    failed = response.get("Failed") or []
    if failed:
        first = failed[0]
        raise BrokerError(
            f"SQS refused {len(failed)} of {count} entries in {action} "
            f"({first.get('Code')}: {first.get('Message', '')})"
        )
