"""Celery's result meta: what a result backend stores per task, group and chord part.

Task meta keys, in the order Celery writes them: ``status``, ``result``, ``traceback``,
``children``, ``date_done``, then ``group_id`` and ``parent_id`` when set, then ``name``,
``args``, ``kwargs``, ``worker``, ``retries``, ``queue`` with ``result_extended``, and always
``task_id`` last. A failure's ``result`` is ``{"exc_type", "exc_message", "exc_module"}``.
``children`` is written as given (Celery writes ``[]`` normally and ``null`` for REVOKED).

Group meta is ``{"result": [[group_id, null], [[[task_id, null], null], ...]]}`` (a GroupResult
as nested tuples). A Redis chord part (a ``.j`` member) is ``[1, task_id, state, result]``.

Payloads compressed by Celery 5.7's ``result_compression`` start with a magic prefix naming
the method; :func:`decode_meta` undoes that, so such results stay readable.

Rebuilding an exception (:func:`exception_from_dict`) imports the named module when its
top-level package is already loaded (a client often has ``proj`` but not ``proj.errors``), and
never imports a package the process has not loaded, since a stored result may come from anyone
who can write to the store and an import runs code. The named attribute is used only when it is
an exception class; anything else becomes a :class:`RemoteTaskError`.
"""

from __future__ import annotations

import importlib
import sys
from datetime import datetime, timezone
from typing import Any

from taskframe.exceptions import RemoteTaskError, SerializationError
from taskframe.serialization import compress, content_type_for, decompress, dumps, loads
from taskframe.states import READY_STATES

__all__ = [
    "decode_chord_part",
    "decode_group_meta",
    "decode_meta",
    "encode_chord_part",
    "encode_group_meta",
    "encode_meta",
    "exception_from_dict",
    "exception_to_dict",
    "is_ready_payload",
]

COMPRESSED_MAGIC = b"\x00celery-compressed\x00"
"""Prefix of a compressed result payload: magic, compression content type, NUL, data."""

_EXTENDED_KEYS = ("name", "args", "kwargs", "worker", "retries", "queue")


def _serializable(value: Any, serializer: str) -> Any:
    """``value`` if ``serializer`` can carry it, else its repr: an exception's args must never
    fail the store of the failure itself."""
    try:
        dumps(value, serializer)
    except SerializationError:
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__qualname__}>"
    return value


def exception_to_dict(exc: BaseException, *, serializer: str = "json") -> dict[str, Any]:
    """Celery's exception dict: class qualname, args (each one the serializer cannot carry
    replaced by its repr), module."""
    cls = type(exc)
    return {
        "exc_type": cls.__qualname__,
        "exc_message": [_serializable(arg, serializer) for arg in exc.args],
        "exc_module": cls.__module__,
    }


def _find_class(module_name: str, qualname: str) -> Any:
    module = sys.modules.get(module_name)
    if module is None:
        if module_name.partition(".")[0] not in sys.modules:
            raise LookupError(f"package of {module_name!r} is not loaded here")
        module = importlib.import_module(module_name)
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def exception_from_dict(data: dict[str, Any] | BaseException) -> BaseException:
    """Rebuild the exception a result dict describes.

    A class that cannot be found, is not an exception, or refuses the stored args gives
    :class:`RemoteTaskError` carrying module, type and message. An exception object (pickle
    results) is returned as is."""
    if isinstance(data, BaseException):
        return data
    if not isinstance(data, dict) or not isinstance(data.get("exc_type"), str):
        return RemoteTaskError("", "UnknownError", repr(data))
    exc_type: str = data["exc_type"]
    module_name = data.get("exc_module") or "builtins"
    message = data.get("exc_message", [])
    args = list(message) if isinstance(message, (list, tuple)) else [message]
    try:
        cls = _find_class(str(module_name), exc_type)
    except Exception:
        return RemoteTaskError(str(module_name), exc_type, message)
    if not isinstance(cls, type) or not issubclass(cls, BaseException):
        return RemoteTaskError(str(module_name), exc_type, message)
    try:
        return cls(*args)
    except Exception:
        return RemoteTaskError(str(module_name), exc_type, message)


def _iso_utc(moment: datetime | None) -> str:
    if moment is None:
        moment = datetime.now(timezone.utc)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.isoformat()


