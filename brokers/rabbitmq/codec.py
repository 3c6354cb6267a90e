"""Basic properties and header tables encoded for publishing, without pika's per-value calls.

pika encodes a Celery message's twenty-odd headers in about 11 µs, a third of what a publish
costs once its frames go out in one write (see :mod:`.connection`); :class:`Properties` encodes
them in a few. The wire is the same as pika's: strings as ``S``, booleans ``t``, integers ``I``
(32 bits) or ``l`` (64), floats ``d`` (what py-amqp writes), ``None`` as ``V``, dicts ``F``,
lists and tuples ``A``, bytes ``x``; anything else (``Decimal``, ``datetime``) is handed to
pika's own encoder, so nothing pika could send is refused.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping
from typing import Any

import pika
import pika.data
import pika.exceptions

__all__ = ["Properties", "encode_table"]

_INT32 = struct.Struct(">cI")
_SIGNED32 = struct.Struct(">ci")
_SIGNED64 = struct.Struct(">cq")
_DOUBLE = struct.Struct(">cd")
_LENGTH = struct.Struct(">I")
_FLAGS = struct.Struct(">H")
_TIMESTAMP = struct.Struct(">Q")

_STRING_FIELDS = (
    ("correlation_id", 1 << 10),
    ("reply_to", 1 << 9),
    ("expiration", 1 << 8),
    ("message_id", 1 << 7),
)
_TAIL_FIELDS = (
    ("type", 1 << 5),
    ("user_id", 1 << 4),
    ("app_id", 1 << 3),
    ("cluster_id", 1 << 2),
)


class Properties(pika.BasicProperties):  # type: ignore[misc]  # pika's classes are untyped
    """pika's basic properties with a faster ``encode`` (flags and field order per AMQP 0-9-1,
    as pika writes them)."""

    def encode(self) -> list[bytes]:
        flags = 0
        pieces = [b""]
        if self.content_type is not None:
            flags |= 1 << 15
            pieces.append(_short_string(self.content_type))
        if self.content_encoding is not None:
            flags |= 1 << 14
            pieces.append(_short_string(self.content_encoding))
        if self.headers is not None:
            flags |= 1 << 13
            pieces.append(encode_table(self.headers))
        if self.delivery_mode is not None:
            flags |= 1 << 12
            pieces.append(bytes((self.delivery_mode,)))
        if self.priority is not None:
            flags |= 1 << 11
            pieces.append(bytes((self.priority,)))
        flags |= self._strings(pieces, _STRING_FIELDS)
        if self.timestamp is not None:
            flags |= 1 << 6
            pieces.append(_TIMESTAMP.pack(self.timestamp))
        flags |= self._strings(pieces, _TAIL_FIELDS)
        pieces[0] = _FLAGS.pack(flags)
        return pieces

    def _strings(self, pieces: list[bytes], fields: tuple[tuple[str, int], ...]) -> int:
        flags = 0
        for name, flag in fields:
            value = getattr(self, name)
            if value is not None:
                flags |= flag
                pieces.append(_short_string(value))
        return flags


def encode_table(table: Mapping[str, Any]) -> bytes:
    """An AMQP field table: its length, then each key as a short string and its value."""
    body = b"".join([_key(key) + _value(value) for key, value in table.items()])
    return _LENGTH.pack(len(body)) + body


@functools.lru_cache(maxsize=1024)
def _key(key: str) -> bytes:
    """A table key: header names repeat from message to message, so each is encoded once."""
    return _short_string(key)


def _short_string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    if len(data) > 255:
        raise pika.exceptions.ShortStringTooLong(data)
    return bytes((len(data),)) + data


def _value(value: Any) -> bytes:
    """One field value, by its exact type; subclasses and rarer types take the long way."""
    return _ENCODERS.get(type(value), _other)(value)


def _string(value: str) -> bytes:
    data = value.encode()
    return _INT32.pack(b"S", len(data)) + data


def _integer(value: int) -> bytes:
    if -(1 << 31) <= value < 1 << 31:
        return _SIGNED32.pack(b"I", value)
    return _SIGNED64.pack(b"l", value)


def _array(value: list[Any] | tuple[Any, ...]) -> bytes:
    items = b"".join([_value(item) for item in value])
    return _INT32.pack(b"A", len(items)) + items


def _other(value: Any) -> bytes:
    """Subclasses of the common types (a ``bool`` is an ``int``: checked first), then pika's
    own encoder for ``Decimal``, ``datetime`` and whatever else it knows."""
    for kind, encode in _ENCODERS.items():
        if isinstance(value, kind):
            return encode(value)
    pieces: list[bytes] = []
    pika.data.encode_value(pieces, value)
    return b"".join(pieces)


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    str: _string,
    type(None): lambda _value: b"V",
    bool: lambda value: b"t\x01" if value else b"t\x00",
    int: _integer,
    float: lambda value: _DOUBLE.pack(b"d", value),
    dict: lambda value: b"F" + encode_table(value),
    list: _array,
    tuple: _array,
    bytes: lambda value: _INT32.pack(b"x", len(value)) + value,
}
"""Encoders by exact type, as pika types values; ``bool`` before ``int`` for :func:`_other`."""
