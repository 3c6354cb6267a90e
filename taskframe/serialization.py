"""Message and result body encodings, byte-compatible with kombu 5.7, and body compression.

Serializers (name -> content type / content encoding):

* ``json`` -> ``application/json`` / ``utf-8``. Python ``json.dumps`` defaults (``", "`` and
  ``": "`` separators, ASCII-only output), like Celery. Types JSON lacks travel as kombu's
  ``{"__type__": <marker>, "__value__": <value>}`` objects, so a Celery peer rebuilds them:
  ``datetime``/``date``/``time`` as ISO strings, ``Decimal`` as its string, ``UUID`` as
  ``{"hex": ...}``, ``bytes`` as text (marker ``bytes``) or, when not UTF-8, base64 (marker
  ``base64``). An object with a ``__json__()`` method is encoded as what that method returns.
  A marker object with an unknown marker is left as a plain dict (kombu would refuse it).
* ``msgpack`` -> ``application/x-msgpack`` / ``binary``: ``use_bin_type=True`` on the way out
  and ``raw=False`` on the way in, exactly as kombu. Like kombu there are no extension types,
  so a ``datetime`` argument is an error under msgpack rather than a value Celery misreads.
* ``pickle`` -> ``application/x-python-serialize`` / ``binary``, protocol 4 (kombu's default).
  It is decoded only when the caller's ``accept`` lists it: unpickling runs arbitrary code.

Compression (header value -> method): ``application/x-gzip`` is a **zlib stream** (not a gzip
file), as kombu writes it; ``application/x-bz2``; ``application/x-lzma`` (an xz container).
"""

from __future__ import annotations

import base64
import bz2
import json
import lzma
import pickle
import uuid
import zlib
from collections.abc import Callable, Collection
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import msgpack

from taskframe.exceptions import ContentDisallowed, SerializationError

__all__ = [
    "CONTENT_TYPES",
    "compress",
    "content_type_for",
    "decompress",
    "dumps",
    "is_accepted",
    "loads",
]

JSON = "application/json"
MSGPACK = "application/x-msgpack"
PICKLE = "application/x-python-serialize"
PICKLE_PROTOCOL = 4

CONTENT_TYPES: dict[str, tuple[str, str]] = {
    "json": (JSON, "utf-8"),
    "msgpack": (MSGPACK, "binary"),
    "pickle": (PICKLE, "binary"),
}
"""Serializer name -> (content type, content encoding), as kombu registers them."""

_NAME_BY_TYPE = {content_type: name for name, (content_type, _) in CONTENT_TYPES.items()}
_NAME_BY_TYPE["application/x-yaml"] = "yaml"


class _JSONEncoder(json.JSONEncoder):
    """Encodes the extra types kombu's encoder knows, in kombu's marker format."""

    def default(self, o: Any) -> Any:
        reducer = getattr(o, "__json__", None)
        if reducer is not None:
            return reducer()
        if isinstance(o, datetime):
            return {"__type__": "datetime", "__value__": o.isoformat()}
        if isinstance(o, date):
            return {"__type__": "date", "__value__": o.isoformat()}
        if isinstance(o, time):
            return {"__type__": "time", "__value__": o.isoformat()}
        if isinstance(o, Decimal):
            return {"__type__": "decimal", "__value__": str(o)}
        if isinstance(o, uuid.UUID):
            return {"__type__": "uuid", "__value__": {"hex": o.hex}}
        if isinstance(o, bytes):
            try:
                return {"__type__": "bytes", "__value__": o.decode("utf-8")}
            except UnicodeDecodeError:
                return {"__type__": "base64", "__value__": base64.b64encode(o).decode("ascii")}
        raise TypeError(f"object of type {type(o).__qualname__} is not JSON serializable")


_JSON_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": lambda value: datetime.fromisoformat(value).date(),
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": lambda value: uuid.UUID(**value),
    "bytes": lambda value: value.encode("utf-8"),
    "base64": lambda value: base64.b64decode(value.encode("ascii")),
}


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        decoder = _JSON_DECODERS.get(obj["__type__"])
        if decoder is not None:
            return decoder(obj["__value__"])
    return obj


_ENCODER = _JSONEncoder()


