"""Result meta in Celery's shape: key order, dates, exceptions, groups and chord parts."""

from __future__ import annotations

import importlib
import json
import sys
import zlib
from datetime import datetime, timezone

import pytest

from taskframe import states
from taskframe.exceptions import MaxRetriesExceededError, RemoteTaskError, SerializationError
from taskframe.result_meta import (
    COMPRESSED_MAGIC,
    decode_chord_part,
    decode_group_meta,
    decode_meta,
    encode_chord_part,
    encode_group_meta,
    encode_meta,
    exception_from_dict,
    exception_to_dict,
    is_ready_payload,
)

DONE = datetime(2026, 11, 22, 18, 14, 43, 298508, tzinfo=timezone.utc)


class Outer:
    class InnerError(Exception):
        pass


def test_success_meta_is_byte_for_byte_celerys() -> None:
    payload = encode_meta(
        "03bcbef4-e684-4671-8eab-0eb862fd8222", states.SUCCESS, 4, children=[], date_done=DONE
    )

    assert payload == (
        b'{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], '
        b'"date_done": "2026-11-22T18:14:43.298508+00:00", '
        b'"task_id": "03bcbef4-e684-4671-8eab-0eb862fd8222"}'
    )


def test_optional_keys_come_in_celerys_order() -> None:
    payload = encode_meta(
        "t",
        states.SUCCESS,
        4,
        children=[[["c", None], None]],
        group_id="g",
        parent_id="p",
        extended={
            "name": "wire.add",
            "args": [2, 2],
            "kwargs": {},
            "worker": "w@h",
            "retries": 0,
            "queue": "q",
        },
    )

    meta = json.loads(payload)

    assert list(meta) == [
        "status",
        "result",
        "traceback",
        "children",
        "date_done",
        "group_id",
        "parent_id",
        "name",
        "args",
        "kwargs",
        "worker",
        "retries",
        "queue",
        "task_id",
    ]
    assert meta["children"] == [[["c", None], None]]
    assert datetime.fromisoformat(meta["date_done"]).utcoffset() is not None


def test_unready_states_have_no_date_done() -> None:
    meta = decode_meta(encode_meta("t", states.RETRY, None, traceback="tb", date_done=DONE))

    assert meta["date_done"] is None
    assert meta["traceback"] == "tb"
    assert "group_id" not in meta and "parent_id" not in meta


def test_exception_result_becomes_the_exc_dict() -> None:
    meta = decode_meta(encode_meta("t", states.FAILURE, ValueError("boom"), traceback="tb"))

    assert meta["result"] == {
        "exc_type": "ValueError",
        "exc_message": ["boom"],
        "exc_module": "builtins",
    }
    assert meta["status"] == "FAILURE"


def test_exception_dict_names_nested_class_and_reprs_unserializable_args() -> None:
    opaque = object()

    data = exception_to_dict(Outer.InnerError("x", opaque, 3))

    assert data == {
        "exc_type": "Outer.InnerError",
        "exc_message": ["x", repr(opaque), 3],
        "exc_module": __name__,
    }


def test_exception_round_trips() -> None:
    rebuilt = exception_from_dict(exception_to_dict(MaxRetriesExceededError("too many", 3)))

    assert isinstance(rebuilt, MaxRetriesExceededError)
    assert rebuilt.args == ("too many", 3)


def test_nested_exception_class_is_found() -> None:
    rebuilt = exception_from_dict(exception_to_dict(Outer.InnerError("x")))

    assert type(rebuilt) is Outer.InnerError


def test_exception_module_is_imported_when_its_package_is_loaded() -> None:
    importlib.import_module("xml")

    rebuilt = exception_from_dict(
        {"exc_type": "NotFoundErr", "exc_message": ["bad"], "exc_module": "xml.dom"}
    )

    assert type(rebuilt).__module__ == "xml.dom"
    assert type(rebuilt).__name__ == "NotFoundErr"
    assert rebuilt.args == ("bad",)


