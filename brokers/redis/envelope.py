"""kombu's Redis envelope and key layout, kept private to the Redis store.

A queue ``q`` is four lists: ``q`` (priority 0-2), ``q\\x06\\x163`` (3-5), ``q\\x06\\x166``
(6-8) and ``q\\x06\\x169`` (9); a message goes to the largest step not above its priority.
Publishers ``LPUSH``, consumers pop from the right, so each list is FIFO. The envelope is::

    {"body": base64, "content-encoding": ..., "content-type": ..., "headers": {...},
     "properties": {...Celery's properties..., "delivery_info": {"exchange": "",
                    "routing_key": queue}, "priority": n, "body_encoding": "base64",
                    "delivery_tag": uuid4}}
"""

from __future__ import annotations

import json
from typing import Any

from taskframe.brokers.base import Message
from taskframe.brokers.kombu_envelope import build_envelope, open_envelope

__all__ = [
    "PRIORITY_STEPS",
    "SEP",
    "binding",
    "clamp_priority",
    "decode",
    "encode",
    "list_key",
    "list_keys",
    "mark_redelivered",
    "to_json",
    "unacked_entry",
]

SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
"""Envelope properties kombu adds; they are not part of a :class:`Message`'s properties."""


def clamp_priority(value: object) -> int:
    """kombu's reading of ``properties.priority``: an int within 0-9, 0 when unreadable."""
    if type(value) is int and 0 <= value <= 9:
        return value
    try:
        return max(0, min(9, int(str(value))))
    except ValueError:
        return 0


to_json = json.JSONEncoder(check_circular=False).encode
"""``json.dumps`` for envelopes, without the cycle check (15% of encoding one; an envelope
holds no cycles, and a header that did would still fail, with RecursionError)."""


def list_key(queue: str, priority: int) -> str:
    number = clamp_priority(priority)
    step = number - number % 3  # the largest of PRIORITY_STEPS not above the number
    return f"{queue}{SEP}{step}" if step else queue


def list_keys(queue: str) -> list[str]:
    """The queue's lists in the order kombu serves them (lowest priority number first)."""
    return [list_key(queue, step) for step in PRIORITY_STEPS]


def binding(queue: str) -> tuple[str, str]:
    """The binding set and member kombu/Celery write when they declare ``queue``."""
    return f"_kombu.binding.{queue}", f"{queue}{SEP}{SEP}{queue}"


def encode(queue: str, message: Message, priority: int | None) -> tuple[int, dict[str, Any]]:
    """The envelope for ``message`` on ``queue``, and the priority number it carries."""
    number = clamp_priority(
        priority if priority is not None else message.properties.get("priority", 0)
    )
    return number, build_envelope(queue, message, number)


def decode(raw: bytes) -> tuple[Message, dict[str, Any]]:
    """The message inside a kombu envelope; ValueError when ``raw`` is not one."""
    envelope = json.loads(raw)
    return open_envelope(envelope), envelope


def unacked_entry(envelope: dict[str, Any], queue: str, raw: bytes) -> tuple[str, bytes] | None:
    """The tag and ``unacked`` value (``[envelope, exchange, routing_key]``) kombu records for
    ``raw`` taken from ``queue``, as the receive script writes them; None without a tag."""
    properties = envelope["properties"]
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return None
    exchange, routing_key = "", queue
    info = properties.get("delivery_info")
    if isinstance(info, dict):
        if isinstance(info.get("exchange"), str):
            exchange = info["exchange"]
        if isinstance(info.get("routing_key"), str):
            routing_key = info["routing_key"]
    where = json.dumps([exchange, routing_key])[1:-1].encode("utf-8")
    return tag, b"[" + raw + b", " + where + b"]"


def mark_redelivered(envelope: dict[str, Any]) -> dict[str, Any]:
    """A copy flagged the way kombu flags a restored or requeued message."""
    copy: dict[str, Any] = json.loads(json.dumps(envelope))
    if isinstance(copy.get("headers"), dict):
        copy["headers"]["redelivered"] = True
    info = copy["properties"].get("delivery_info")
    if isinstance(info, dict):
        info["redelivered"] = True
    return copy
