"""RedisBackend specifics: Celery's key names, TTLs, pub/sub announcements, the keep-SUCCESS
rule and the chord keys. The generic behaviour is in test_backend_contract.py."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from taskframe.brokers.redis import RedisBackend

pytestmark = pytest.mark.redis


@pytest.fixture
def raw(redis_raw: redis.Redis[bytes]) -> redis.Redis[bytes]:
    return redis_raw


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    store = RedisBackend(redis_url)
    yield store
    store.close()


def meta(status: str, task_id: str, result: object = None) -> bytes:
    return json.dumps({"status": status, "result": result, "task_id": task_id}).encode()


def test_set_writes_celerys_key_with_ttl_and_publishes(
    backend: RedisBackend, raw: redis.Redis[bytes]
) -> None:
    task_id = str(uuid.uuid4())
    key = f"celery-task-meta-{task_id}"
    listener = raw.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(key)
    backend.set(task_id, meta("SUCCESS", task_id, 4), expires=86400)
    assert raw.get(key) == meta("SUCCESS", task_id, 4)
    assert 86_000 < raw.ttl(key) <= 86_400
    message = None
    deadline = time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        message = listener.get_message(timeout=1.0)
    listener.close()
    assert message is not None
    assert message["data"] == meta("SUCCESS", task_id, 4)


def test_a_stored_success_is_never_overwritten(backend: RedisBackend) -> None:
    task_id = str(uuid.uuid4())
    backend.set(task_id, meta("FAILURE", task_id), expires=None)
    backend.set(task_id, meta("SUCCESS", task_id, 1), expires=None)
    backend.set(task_id, meta("FAILURE", task_id), expires=None)
    assert json.loads(backend.get(task_id) or b"")["status"] == "SUCCESS"


def test_wait_ignores_states_that_are_not_ready(backend: RedisBackend, redis_url: str) -> None:
    task_id = str(uuid.uuid4())
    writer = RedisBackend(redis_url)

    def progress() -> None:
        writer.set(task_id, meta("STARTED", task_id), expires=None)
        writer.set(task_id, meta("SUCCESS", task_id, 9), expires=None)

    timer = threading.Timer(0.1, progress)
    timer.start()
    try:
        payload = backend.wait(task_id, 10.0, lambda p: json.loads(p)["status"] == "SUCCESS")
    finally:
        timer.join()
        writer.close()
    assert payload == meta("SUCCESS", task_id, 9)


def test_wait_rechecks_when_a_publish_was_missed(redis_url: str, raw: redis.Redis[bytes]) -> None:
    # Given a result written without a publish (as if it went out during a reconnect)
    backend = RedisBackend(redis_url, options={"wait_recheck_interval": 0.1})
    task_id = str(uuid.uuid4())
    timer = threading.Timer(0.2, raw.set, (f"celery-task-meta-{task_id}", b"done"))
    timer.start()
    try:
        assert backend.wait(task_id, 10.0, lambda p: p == b"done") == b"done"
    finally:
        timer.join()
        backend.close()


def test_groups_use_celerys_taskset_key(backend: RedisBackend, raw: redis.Redis[bytes]) -> None:
    backend.set_group("g1", b'{"result": [["g1", null], []]}', expires=60)
    assert raw.get("celery-taskset-meta-g1") == b'{"result": [["g1", null], []]}'
    assert 0 < raw.ttl("celery-taskset-meta-g1") <= 60


def test_chord_keys_follow_celery(backend: RedisBackend, raw: redis.Redis[bytes]) -> None:
    gid = str(uuid.uuid4())
    prefix = f"celery-taskset-meta-{gid}"
    raw.set(prefix + ".c", "old-claim")
    backend.chord_start(gid, 2, expires=86400)
    assert raw.get(prefix + ".s") == b"2"
    assert raw.exists(prefix + ".c") == 0
    part0 = json.dumps([1, "t0", "SUCCESS", 2]).encode()
    part1 = json.dumps([1, "t1", "SUCCESS", 4]).encode()
    assert backend.chord_part_done(gid, 1, part1, expires=86400) is None
    assert raw.zrange(prefix + ".j", 0, -1, withscores=True) == [(part1, 1.0)]
    assert raw.smembers(prefix + ".d") == {b"t1:1"}
    assert backend.chord_part_done(gid, 0, part0, expires=86400) == [part0, part1]
    assert raw.get(prefix + ".c") == b"done"
    assert [raw.exists(prefix + suffix) for suffix in (".j", ".s", ".t", ".d")] == [0, 0, 0, 0]
    assert backend.chord_part_done(gid, 0, part0, expires=86400) is None


def test_chord_adjust_increments_t(backend: RedisBackend, raw: redis.Redis[bytes]) -> None:
    backend.chord_start("g2", 1, expires=None)
    backend.chord_adjust("g2", 3)
    assert raw.get("celery-taskset-meta-g2.t") == b"3"


def test_chord_waits_for_a_celery_claim_in_progress(
    backend: RedisBackend, raw: redis.Redis[bytes]
) -> None:
    backend.chord_start("g3", 1, expires=None)
    raw.set("celery-taskset-meta-g3.c", "celery-worker-token", ex=6)
    assert backend.chord_part_done("g3", 0, b'[1, "t", "SUCCESS", 1]', expires=None) is None


def test_parts_before_celery_sets_the_size_are_kept(redis_url: str) -> None:
    # Given a chord whose producer (Celery 5.7) sets .s only before its last header task
    backend = RedisBackend(redis_url)
    client = redis.Redis.from_url(redis_url)
    group_id = str(uuid.uuid4())
    # When the first part finishes before the size is known
    assert backend.chord_part_done(group_id, 0, b'[1, "a", "SUCCESS", 1]', expires=None) is None
    client.set(f"celery-taskset-meta-{group_id}.s", 2)
    # Then the last part completes the chord with both parts in order
    parts = backend.chord_part_done(group_id, 1, b'[1, "b", "SUCCESS", 2]', expires=None)
    assert parts == [b'[1, "a", "SUCCESS", 1]', b'[1, "b", "SUCCESS", 2]']
    client.close()
    backend.close()


def test_a_chord_member_is_stored_in_one_write_even_after_the_scripts_are_flushed(
    backend: RedisBackend, raw: redis.Redis[bytes]
) -> None:
    # Given a chord of one, on a server that forgot the scripts (restarted, SCRIPT FLUSH)
    group_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    backend.chord_start(group_id, 1, expires=60)
    raw.script_flush()
    # When its member is stored with its part
    parts = backend.store_chord_member(
        task_id, meta("SUCCESS", task_id, 7), b"p0", group_id=group_id, index=0, expires=60
    )
    # Then both happened: the result is kept and published as Celery's, the chord completed
    assert parts == [b"p0"]
    assert json.loads(raw.get(f"celery-task-meta-{task_id}") or b"")["result"] == 7