def test_unknown_exception_class_becomes_remote_task_error() -> None:
    rebuilt = exception_from_dict(
        {"exc_type": "GoneError", "exc_message": ["lost"], "exc_module": "nowhere.at.all"}
    )

    assert isinstance(rebuilt, RemoteTaskError)
    assert (rebuilt.exc_module, rebuilt.exc_type, rebuilt.exc_message) == (
        "nowhere.at.all",
        "GoneError",
        ["lost"],
    )
    assert str(rebuilt) == "nowhere.at.all.GoneError: lost"


def test_packages_not_loaded_are_never_imported() -> None:
    assert "this" not in sys.modules

    rebuilt = exception_from_dict({"exc_type": "Zen", "exc_message": [], "exc_module": "this"})

    assert isinstance(rebuilt, RemoteTaskError)
    assert "this" not in sys.modules


def test_non_exception_objects_are_never_called() -> None:
    rebuilt = exception_from_dict(
        {"exc_type": "system", "exc_message": ["touch /tmp/pwned"], "exc_module": "os"}
    )

    assert isinstance(rebuilt, RemoteTaskError)
    assert rebuilt.exc_type == "system"


def test_exception_refusing_its_args_becomes_remote_task_error() -> None:
    rebuilt = exception_from_dict(
        {"exc_type": "UnicodeDecodeError", "exc_message": ["one"], "exc_module": "builtins"}
    )

    assert isinstance(rebuilt, RemoteTaskError)


def test_is_ready_payload() -> None:
    assert is_ready_payload(encode_meta("t", states.SUCCESS, 1))
    assert is_ready_payload(encode_meta("t", states.REVOKED, None))
    assert not is_ready_payload(encode_meta("t", states.STARTED, None))
    assert not is_ready_payload(encode_meta("t", states.RETRY, None))


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
def test_meta_round_trips_in_each_serializer(serializer: str) -> None:
    payload = encode_meta("t", states.FAILURE, KeyError("k"), date_done=DONE, serializer=serializer)

    meta = decode_meta(payload, serializer)

    assert meta["result"] == {
        "exc_type": "KeyError",
        "exc_message": ["k"],
        "exc_module": "builtins",
    }
    assert meta["date_done"] == "2026-11-22T18:14:43.298508+00:00"


def test_compressed_meta_carries_its_method() -> None:
    payload = encode_meta("t", states.SUCCESS, "x" * 100, compression="gzip")

    assert payload.startswith(COMPRESSED_MAGIC + b"application/x-gzip\x00")
    assert zlib.decompress(payload.split(b"\x00", 3)[3])[:20] == b'{"status": "SUCCESS"'
    assert decode_meta(payload)["result"] == "x" * 100


def test_unserializable_result_is_named() -> None:
    with pytest.raises(SerializationError, match="cannot store the SUCCESS result of task t"):
        encode_meta("t", states.SUCCESS, object())


def test_decode_meta_refuses_non_meta() -> None:
    with pytest.raises(SerializationError, match="without 'status'"):
        decode_meta(b"[1, 2]")


def test_group_meta_is_celerys_nested_tuples() -> None:
    payload = encode_group_meta("g", ["a", "b"], "json")

    assert json.loads(payload) == {
        "result": [["g", None], [[["a", None], None], [["b", None], None]]]
    }
    assert decode_group_meta(payload, "json") == ("g", ["a", "b"])


def test_group_meta_with_bad_shape_raises() -> None:
    with pytest.raises(SerializationError, match="unexpected shape"):
        decode_group_meta(b'{"result": 3}', "json")


def test_chord_part_is_celerys_j_member() -> None:
    assert encode_chord_part("t", states.SUCCESS, 2, "json") == b'[1, "t", "SUCCESS", 2]'

    task_id, state, result = decode_chord_part(
        encode_chord_part("t", states.FAILURE, ValueError("x"), "json"), "json"
    )

    assert (task_id, state) == ("t", "FAILURE")
    assert result == {"exc_type": "ValueError", "exc_message": ["x"], "exc_module": "builtins"}


def test_chord_part_with_bad_shape_raises() -> None:
    with pytest.raises(SerializationError, match=r"not \[1, task_id, state, result\]"):
        decode_chord_part(b'[1, "t"]', "json")
