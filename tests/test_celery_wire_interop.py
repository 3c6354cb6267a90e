"""taskframe and Celery read each other's task messages and result meta.

Given Celery 5.7's own code (``app.amqp.as_task_v2``, the worker's ``Request``, its result
backends) and the real captures in ``shared/docs/wire-capture/out`` (override the directory with
``TASKFRAME_WIRE_CAPTURES``), every comparison is field for field, and where Celery's bytes are
known, byte for byte.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.backends.base import compress_payload
from celery.backends.redis import RedisBackend
from celery.exceptions import ChordError
from celery.result import AsyncResult, GroupResult
from celery.worker.request import Request
from conftest import IN_CI
from kombu import serialization as kombu_serialization
from kombu.message import Message as KombuMessage

from taskframe import states
from taskframe.brokers.base import Message
from taskframe.exceptions import MaxRetriesExceededError
from taskframe.protocol import TaskMessage, decode_task, encode_task, signature_dict
from taskframe.result_meta import (
    decode_chord_part,
    decode_group_meta,
    decode_meta,
    encode_chord_part,
    encode_group_meta,
    encode_meta,
    exception_from_dict,
)
from taskframe.serialization import compress

pytestmark = pytest.mark.interop

CAPTURES = Path(
    os.environ.get(
        "TASKFRAME_WIRE_CAPTURES",
        Path(__file__).resolve().parents[2] / "shared" / "docs" / "wire-capture" / "out",
    )
)
ETA = datetime(2026, 11, 22, 18, 10, 55, 174901, tzinfo=timezone.utc)
EXPIRES = datetime(2026, 11, 22, 19, 0, 1, 5, tzinfo=timezone.utc)


def capture(name: str) -> Any:
    path = CAPTURES / name
    if not path.exists():
        if IN_CI:
            pytest.fail(f"wire capture {path} is missing (shared/ must sit beside the repository)")
        pytest.skip(f"wire capture {path} is not available")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def celery_app() -> Iterator[Celery]:
    app = Celery("interop", broker="memory://", backend="cache+memory://")
    app.conf.task_default_queue = f"tf-interop-{uuid.uuid4().hex}"

    @app.task(name="wire.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="wire.mul", shared=False)
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="wire.fail", shared=False)
    def fail(message: str) -> None:
        raise ValueError(message)

    yield app
    app.close()


def to_message(envelope: dict[str, Any]) -> Message:
    """A kombu Redis/SQS envelope (base64 body) as a taskframe Message."""
    return Message(
        body=base64.b64decode(envelope["body"]),
        headers=envelope["headers"],
        properties=envelope["properties"],
        content_type=envelope["content-type"],
        content_encoding=envelope["content-encoding"],
    )


def to_kombu(message: Message, queue: str) -> KombuMessage:
    return KombuMessage(
        body=message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=message.headers,
        properties=message.properties,
        delivery_info={"exchange": "", "routing_key": queue},
        accept={"application/json", "application/x-msgpack"},
    )


def captured_v2_messages() -> list[tuple[str, Message, Any]]:
    """(label, message, decoded body) for every protocol 2 task message captured."""
    found: list[tuple[str, Message, Any]] = []
    for name in ("redis_tasks.json", "redis_tasks_celery540.json", "sqs_tasks.json"):
        for sample in capture(name)["samples"]:
            for index, item in enumerate(sample["messages"]):
                label = f"{name}:{sample['sample']}:{index}"
                found.append((label, to_message(item["envelope"]), item["decoded_body"]))
    for sample in capture("amqp_tasks.json")["samples"]:
        for index, item in enumerate(sample["messages"]):
            props = dict(item["properties"])
            message = Message(
                body=item["body_raw"].encode(),
                headers=props.pop("headers"),
                properties=props,
                content_type=props.pop("content_type"),
                content_encoding=props.pop("content_encoding"),
            )
            found.append((f"amqp:{sample['sample']}:{index}", message, item["decoded_body"]))
    for index, item in enumerate(capture("redis_beat.json")["messages"]):
        found.append((f"beat:{index}", to_message(item), item["body(decoded)"]))
    return found


# (1) what taskframe sends is what Celery sends, and a Celery worker runs it.

AS_TASK_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("delay", {"args": (2, 2)}, {"args": [2, 2]}),
    (
        "eta_expires",
        {"args": (2, 3), "eta": ETA, "expires": EXPIRES},
        {"args": [2, 3], "eta": ETA, "expires": EXPIRES},
    ),
    (
        "group_member",
        {"args": (1, 1), "group_id": "g-1", "group_index": 1},
        {"args": [1, 1], "group": "g-1", "group_index": 1},
    ),
    (
        "chord_member",
        {
            "args": (1, 1),
            "group_id": "g-2",
            "group_index": 0,
            "chord": signature_dict("wire.tsum", options={"task_id": "b", "group_id": "g-2"}),
        },
        {
            "args": [1, 1],
            "group": "g-2",
            "group_index": 0,
            "chord": signature_dict("wire.tsum", options={"task_id": "b", "group_id": "g-2"}),
        },
    ),
    (
        "chain_and_links",
        {
            "args": (1, 2),
            "chain": [signature_dict("wire.add", [4]), signature_dict("wire.mul", [3])],
            "callbacks": [signature_dict("wire.mul", [10])],
            "errbacks": [signature_dict("wire.on_error")],
        },
        {
            "args": [1, 2],
            "chain": [signature_dict("wire.add", [4]), signature_dict("wire.mul", [3])],
            "callbacks": [signature_dict("wire.mul", [10])],
            "errbacks": [signature_dict("wire.on_error")],
        },
    ),
    (
        "options",
        {
            "kwargs": {"x": 1, "y": 2},
            "shadow": "renamed.add",
            "time_limit": 30,
            "soft_time_limit": 20.5,
            "ignore_result": True,
            "retries": 3,
            "root_id": "r",
            "parent_id": "p",
            "stamped_headers": ["mark"],
            "mark": "v",
        },
        {
            "args": [],
            "kwargs": {"x": 1, "y": 2},
            "shadow": "renamed.add",
            "timelimit": (30, 20.5),
            "ignore_result": True,
            "retries": 3,
            "root_id": "r",
            "parent_id": "p",
            "stamped_headers": ["mark"],
            "stamps": {"mark": "v"},
        },
    ),
]


@pytest.mark.parametrize(
    ("celery_call", "ours"), [case[1:] for case in AS_TASK_CASES], ids=[c[0] for c in AS_TASK_CASES]
)
def test_message_matches_celerys_as_task_v2(
    celery_app: Celery, celery_call: dict[str, Any], ours: dict[str, Any]
) -> None:
    task_id = str(uuid.uuid4())
    theirs = celery_app.amqp.as_task_v2(task_id, "wire.add", reply_to="oid", **celery_call)

    message = encode_task(
        TaskMessage(
            id=task_id, task="wire.add", kwargs=ours.pop("kwargs", {}), reply_to="oid", **ours
        )
    )

    assert list(message.headers.items()) == list(theirs.headers.items())
    _, _, celery_body = kombu_serialization.dumps(theirs.body, serializer="json")
    assert message.body == celery_body.encode()
    assert {key: message.properties[key] for key in theirs.properties} == theirs.properties


@pytest.mark.parametrize(
    ("serializer", "compression"), [("json", None), ("json", "gzip"), ("msgpack", "bzip2")]
)
def test_celery_worker_runs_our_message(
    celery_app: Celery, serializer: str, compression: str | None
) -> None:
    task_id, next_id = str(uuid.uuid4()), str(uuid.uuid4())
    queue = celery_app.conf.task_default_queue
    task = TaskMessage(
        id=task_id,
        task="wire.add",
        args=[2, 3],
        kwargs={},
        reply_to="oid",
        chain=[signature_dict("wire.mul", [10], options={"task_id": next_id})],
    )
    message = encode_task(task, serializer=serializer, compression=compression)

    request = Request(to_kombu(message, queue), app=celery_app, task=celery_app.tasks["wire.add"])
    request.execute()

    assert (request.id, request.name, request.args, request.kwargs) == (
        task_id,
        "wire.add",
        [2, 3],
        {},
    )
    assert AsyncResult(task_id, app=celery_app).get(timeout=5) == 5
    with celery_app.connection_for_read() as connection:
        sent = connection.SimpleQueue(queue).get(timeout=5)
        step = decode_task(
            Message(
                body=sent.body,
                headers=sent.headers,
                properties=sent.properties,
                content_type=sent.content_type,
                content_encoding=sent.content_encoding,
            ),
            ["json"],
        )
        sent.ack()
    assert (step.id, step.task, step.args, step.chain) == (next_id, "wire.mul", [5, 10], [])
    assert (step.root_id, step.parent_id) == (task_id, task_id)


def test_celery_worker_stores_failure_we_read(celery_app: Celery) -> None:
    task_id = str(uuid.uuid4())
    message = encode_task(TaskMessage(id=task_id, task="wire.fail", args=["boom"], kwargs={}))

    Request(to_kombu(message, "q"), app=celery_app, task=celery_app.tasks["wire.fail"]).execute()

    raw = celery_app.backend.get(celery_app.backend.get_key_for_task(task_id))
    meta = decode_meta(raw.encode() if isinstance(raw, str) else raw)
    assert meta["status"] == states.FAILURE
    assert meta["task_id"] == task_id
    error = exception_from_dict(meta["result"])
    assert type(error) is ValueError
    assert error.args == ("boom",)


# (2) what Celery sends decodes with taskframe to the right fields.


def test_every_captured_v2_message_decodes_and_reencodes_identically() -> None:
    messages = captured_v2_messages()
    assert len(messages) > 40

    for label, message, body in messages:
        decoded = decode_task(message, ["json"])
        headers = message.headers

        assert (decoded.task, decoded.id) == (headers["task"], headers["id"]), label
        assert [decoded.args, decoded.kwargs] == body[:2], label
        embed = {k: getattr(decoded, k) for k in ("callbacks", "errbacks", "chain", "chord")}
        assert embed == body[2], label
        assert decoded.priority == message.properties["priority"], label
        assert decoded.reply_to == message.properties["reply_to"], label

        again = encode_task(decoded)
        assert list(again.headers.items()) == list(headers.items()), label
        assert again.body == message.body, label
        for key in ("correlation_id", "reply_to", "delivery_mode", "priority"):
            assert again.properties[key] == message.properties[key], label


def test_captured_workflow_fields() -> None:
    samples = {s["sample"]: s["messages"] for s in capture("redis_tasks.json")["samples"]}

    def decoded(sample: str, index: int = 0) -> TaskMessage:
        return decode_task(to_message(samples[sample][index]["envelope"]), ["json"])

    chain = decoded("chain_of_3")
    assert chain.chain is not None
    assert [step["task"] for step in chain.chain] == ["wire.add", "wire.mul"]
    assert chain.chain[-1]["args"] == [3]

    links = decoded("link_and_link_error")
    assert links.callbacks is not None and links.errbacks is not None
    assert links.callbacks[0]["task"] == "wire.mul"
    assert links.errbacks[0]["task"] == "wire.on_error"

    member = decoded("chord_2_then_tsum", 1)
    assert member.chord is not None
    assert member.chord["task"] == "wire.tsum"
    assert member.chord["options"]["group_id"] == member.group
    assert member.group_index == 1

    countdown = decoded("countdown")
    assert countdown.eta is not None and countdown.eta.tzinfo is not None
    assert decoded("expires").expires is not None
    assert decoded("time_limits_and_ignore_result").timelimit == (30, 20)
    assert decoded("time_limits_and_ignore_result").ignore_result is True
    assert decoded("send_task_by_name").ignore_result is None
    assert decoded("kwargs_and_shadow").shadow == "renamed.add"
    assert decoded("priority_9").priority == 9


def test_beat_header_is_kept() -> None:
    beat = capture("redis_beat.json")["messages"][0]

    decoded = decode_task(to_message(beat), ["json"])

    assert decoded.extra_headers == {"celery_beat_task": True}
    assert decoded.args == [1, 1]


def test_protocol_1_captures_decode() -> None:
    for sample in capture("redis_tasks_protocol1.json")["samples"]:
        for item in sample["messages"]:
            envelope, body = item["envelope"], item["decoded_body"]

            decoded = decode_task(to_message(envelope), ["json"])

            assert (decoded.task, decoded.id) == (body["task"], body["id"])
            assert (decoded.args, decoded.kwargs) == (body["args"], body["kwargs"])
            assert decoded.group == (body["group"] or body["taskset"])
            assert decoded.group_index == body["group_index"]
            assert decoded.callbacks == body["callbacks"]
            assert decoded.chord == body["chord"]
            assert decoded.chain is None
            assert decoded.reply_to == envelope["properties"]["reply_to"]
            if body["eta"]:
                assert decoded.eta == datetime.fromisoformat(body["eta"])
            if sample["sample"] == "chain_of_3":
                assert decoded.callbacks is not None
                assert decoded.callbacks[0]["options"]["link"][0]["args"] == [4]


def test_serializer_captures() -> None:
    variants = {v["variant"]: v for v in capture("redis_serializers.json")}
    json_body = b'[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    headers = {"task": "wire.add", "id": "s-1"}

    packed = variants["msgpack"]
    assert len(bytes.fromhex(packed["body_bytes_hex_prefix"])) == packed["body_len"]
    from_msgpack = decode_task(
        Message(
            body=bytes.fromhex(packed["body_bytes_hex_prefix"]),
            headers=headers,
            content_type=packed["content-type"],
            content_encoding=packed["content-encoding"],
        ),
        ["msgpack"],
    )
    assert from_msgpack.args == [2, 2]
    assert encode_task(TaskMessage("s-1", "wire.add", [2, 2], {}), serializer="msgpack").body == (
        bytes.fromhex(packed["body_bytes_hex_prefix"])
    )

    gzip = variants["json+gzip"]
    compressed, header = compress(json_body, "gzip")
    assert header == gzip["compression_header"]
    assert len(compressed) == gzip["body_len"]
    assert compressed.hex().startswith(gzip["body_bytes_hex_prefix"])
    message = Message(body=compressed, headers={**headers, "compression": header})
    assert decode_task(message, ["json"]).args == [2, 2]

    float_limits = variants["float_time_limit"]["timelimit_header"]
    message = Message(body=json_body, headers={**headers, "timelimit": float_limits})
    assert decode_task(message, ["json"]).timelimit == (1.5, 1)


# (3) result meta, both ways.


def test_celery_reads_our_result_meta(celery_app: Celery) -> None:
    backend = celery_app.backend
    ok_id, failed_id, revoked_id = (str(uuid.uuid4()) for _ in range(3))
    backend.set(backend.get_key_for_task(ok_id), encode_meta(ok_id, states.SUCCESS, {"sum": 4}))
    backend.set(
        backend.get_key_for_task(failed_id),
        encode_meta(
            failed_id, states.FAILURE, MaxRetriesExceededError("gave up", 3), traceback="tb"
        ),
    )
    backend.set(
        backend.get_key_for_task(revoked_id),
        encode_meta(revoked_id, states.REVOKED, ValueError("revoked"), compression="gzip"),
    )

    ok = AsyncResult(ok_id, app=celery_app)
    failed = AsyncResult(failed_id, app=celery_app)
    revoked = AsyncResult(revoked_id, app=celery_app)

    assert (ok.state, ok.get(timeout=1)) == ("SUCCESS", {"sum": 4})
    assert isinstance(ok.date_done, datetime)
    assert failed.state == "FAILURE"
    assert type(failed.result) is MaxRetriesExceededError
    assert failed.result.args == ("gave up", 3)
    assert failed.traceback == "tb"
    assert revoked.state == "REVOKED"
    assert type(revoked.result) is ValueError


def test_celery_decodes_our_meta_directly(celery_app: Celery) -> None:
    payload = encode_meta("t", states.FAILURE, KeyError("k"), group_id="g", parent_id="p")

    meta = celery_app.backend.meta_from_decoded(celery_app.backend.decode(payload))

    assert type(meta["result"]) is KeyError
    assert (meta["group_id"], meta["parent_id"], meta["task_id"]) == ("g", "p", "t")


def test_we_read_celerys_stored_meta(celery_app: Celery) -> None:
    backend = celery_app.backend
    ok_id, failed_id = str(uuid.uuid4()), str(uuid.uuid4())
    backend.store_result(ok_id, [1, "two"], states.SUCCESS)
    backend.mark_as_failure(failed_id, ZeroDivisionError("division by zero"), traceback="tb")

    ok = decode_meta(str(backend.get(backend.get_key_for_task(ok_id))).encode())
    failed = decode_meta(str(backend.get(backend.get_key_for_task(failed_id))).encode())
    compressed = compress_payload(backend.encode({"status": "SUCCESS", "result": 1}), "gzip")

    assert (ok["status"], ok["result"], ok["task_id"]) == ("SUCCESS", [1, "two"], ok_id)
    assert datetime.fromisoformat(ok["date_done"]).utcoffset() == timedelta(0)
    assert failed["traceback"] == "tb"
    assert type(exception_from_dict(failed["result"])) is ZeroDivisionError
    assert decode_meta(compressed)["result"] == 1


@pytest.mark.parametrize("directory", ["redis", "redis_extended", "redis_celery540"])
def test_captured_result_meta_reencodes_byte_for_byte(directory: str) -> None:
    keys = capture(f"{directory}/redis_result_keys.json")
    checked = 0

    for key, entry in keys.items():
        value = entry["value"]
        stored = json.dumps(value).encode()
        if key.startswith("celery-task-meta-"):
            meta = decode_meta(stored)
            extended: dict[str, Any] = {
                k: meta[k]
                for k in ("name", "args", "kwargs", "worker", "retries", "queue")
                if k in meta
            }
            done = meta["date_done"]
            again = encode_meta(
                meta["task_id"],
                meta["status"],
                meta["result"],
                traceback=meta["traceback"],
                children=meta["children"],
                date_done=datetime.fromisoformat(done) if done else None,
                group_id=meta.get("group_id"),
                parent_id=meta.get("parent_id"),
                extended=extended or None,
            )
            assert again == stored, key
            if meta["status"] in ("FAILURE", "REVOKED"):
                error = exception_from_dict(meta["result"])
                assert type(error).__name__ == meta["result"]["exc_type"], key
                assert list(error.args) == meta["result"]["exc_message"], key
            checked += 1
        elif key.startswith("celery-taskset-meta-") and isinstance(value, dict):
            group_id, ids = decode_group_meta(stored)
            assert encode_group_meta(group_id, ids) == stored, key
            checked += 1
    assert checked > 3


def test_group_meta_both_ways(celery_app: Celery) -> None:
    ours_id, theirs_id = str(uuid.uuid4()), str(uuid.uuid4())
    backend = celery_app.backend
    backend.set(backend.get_key_for_group(ours_id), encode_group_meta(ours_id, ["a", "b"]))
    GroupResult(theirs_id, [AsyncResult("c", app=celery_app)], app=celery_app).save()

    restored = GroupResult.restore(ours_id, app=celery_app)
    raw = str(backend.get(backend.get_key_for_group(theirs_id))).encode()

    assert [result.id for result in restored.results] == ["a", "b"]
    assert decode_group_meta(raw) == (theirs_id, ["c"])


def test_chord_parts_both_ways(celery_app: Celery) -> None:
    redis_backend = RedisBackend(app=celery_app, url="redis://127.0.0.1:6379/9")

    assert (
        redis_backend._unpack_chord_result(
            encode_chord_part("t", "SUCCESS", 2), redis_backend.decode
        )
        == 2
    )
    with pytest.raises(ChordError, match="Dependency t raised ValueError"):
        redis_backend._unpack_chord_result(
            encode_chord_part("t", "FAILURE", ValueError("x")), redis_backend.decode
        )
    theirs = redis_backend.encode(
        [1, "u", "FAILURE", redis_backend.encode_result(KeyError("k"), "FAILURE")]
    )
    assert decode_chord_part(theirs) == (
        "u",
        "FAILURE",
        {"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"},
    )