def _json_dumps(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode("utf-8")


def _json_loads(data: bytes | str, encoding: str) -> Any:
    if isinstance(data, str):
        text = data
    else:
        text = data.decode(encoding if encoding not in ("binary", "") else "utf-8")
    # Marker objects are rare; skipping the per-object hook when none can be present keeps
    # decoding at the speed of plain json.loads.
    if "__type__" in text:
        return json.loads(text, object_hook=_json_object_hook)
    return json.loads(text)


def _msgpack_dumps(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


_DUMPERS: dict[str, Callable[[Any], bytes]] = {
    "json": _json_dumps,
    "msgpack": _msgpack_dumps,
    "pickle": _pickle_dumps,
}

_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, pickle.PicklingError)


def content_type_for(serializer: str) -> tuple[str, str]:
    """(content type, content encoding) of ``serializer``; unknown names raise."""
    try:
        return CONTENT_TYPES[serializer]
    except KeyError:
        raise SerializationError(
            f"unknown serializer {serializer!r}; taskframe knows {', '.join(CONTENT_TYPES)}"
        ) from None


def dumps(obj: Any, serializer: str) -> tuple[bytes, str, str]:
    """Encode ``obj``; returns (data, content_type, content_encoding).

    The error keeps the library's own exception as ``__cause__``; its text names the type that
    failed, which :mod:`taskframe.protocol` reuses to point at the bad argument."""
    content_type, content_encoding = content_type_for(serializer)
    try:
        data = _DUMPERS[serializer](obj)
    except (*_ENCODE_ERRORS, AttributeError) as exc:
        raise SerializationError(
            f"cannot serialize {type(obj).__qualname__} with {serializer}: {exc}"
        ) from exc
    return data, content_type, content_encoding


def is_accepted(content_type: str, accept: Collection[str]) -> bool:
    """True when ``accept`` lists ``content_type`` itself or its serializer name."""
    return content_type in accept or _NAME_BY_TYPE.get(content_type, content_type) in accept


def loads(data: bytes, content_type: str, content_encoding: str, accept: Collection[str]) -> Any:
    """Decode ``data`` if its content type is accepted.

    ``accept`` holds serializer names (``"json"``) and/or content types. A type not in it raises
    :class:`ContentDisallowed`; data that does not decode raises :class:`SerializationError`."""
    content_type = content_type or "application/data"
    if not is_accepted(content_type, accept):
        name = _NAME_BY_TYPE.get(content_type)
        label = f"{content_type!r} ({name})" if name else repr(content_type)
        raise ContentDisallowed(
            f"refusing to decode content of type {label}: accepted content is "
            f"{sorted(accept)!r}; add it to accept_content to allow it"
        )
    if isinstance(data, (memoryview, bytearray)):
        data = bytes(data)
    try:
        if content_type == JSON:
            return _json_loads(data, (content_encoding or "utf-8").lower())
        if content_type == MSGPACK:
            return msgpack.unpackb(data, raw=False)
        if content_type == PICKLE:
            return pickle.loads(data)
    except Exception as exc:
        raise SerializationError(
            f"cannot decode {len(data)} bytes of {content_type} "
            f"(encoding {content_encoding!r}): {type(exc).__name__}: {exc}"
        ) from exc
    known = ", ".join(known_type for known_type, _ in CONTENT_TYPES.values())
    raise SerializationError(
        f"no decoder for content type {content_type!r}; taskframe decodes {known}"
    )


_COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "application/x-gzip": (zlib.compress, zlib.decompress),
    "application/x-bz2": (bz2.compress, bz2.decompress),
    "application/x-lzma": (lzma.compress, lzma.decompress),
}
_COMPRESSION_ALIASES = {
    "gzip": "application/x-gzip",
    "zlib": "application/x-gzip",
    "bzip2": "application/x-bz2",
    "bzip": "application/x-bz2",
    "lzma": "application/x-lzma",
    "xz": "application/x-lzma",
}


def _compression_type(method: str) -> str:
    header = _COMPRESSION_ALIASES.get(method, method)
    if header not in _COMPRESSORS:
        known = ", ".join([*_COMPRESSION_ALIASES, *_COMPRESSORS])
        raise SerializationError(f"unknown compression {method!r}; known: {known}")
    return header


def compress(data: bytes, method: str) -> tuple[bytes, str]:
    """Compress ``data`` with ``method`` (a name or a header value); returns (data, header)."""
    header = _compression_type(method)
    return _COMPRESSORS[header][0](data), header


def decompress(data: bytes, header: str) -> bytes:
    """Undo :func:`compress`; ``header`` is the message's ``compression`` header value."""
    method = _compression_type(header)
    try:
        return _COMPRESSORS[method][1](data)
    except (zlib.error, OSError, lzma.LZMAError, ValueError, EOFError) as exc:
        raise SerializationError(
            f"cannot decompress {len(data)} bytes marked {header!r}: {exc}"
        ) from exc
