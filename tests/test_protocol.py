"""Protocol 2 messages built and parsed field by field; protocol 1 parsed; bad input named."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from taskframe.brokers.base import Message
from taskframe.exceptions import ContentDisallowed, ProtocolError, SerializationError
from taskframe.protocol import REPR_MAXSIZE, TaskMessage, decode_task, encode_task, signature_dict
from taskframe.serialization import compress, dumps

CELERY_HEADER_ORDER = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
]
EMPTY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Foo:
    pass


def add_call(**fields: Any) -> TaskMessage:
    base: dict[str, Any] = {"id": "t-1", "task": "proj.add", "args": [2, 2], "kwargs": {}}
    return TaskMessage(**{**base, **fields})


def raw_message(headers: dict[str, Any], body: Any, **properties: Any) -> Message:
    return Message(body=json.dumps(body).encode(), headers=headers, properties=properties)


def test_delay_message_has_celerys_headers_properties_and_body() -> None:
    message = encode_task(add_call(reply_to="oid-1"))

    assert list(message.headers) == CELERY_HEADER_ORDER
    assert message.headers == {
        "lang": "py",
        "task": "proj.add",
        "id": "t-1",
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": "t-1",
        "parent_id": None,
        "argsrepr": "(2, 2)",
        "kwargsrepr": "{}",
        "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    assert message.properties == {
        "correlation_id": "t-1",
        "reply_to": "oid-1",
        "delivery_mode": 2,
        "priority": 0,
    }
    assert message.body == (
        b'[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    )
    assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")


def test_eta_expires_and_expiration_property() -> None:
    eta = datetime(2026, 11, 22, 18, 10, 55, tzinfo=timezone.utc)
    expires = datetime.now(timezone.utc) + timedelta(seconds=60)

    message = encode_task(add_call(eta=eta, expires=expires, priority=5))

    assert message.headers["eta"] == "2026-11-22T18:10:55.000000+00:00"
    assert message.headers["expires"] == expires.isoformat(timespec="microseconds")
    assert list(message.properties) == [
        "correlation_id",
        "reply_to",
        "delivery_mode",
        "expiration",
        "priority",
    ]
    assert 55_000 <= int(message.properties["expiration"]) <= 60_000
    assert message.properties["priority"] == 5


def test_naive_and_offset_times_are_sent_as_utc() -> None:
    naive = datetime(2026, 1, 1, 12, 0, 0, 5)
    paris = datetime(2026, 1, 1, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))

    message = encode_task(add_call(eta=naive, expires=paris))

    assert message.headers["eta"] == "2026-01-01T12:00:00.000005+00:00"
    assert message.headers["expires"] == "2026-01-01T12:00:00.000005+00:00"
    assert message.properties["expiration"] == "0"


def test_given_reprs_ids_and_extra_headers_are_kept() -> None:
    task = add_call(
        args=[7, 8],
        kwargs={"z": 1},
        argsrepr="[7, 8]",
        root_id="root",
        parent_id="parent",
        correlation_id="corr",
        origin="node@host",
        ignore_result=None,
        extra_headers={"celery_beat_task": True},
    )

    message = encode_task(task, compression="gzip")

    assert message.headers["argsrepr"] == "[7, 8]"
    assert message.headers["kwargsrepr"] == "{'z': 1}"
    assert (message.headers["root_id"], message.headers["parent_id"]) == ("root", "parent")
    assert message.headers["origin"] == "node@host"
    assert message.headers["ignore_result"] is None
    assert list(message.headers)[-2:] == ["celery_beat_task", "compression"]
    assert message.headers["compression"] == "application/x-gzip"
    assert message.properties["correlation_id"] == "corr"
    assert message.properties["reply_to"] == ""


def test_long_reprs_are_cut_like_celery() -> None:
    message = encode_task(add_call(args=["x" * 5000], kwargs={"k": "y" * 5000}))

    assert len(message.headers["argsrepr"]) == REPR_MAXSIZE
    assert message.headers["argsrepr"].endswith("...")
    assert len(message.headers["kwargsrepr"]) == REPR_MAXSIZE


def test_embed_carries_signatures() -> None:
    callback = signature_dict("proj.mul", [10])
    step = signature_dict("proj.add", (4,), options={"task_id": "t-3"})
    body_sig = signature_dict("proj.tsum", options={"task_id": "t-9", "group_id": "g"})

    message = encode_task(
        add_call(callbacks=[callback], errbacks=[callback], chain=[step], chord=body_sig)
    )

    assert json.loads(message.body)[2] == {
        "callbacks": [callback],
        "errbacks": [callback],
        "chain": [step],
        "chord": body_sig,
    }


def test_signature_dict_shape() -> None:
    assert signature_dict("proj.mul", (3,), {"k": 1}, {"queue": "q"}, "chord", True) == {
        "task": "proj.mul",
        "args": [3],
        "kwargs": {"k": 1},
        "options": {"queue": "q"},
        "subtask_type": "chord",
        "immutable": True,
    }


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
@pytest.mark.parametrize("compression", [None, "gzip", "bzip2"])
def test_encode_decode_round_trip(serializer: str, compression: str | None) -> None:
    task = add_call(
        args=[1, "two", [3]],
        kwargs={"four": {"five": 5}},
        callbacks=[signature_dict("proj.mul", [10])],
        chain=[signature_dict("proj.add", [4], options={"task_id": "t-3"})],
        eta=datetime(2026, 5, 6, 7, 8, 9, 10, tzinfo=timezone.utc),
        expires=datetime(2026, 5, 6, 8, 8, 9, 10, tzinfo=timezone.utc),
        retries=2,
        timelimit=(30.0, 20.5),
        parent_id="p",
        group="g",
        group_index=3,
        shadow="nice name",
        reply_to="oid",
        priority=7,
        stamped_headers=["s"],
        stamps={"s": 1},
        extra_headers={"user": "value"},
    )

    decoded = decode_task(
        encode_task(task, serializer=serializer, compression=compression), [serializer]
    )

    assert decoded.args == task.args
    assert decoded.kwargs == task.kwargs
    assert decoded.callbacks == task.callbacks
    assert decoded.chain == task.chain
    assert decoded.errbacks is None and decoded.chord is None
    assert (decoded.eta, decoded.expires) == (task.eta, task.expires)
    assert (decoded.retries, decoded.timelimit) == (2, (30.0, 20.5))
    assert (decoded.root_id, decoded.parent_id) == ("t-1", "p")
    assert (decoded.group, decoded.group_index, decoded.shadow) == ("g", 3, "nice name")
    assert (decoded.reply_to, decoded.correlation_id, decoded.priority) == ("oid", "t-1", 7)
    assert (decoded.argsrepr, decoded.kwargsrepr) == ("(1, 'two', [3])", "{'four': {'five': 5}}")
    assert (decoded.stamped_headers, decoded.stamps) == (["s"], {"s": 1})
    assert decoded.extra_headers == {"user": "value"}
    assert decoded.content_type == dumps(None, serializer)[1]


def test_bad_argument_is_named_by_parameter_name() -> None:
    task = add_call(args=[1, Foo()])

    with pytest.raises(SerializationError) as raised:
        encode_task(task, arg_names=["x", "y"])

    assert str(raised.value).startswith(
        "cannot serialize argument 'y' of task 'proj.add' with json: "
        "object of type Foo is not JSON serializable"
    )


def test_bad_argument_is_named_by_position_or_key() -> None:
    with pytest.raises(SerializationError, match=r"positional argument 1 of task 'proj.add'"):
        encode_task(add_call(args=[1, {2}]))
    with pytest.raises(
        SerializationError, match=r"argument 'when' of task 'proj.add' with msgpack"
    ):
        encode_task(add_call(kwargs={"when": datetime(2026, 1, 1)}), serializer="msgpack")


def test_bad_signature_is_named() -> None:
    task = add_call(chord=signature_dict("proj.tsum", [Foo()]))

    with pytest.raises(SerializationError, match=r"cannot serialize the chord of task 'proj.add'"):
        encode_task(task)


def test_minimal_message_decodes_with_defaults() -> None:
    message = raw_message({"task": "proj.add", "id": "m-1"}, [[2, 3], {}, {}])

    decoded = decode_task(message, ["json"])

    assert (decoded.task, decoded.id, decoded.args, decoded.kwargs) == (
        "proj.add",
        "m-1",
        [2, 3],
        {},
    )
    assert decoded.callbacks is None and decoded.chain is None and decoded.chord is None
    assert decoded.retries == 0 and decoded.timelimit == (None, None)
    assert decoded.ignore_result is False and decoded.root_id is None
    assert decoded.reply_to is None and decoded.correlation_id is None


def test_naive_eta_is_utc_and_unknown_headers_are_kept() -> None:
    headers = {
        "task": "proj.add",
        "id": "m-2",
        "eta": "2026-11-22T18:10:55.174901",
        "expires": "2026-11-22T20:10:55Z",
        "redelivered": True,
        "celery_beat_task": True,
    }

    decoded = decode_task(raw_message(headers, [[], {}, None]), ["json"])

    assert decoded.eta == datetime(2026, 11, 22, 18, 10, 55, 174901, tzinfo=timezone.utc)
    assert decoded.expires == datetime(2026, 11, 22, 20, 10, 55, tzinfo=timezone.utc)
    assert decoded.extra_headers == {"redelivered": True, "celery_beat_task": True}


def test_protocol_1_body_decodes() -> None:
    body: dict[str, Any] = {
        "task": "proj.add",
        "id": "v1-1",
        "args": [1, 2],
        "kwargs": {},
        "group": None,
        "taskset": "g-1",
        "group_index": 0,
        "retries": 1,
        "eta": "2026-11-22T18:12:36.629418+00:00",
        "expires": None,
        "utc": True,
        "callbacks": [signature_dict("proj.mul", [3], {"link": [signature_dict("proj.add", [4])]})],
        "errbacks": None,
        "timelimit": [30, 20],
        "chord": None,
    }

    decoded = decode_task(raw_message({}, body, correlation_id="v1-1", reply_to="oid"), ["json"])

    assert (decoded.task, decoded.id, decoded.args, decoded.retries) == (
        "proj.add",
        "v1-1",
        [1, 2],
        1,
    )
    assert (decoded.group, decoded.group_index) == ("g-1", 0)
    assert decoded.eta == datetime(2026, 11, 22, 18, 12, 36, 629418, tzinfo=timezone.utc)
    assert decoded.callbacks == body["callbacks"] and decoded.chain is None
    assert decoded.timelimit == (30, 20)
    assert (decoded.reply_to, decoded.correlation_id) == ("oid", "v1-1")


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"task": "proj.add", "id": "x"}, [[2, 3], {}], "body is a list of 2, expected"),
        ({"task": "proj.add", "id": "x"}, {"args": []}, "body is a dict, expected"),
        ({"task": "", "id": "x"}, [[], {}, {}], "has no task name"),
        ({"task": "proj.add"}, [[], {}, {}], "has no task id"),
        ({"task": "proj.add", "id": "x"}, ["a", {}, {}], "args is a str, expected a list"),
        ({"task": "proj.add", "id": "x"}, [[], [], {}], "kwargs is a list, expected a dict"),
        ({"task": "proj.add", "id": "x"}, [[], {}, []], "embed is a list"),
        ({"task": "proj.add", "id": "x"}, [[], {}, {"chain": "no"}], "chain must be a list"),
        ({"task": "proj.add", "id": "x"}, [[], {}, {"chord": [1]}], "chord must be a signature"),
        ({"task": "proj.add", "id": "x", "eta": "soon"}, [[], {}, {}], "eta is not an ISO-8601"),
        ({"task": "proj.add", "id": "x", "retries": "1"}, [[], {}, {}], "retries must be"),
        ({"task": "proj.add", "id": "x", "timelimit": [1]}, [[], {}, {}], "timelimit must be"),
        ({}, [[], {}, {}], "not a task message"),
        ({}, {"id": "x"}, "not a task message"),
        ({}, {"task": "proj.add"}, "protocol 1 task message for 'proj.add' has no task id"),
    ],
)
def test_malformed_messages_raise_protocol_error(
    headers: dict[str, Any], body: Any, reason: str
) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_task(raw_message(headers, body), ["json"])


def test_content_problems_raise_content_errors() -> None:
    pickled = encode_task(add_call(), serializer="pickle")
    garbage = Message(body=b"\x00\x01not json", headers={"task": "proj.add", "id": "x"})

    with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
        decode_task(pickled, ["json"])
    with pytest.raises(SerializationError, match="cannot decode"):
        decode_task(garbage, ["json"])


def test_compressed_body_is_decompressed() -> None:
    body, header = compress(b'[[5], {"k": 1}, {}]', "gzip")
    message = Message(body=body, headers={"task": "proj.add", "id": "x", "compression": header})

    decoded = decode_task(message, ["json"])

    assert (decoded.args, decoded.kwargs) == ([5], {"k": 1})
    assert "compression" not in decoded.extra_headers