def _encode(value: Any, serializer: str, compression: str | None, what: str) -> bytes:
    try:
        data = dumps(value, serializer)[0]
    except SerializationError as exc:
        raise SerializationError(f"cannot store {what}: {exc}") from exc.__cause__
    if compression:
        body, header = compress(data, compression)
        data = b"".join([COMPRESSED_MAGIC, header.encode("utf-8"), b"\x00", body])
    return data


def _decode(payload: bytes | str, serializer: str) -> Any:
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    if payload.startswith(COMPRESSED_MAGIC):
        header, _, body = payload[len(COMPRESSED_MAGIC) :].partition(b"\x00")
        payload = decompress(body, header.decode("utf-8"))
    content_type, content_encoding = content_type_for(serializer)
    return loads(payload, content_type, content_encoding, (serializer,))


def encode_meta(
    task_id: str,
    state: str,
    result: Any,
    *,
    traceback: str | None = None,
    children: list[Any] | None = None,
    date_done: datetime | None = None,
    group_id: str | None = None,
    parent_id: str | None = None,
    extended: dict[str, Any] | None = None,
    serializer: str = "json",
    compression: str | None = None,
) -> bytes:
    """The stored meta of one task, byte for byte as Celery's backend writes it.

    ``date_done`` defaults to now (UTC) for ready states and is null otherwise. ``extended``
    holds the ``result_extended`` fields; extra keys in it follow Celery's six."""
    meta: dict[str, Any] = {
        "status": state,
        "result": (
            exception_to_dict(result, serializer=serializer)
            if isinstance(result, BaseException)
            else result
        ),
        "traceback": traceback,
        "children": children,
        "date_done": _iso_utc(date_done) if state in READY_STATES else None,
    }
    if group_id:
        meta["group_id"] = group_id
    if parent_id:
        meta["parent_id"] = parent_id
    if extended is not None:
        for key in _EXTENDED_KEYS:
            meta[key] = extended.get(key)
        for key, value in extended.items():
            meta.setdefault(key, value)
    meta["task_id"] = task_id
    return _encode(meta, serializer, compression, f"the {state} result of task {task_id}")


def decode_meta(payload: bytes, serializer: str = "json") -> dict[str, Any]:
    """The meta dict as stored (a failure's ``result`` stays a dict)."""
    meta = _decode(payload, serializer)
    if not isinstance(meta, dict) or "status" not in meta:
        raise SerializationError(
            f"stored result is a {type(meta).__name__} without 'status', not task meta"
        )
    return meta


def is_ready_payload(payload: bytes, serializer: str = "json") -> bool:
    """True when the stored meta is in a ready state (the predicate for backend waits)."""
    return decode_meta(payload, serializer)["status"] in READY_STATES


def encode_group_meta(group_id: str, result_ids: list[str], serializer: str = "json") -> bytes:
    """A saved GroupResult: ``{"result": [[group_id, None], [[[id, None], None], ...]]}``."""
    members = [[[task_id, None], None] for task_id in result_ids]
    return _encode({"result": [[group_id, None], members]}, serializer, None, f"group {group_id}")


def decode_group_meta(payload: bytes, serializer: str = "json") -> tuple[str, list[str]]:
    """(group id, member ids) of a saved GroupResult; a nested group member gives its id."""
    meta = _decode(payload, serializer)
    try:
        head, members = meta["result"]
        group_id = head[0] if isinstance(head, (list, tuple)) else head
        ids = [
            member[0][0] if isinstance(member[0], (list, tuple)) else member[0]
            for member in members
        ]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SerializationError(
            f"stored group meta has an unexpected shape: {meta!r:.200}"
        ) from exc
    return str(group_id), [str(task_id) for task_id in ids]


def encode_chord_part(task_id: str, state: str, result: Any, serializer: str = "json") -> bytes:
    """One chord header outcome as Celery's Redis ``.j`` member: ``[1, task_id, state, result]``."""
    if isinstance(result, BaseException):
        result = exception_to_dict(result, serializer=serializer)
    return _encode([1, task_id, state, result], serializer, None, f"chord part {task_id}")


def decode_chord_part(payload: bytes, serializer: str = "json") -> tuple[str, str, Any]:
    """(task id, state, result) of a ``.j`` member; an exception result stays a dict."""
    part = _decode(payload, serializer)
    if not isinstance(part, (list, tuple)) or len(part) != 4:
        raise SerializationError(f"chord part is not [1, task_id, state, result]: {part!r:.200}")
    _, task_id, state, result = part
    return str(task_id), str(state), result
