"""Names, arguments and routing keys of everything the RabbitMQ broker declares, and the
mapping between a :class:`Message` and AMQP basic properties.

Delayed delivery is a chain of TTL queues per target queue (see the package docstring): a
delay of ``n`` milliseconds is written in binary, and the message passes through the level
queue of every set bit, highest first, each holding it for exactly ``2**level`` ms (a
per-queue TTL, so the head always expires first and nothing waits behind a longer message).
"""

from __future__ import annotations

import math
from typing import Any

import pika

from taskframe.brokers.base import Message
from taskframe.brokers.rabbitmq.codec import Properties

__all__ = [
    "DEFER_UNTIL",
    "DELAY_DELIVER_EXCHANGE",
    "DELAY_LEVELS",
    "DLQ_FAILED_AT",
    "DLQ_ID",
    "DLQ_REASON",
    "UNKNOWN_CONTENT_TYPE",
    "dead_letter_queue",
    "delay_exchange",
    "delay_queue",
    "delay_routing_key",
    "message_from_amqp",
    "properties_for",
]

DELAY_LEVELS = 32
"""Level ``i`` holds a message ``2**i`` ms, so one pass through the chain covers 49.7 days."""
DELAY_DELIVER_EXCHANGE = "taskframe.delay.deliver"
DLQ_ID = "x-taskframe-dlq-id"
DLQ_REASON = "x-taskframe-dlq-reason"
DLQ_FAILED_AT = "x-taskframe-dlq-failed-at"
DEFER_UNTIL = "x-taskframe-defer-until"
UNKNOWN_CONTENT_TYPE = "application/x-unknown"
_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
_PROPERTY_NAMES = (
    "correlation_id",
    "reply_to",
    "delivery_mode",
    "priority",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
)


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dlq"


def delay_exchange(level: int) -> str:
    """The topic exchange in front of level ``level``; level -1 is the final hop."""
    return DELAY_DELIVER_EXCHANGE if level < 0 else f"taskframe.delay.{1 << level}ms"


def delay_queue(queue: str, level: int) -> str:
    return f"taskframe.delay.{queue}.{1 << level}ms"


def delay_milliseconds(delay: float) -> int:
    return max(0, math.ceil(delay * 1000))


def delay_routing_key(queue: str, milliseconds: int) -> str:
    """One word per level, highest first (``1``: wait at this level), then the target queue."""
    bits = ".".join("1" if milliseconds >> level & 1 else "0" for level in _levels_down())
    return f"{bits}.{queue}"


def level_pattern(level: int, bit: str, tail: str) -> str:
    """Topic pattern matching ``bit`` at ``level`` and anything at the other levels."""
    words = [bit if other == level else "*" for other in _levels_down()]
    return ".".join([*words, tail])


def deliver_pattern(queue: str) -> str:
    return ".".join(["*"] * DELAY_LEVELS + [queue])


def _levels_down() -> range:
    return range(DELAY_LEVELS - 1, -1, -1)


def properties_for(
    message: Message, priority: int | None, *, expiration: bool = True
) -> pika.BasicProperties:
    """AMQP properties for ``message``; ``priority`` (when given) overrides the message's;
    ``expiration=False`` leaves the per-message TTL out.

    Keys of ``message.properties`` that are not AMQP basic properties (kombu's envelope keys)
    have no place on the wire and are left out."""
    props = message.properties
    values: dict[str, Any] = {name: props[name] for name in _PROPERTY_NAMES if name in props}
    if not expiration:
        values.pop("expiration", None)
    values.setdefault("delivery_mode", 2)
    if priority is not None:
        values["priority"] = priority
    if values.get("priority") is not None:
        values["priority"] = min(max(int(values["priority"]), 0), 255)
    if values.get("expiration") is not None:
        values["expiration"] = str(values["expiration"])
    return Properties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=dict(message.headers),
        **values,
    )


def message_from_amqp(properties: pika.BasicProperties, body: bytes) -> Message:
    """The message as sent: headers RabbitMQ added while it passed the delay chain
    (``x-death`` ...) are dropped, so the worker sees what the producer published."""
    headers = dict(properties.headers or {})
    if str(headers.get("x-first-death-queue", "")).startswith("taskframe.delay."):
        headers = {
            key: value
            for key, value in headers.items()
            if not any(key.startswith(prefix) for prefix in _DEATH_HEADERS)
        }
    values = {name: getattr(properties, name) for name in _PROPERTY_NAMES}
    return Message(
        body=body,
        headers=headers,
        properties={name: value for name, value in values.items() if value is not None},
        content_type=properties.content_type or UNKNOWN_CONTENT_TYPE,
        content_encoding=properties.content_encoding or "binary",
    )
