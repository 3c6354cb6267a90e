"""kombu's JSON envelope, shared by the stores where kombu emulates AMQP (Redis, SQS).

::

    {"body": base64(serialized body), "content-encoding": ..., "content-type": ...,
     "headers": {...}, "properties": {...Celery's properties..., "delivery_info":
     {"exchange": "", "routing_key": queue}, "priority": n, "body_encoding": "base64",
     "delivery_tag": uuid4}}

The kombu-only properties (``delivery_info``, ``body_encoding``, ``delivery_tag``) belong to
the envelope, not to the :class:`Message`: they are added here on the way in and dropped on
the way out.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping
from typing import Any

from taskframe.brokers.base import Message
from taskframe.protocol import new_id

__all__ = ["KOMBU_PROPERTIES", "build_envelope", "open_envelope"]

KOMBU_PROPERTIES = frozenset({"delivery_info", "body_encoding", "delivery_tag"})
_REPLACED = KOMBU_PROPERTIES | {"priority"}
"""Message properties the envelope writes itself."""


def build_envelope(
    queue: str,
    message: Message,
    priority: int,
    extra_properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The envelope kombu would write for ``message`` published to ``queue`` (it shares the
    message's headers: encode it, do not change it)."""
    properties = {key: value for key, value in message.properties.items() if key not in _REPLACED}
    properties["delivery_info"] = {"exchange": "", "routing_key": queue}
    properties["priority"] = priority
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = new_id()
    if extra_properties:
        properties.update(extra_properties)
    return {
        "body": base64.b64encode(message.body).decode("ascii"),
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": message.headers,
        "properties": properties,
    }


def open_envelope(
    envelope: Any,
    *,
    drop_properties: Collection[str] = (),
    drop_headers: Collection[str] = (),
) -> Message:
    """The message inside a decoded envelope; ValueError when it is not a kombu envelope."""
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
        key: value
        for key, value in envelope_properties.items()
        if key not in KOMBU_PROPERTIES and key not in drop_properties
    }
    if drop_headers:
        headers = {key: value for key, value in headers.items() if key not in drop_headers}
    return Message(
        body=data,
        headers=headers,
        properties=properties,
        content_type=str(envelope.get("content-type", "application/json")),
        content_encoding=str(envelope.get("content-encoding", "utf-8")),
    )
