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

import base64
import binascii
import json
import uuid
from typing import Any

from taskframe.brokers.base import Message

__all__ = [
    "KOMBU_PROPERTIES",
    "PRIORITY_STEPS",
    "SEP",
    "binding",
    "clamp_priority",
    "decode",
    "encode",
    "list_key",
    "list_keys",
    "mark_redelivered",
]

SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_PROPERTIES = ("delivery_info", "body_encoding", "delivery_tag")
"""Envelope properties kombu adds; they are not part of a :class:`Message`'s properties."""


def clamp_priority(value: object) -> int:
    """kombu's reading of ``properties.priority``: an int within 0-9, 0 when unreadable."""
    try:
        return max(0, min(9, int(str(value))))
    except ValueError:
        return 0


def list_key(queue: str, priority: int) -> str:
    step = max(step for step in PRIORITY_STEPS if step <= clamp_priority(priority))
    return f"{queue}{SEP}{step}" if step else queue


def list_keys(queue: str) -> list[str]:
    """The queue's lists in the order kombu serves them (lowest priority number first)."""
    return [list_key(queue, step) for step in PRIORITY_STEPS]


def binding(queue: str) -> tuple[str, str]:
    """The binding set and member kombu/Celery write when they declare ``queue``."""
    return f"_kombu.binding.{queue}", f"{queue}{SEP}{SEP}{queue}"


def encode(queue: str, message: Message, priority: int | None) -> tuple[int, dict[str, Any]]:
    """The envelope for ``message`` on ``queue``, and the priority number it carries."""
    properties = {
        key: value
        for key, value in message.properties.items()
        if key not in KOMBU_PROPERTIES and key != "priority"
    }
    number = clamp_priority(
        priority if priority is not None else message.properties.get("priority", 0)
    )
    properties["delivery_info"] = {"exchange": "", "routing_key": queue}
    properties["priority"] = number
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = str(uuid.uuid4())
    envelope = {
        "body": base64.b64encode(message.body).decode("ascii"),
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": dict(message.headers),
        "properties": properties,
    }
    return number, envelope


def decode(raw: bytes) -> tuple[Message, dict[str, Any]]:
    """The message inside a kombu envelope; ValueError when ``raw`` is not one."""
    envelope = json.loads(raw)
    if not isinstance(envelope, dict) or not isinstance(envelope.get("properties"), dict):
        raise ValueError("not a kombu envelope")
    headers = envelope.get("headers") or {}
    if not isinstance(headers, dict):
        raise ValueError("envelope headers are not an object")
    envelope_properties: dict[str, Any] = envelope["properties"]
    body = envelope.get("body", "")
    if envelope_properties.get("body_encoding") == "base64":
        try:
            data = base64.b64decode(str(body), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"body is not base64: {exc}") from exc
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = json.dumps(body).encode("utf-8")
    properties = {
        key: value for key, value in envelope_properties.items() if key not in KOMBU_PROPERTIES
    }
    message = Message(
        body=data,
        headers=headers,
        properties=properties,
        content_type=str(envelope.get("content-type", "application/json")),
        content_encoding=str(envelope.get("content-encoding", "utf-8")),
    )
    return message, envelope


def mark_redelivered(envelope: dict[str, Any]) -> dict[str, Any]:
    """A copy flagged the way kombu flags a restored or requeued message."""
    copy: dict[str, Any] = json.loads(json.dumps(envelope))
    if isinstance(copy.get("headers"), dict):
        copy["headers"]["redelivered"] = True
    info = copy["properties"].get("delivery_info")
    if isinstance(info, dict):
        info["redelivered"] = True
    return copy
