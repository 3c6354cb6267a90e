"""kombu's SQS message body, kept private to the SQS store.

``MessageBody`` is base64 of the JSON envelope kombu writes on every virtual transport::

    {"body": base64(serialized body), "content-encoding": ..., "content-type": ...,
     "headers": {...}, "properties": {...Celery's properties..., "delivery_info":
     {"exchange": "", "routing_key": queue}, "priority": n, "body_encoding": "base64",
     "delivery_tag": uuid4}}

No SQS message attributes are used. taskframe adds one envelope property, ``taskframe_due``
(unix time), only to messages delayed past SQS's 900-second limit; dead-letter records carry
``x-death-*`` headers. Both are removed before a :class:`Message` reaches the caller.

Also here: the 256 KiB size check and the split of a publish into batch calls.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from taskframe.brokers.base import DeadLetter, Message
from taskframe.brokers.kombu_envelope import build_envelope, open_envelope
from taskframe.exceptions import BrokerError

__all__ = [
    "DEATH_HEADERS",
    "DUE",
    "MAX_BATCH",
    "MAX_MESSAGE_SIZE",
    "body_of",
    "check_size",
    "chunks",
    "dead_letter_of",
    "decode",
    "encode",
]

log = logging.getLogger(__name__)

DUE = "taskframe_due"
DEATH_HEADERS = ("x-death-id", "x-death-reason", "x-death-queue", "x-death-time")
MAX_MESSAGE_SIZE = 262144
"""Bytes of ``MessageBody`` SQS takes (256 KiB)."""
MAX_BATCH = 10
"""Entries per SQS batch call."""
_BASE64 = re.compile(rb"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")


def encode(
    queue: str, message: Message, priority: int | None, due: float | None = None
) -> dict[str, Any]:
    """The envelope kombu would write for ``message`` published to ``queue`` (its
    taskframe/Celery name, not the SQS name)."""
    chosen = priority if priority is not None else message.properties.get("priority")
    clean = message
    if DUE in message.properties:
        properties = {key: value for key, value in message.properties.items() if key != DUE}
        clean = Message(
            message.body,
            message.headers,
            properties,
            message.content_type,
            message.content_encoding,
        )
    extra = {DUE: due} if due is not None else None
    return build_envelope(queue, clean, int(chosen) if chosen is not None else 0, extra)


def body_of(envelope: dict[str, Any]) -> str:
    """The SQS ``MessageBody``: base64 of the JSON envelope (kombu's default)."""
    return base64.b64encode(json.dumps(envelope).encode("utf-8")).decode("ascii")


def _unwrap(text: str) -> bytes:
    """The JSON inside ``text``: base64-decoded when it is clean base64 of UTF-8 text (what
    kombu sends by default), else ``text`` itself (kombu's ``sqs_base64_encoding=False``)."""
    raw = text.encode("utf-8")
    candidate = raw.strip()
    if _BASE64.fullmatch(candidate) is None:
        return raw
    try:
        decoded = base64.b64decode(candidate, validate=True)
        decoded.decode("utf-8")
    except (binascii.Error, ValueError):
        return raw
    return decoded


def decode(text: str) -> tuple[Message, dict[str, Any]]:
    """The message inside an SQS ``MessageBody``; ValueError when it is not a kombu envelope."""
    envelope = json.loads(_unwrap(text))
    message = open_envelope(envelope, drop_properties=(DUE,), drop_headers=DEATH_HEADERS)
    return message, envelope


def check_size(body: str, queue: str) -> None:
    size = len(body)
    if size > MAX_MESSAGE_SIZE:
        raise BrokerError(
            f"message for SQS queue {queue!r} is {size} bytes once encoded (base64 of the "
            f"JSON envelope), over the SQS limit of {MAX_MESSAGE_SIZE} bytes (256 KiB); keep "
            "large payloads elsewhere (S3, a database) and send a reference"
        )


def chunks(entries: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Batches of at most 10 entries and 256 KiB of bodies."""
    chunk: list[dict[str, Any]] = []
    total = 0
    for entry in entries:
        size = len(entry["MessageBody"])
        if chunk and (len(chunk) == MAX_BATCH or total + size > MAX_MESSAGE_SIZE):
            yield chunk
            chunk, total = [], 0
        chunk.append(entry)
        total += size
    if chunk:
        yield chunk


def dead_letter_of(text: str) -> DeadLetter | None:
    """The record in a dead-letter ``MessageBody``; None (logged) when it is not one."""
    try:
        message, envelope = decode(text)
        headers = envelope["headers"]
        return DeadLetter(
            id=str(headers["x-death-id"]),
            queue=str(headers["x-death-queue"]),
            reason=str(headers["x-death-reason"]),
            message=message,
            failed_at=float(headers["x-death-time"]),
        )
    except (ValueError, KeyError, TypeError):
        log.error("unreadable SQS dead-letter record: %r", text[:200])
        return None
