"""The result-backend contract, run against every backend in ``CONTRACT_BACKENDS``.

Written only against :class:`taskframe.brokers.base.ResultBackend`: a new store passes by adding
its URL fixture's name to ``CONTRACT_BACKENDS``. Keys are unique per test.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_for

from taskframe.brokers.base import ResultBackend, backend_from_url
from taskframe.exceptions import ChordError

CONTRACT_BACKENDS = ["memory", "sqlite", "redis"]
# Stores that live inside one process; every other store's chord counter is also checked
# across processes.
IN_PROCESS_BACKENDS = {"memory"}


@pytest.fixture(params=CONTRACT_BACKENDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def backend(backend_url: str) -> Iterator[ResultBackend]:
    store = backend_from_url(backend_url)
    yield store
    store.close()


def new_id() -> str:
    return f"tf-contract-{uuid.uuid4()}"


def is_done(payload: bytes) -> bool:
    return payload.startswith(b"done")


def test_set_get_delete(backend: ResultBackend) -> None:
    task_id = new_id()
    assert backend.get(task_id) is None
    backend.set(task_id, b'{"status": "STARTED"}', expires=None)
    backend.set(task_id, b'{"status": "SUCCESS"}', expires=None)
    assert backend.get(task_id) == b'{"status": "SUCCESS"}'
    backend.delete(task_id)
    assert backend.get(task_id) is None
    backend.delete(task_id)


def test_binary_payloads_survive(backend: ResultBackend) -> None:
    task_id = new_id()
    backend.set(task_id, bytes(range(256)), expires=None)
    assert backend.get(task_id) == bytes(range(256))


def test_expired_results_are_gone(backend: ResultBackend) -> None:
    short, kept, forever = new_id(), new_id(), new_id()
    backend.set(short, b"short", expires=0.3)
    backend.set(kept, b"kept", expires=3600)
    backend.set(forever, b"forever", expires=None)
    wait_for(lambda: backend.get(short) is None, timeout=5)
    assert backend.get(kept) == b"kept"
    assert backend.get(forever) == b"forever"


def test_get_many_keeps_the_order_and_marks_missing(backend: ResultBackend) -> None:
    ids = [new_id() for _ in range(4)]
    backend.set(ids[0], b"zero", expires=None)
    backend.set(ids[2], b"two", expires=None)
    assert backend.get_many([ids[2], ids[1], ids[0], ids[3]]) == [b"two", None, b"zero", None]
    assert backend.get_many([]) == []


def test_wait_returns_once_the_result_is_ready(backend: ResultBackend) -> None:
    # Given a result that is stored as started, and finished later by another thread
    task_id = new_id()
    backend.set(task_id, b"started", expires=None)
    finisher = threading.Timer(0.2, backend.set, (task_id, b"done: 4"), {"expires": None})
    finisher.start()
    # When a caller waits for it, Then it gets the finished result, not the started one
    try:
        assert backend.wait(task_id, 10.0, is_done) == b"done: 4"
    finally:
        finisher.join()


def test_wait_gives_none_on_timeout(backend: ResultBackend) -> None:
    task_id = new_id()
    assert backend.wait(task_id, 0.2, is_done) is None
    backend.set(task_id, b"started", expires=None)
    assert backend.wait(task_id, 0.2, is_done) is None


def test_groups(backend: ResultBackend) -> None:
    group_id, short = new_id(), new_id()
    assert backend.get_group(group_id) is None
    backend.set_group(group_id, b'["a", "b"]', expires=None)
    backend.set_group(short, b"short", expires=0.3)
    assert backend.get_group(group_id) == b'["a", "b"]'
    wait_for(lambda: backend.get_group(short) is None, timeout=5)
    backend.delete_group(group_id)
    assert backend.get_group(group_id) is None


def test_chord_completes_once_with_parts_in_index_order(backend: ResultBackend) -> None:
    group_id = new_id()
    backend.chord_start(group_id, 3, expires=None)
    assert backend.chord_part_done(group_id, 2, b"p2", expires=None) is None
    assert backend.chord_part_done(group_id, 0, b"p0", expires=None) is None
    assert backend.chord_part_done(group_id, 0, b"p0 again", expires=None) is None
    assert backend.chord_part_done(group_id, 1, b"p1", expires=None) == [b"p0", b"p1", b"p2"]
    assert backend.chord_part_done(group_id, 1, b"p1 again", expires=None) is None


def test_a_chord_member_is_stored_and_counted_in_one_call(backend: ResultBackend) -> None:
    group_id, members = new_id(), [new_id(), new_id()]
    backend.chord_start(group_id, 2, expires=None)
    results = [f'{{"status": "SUCCESS", "result": {n}}}'.encode() for n in range(2)]
    calls = [
        backend.store_chord_member(
            member, result, f"p{n}".encode(), group_id=group_id, index=n, expires=None
        )
        for n, (member, result) in enumerate(zip(members, results, strict=True))
    ]
    assert calls == [None, [b"p0", b"p1"]]
    assert backend.get_many(members) == results


def test_chord_start_resets_an_earlier_count(backend: ResultBackend) -> None:
    group_id = new_id()
    backend.chord_start(group_id, 2, expires=None)
    assert backend.chord_part_done(group_id, 0, b"old", expires=None) is None
    backend.chord_start(group_id, 2, expires=None)
    assert backend.chord_part_done(group_id, 1, b"new1", expires=None) is None
    assert backend.chord_part_done(group_id, 0, b"new0", expires=None) == [b"new0", b"new1"]


def test_chord_adjust_grows_the_chord(backend: ResultBackend) -> None:
    group_id = new_id()
    backend.chord_start(group_id, 1, expires=None)
    backend.chord_adjust(group_id, 2)
    assert backend.chord_part_done(group_id, 0, b"a", expires=None) is None
    assert backend.chord_part_done(group_id, 1, b"b", expires=None) is None
    assert backend.chord_part_done(group_id, 2, b"c", expires=None) == [b"a", b"b", b"c"]


def test_unknown_chord_is_an_error(backend: ResultBackend) -> None:
    with pytest.raises(ChordError, match="never started"):
        backend.chord_adjust(new_id(), 1)
    if backend.scheme == "redis":
        # Celery 5.7 sets the size just before its last header task, so an early part is
        # recorded and waits (tests/test_redis_backend.py checks it completes later).
        assert backend.chord_part_done(new_id(), 0, b"x", expires=None) is None
    else:
        with pytest.raises(ChordError, match="never started"):
            backend.chord_part_done(new_id(), 0, b"x", expires=None)


def report_parts(url: str, group_id: str, indexes: list[int], start: Any, results: Any) -> None:
    """In a child process: once every child is ready, record each part twice; send back the
    completions this caller was handed, or the error that stopped it."""
    store = backend_from_url(url)
    start.wait()
    completions = []
    try:
        for index in indexes + indexes:
            part = f"part-{index:03}".encode()
            parts = store.chord_part_done(group_id, index, part, expires=None)
            if parts is not None:
                completions.append(parts)
    except Exception as exc:
        results.put(repr(exc))
    else:
        results.put(completions)
    finally:
        store.close()


def test_chord_completes_exactly_once_across_threads(backend: ResultBackend) -> None:
    # Given a chord of 60 parts, reported twice each by 6 threads at once
    group_id, size, threads = new_id(), 60, 6
    backend.chord_start(group_id, size, expires=3600)
    completions: list[list[bytes]] = []

    def report(indexes: list[int]) -> None:
        for index in indexes + indexes:
            parts = backend.chord_part_done(
                group_id, index, f"part-{index:03}".encode(), expires=3600
            )
            if parts is not None:
                completions.append(parts)

    workers = [
        threading.Thread(target=report, args=(list(range(start, size, threads)),))
        for start in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # Then exactly one caller got every part, in index order
    assert completions == [[f"part-{index:03}".encode() for index in range(size)]]


def test_chord_completes_exactly_once_across_processes(
    backend: ResultBackend, backend_url: str, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params["backend_url"] in IN_PROCESS_BACKENDS:
        pytest.skip("the store lives in one process")
    # Given a chord of 200 parts, reported twice each by 4 processes that start together
    group_id, size, count = new_id(), 200, 4
    backend.chord_start(group_id, size, expires=None)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(count), context.Queue()
    processes = [
        context.Process(
            target=report_parts,
            args=(backend_url, group_id, list(range(first, size, count)), start, results),
        )
        for first in range(count)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
    # Then exactly one of them got every part, in index order
    assert [report for report in reports if isinstance(report, str)] == []
    completions = [parts for report in reports for parts in report]
    assert completions == [[f"part-{index:03}".encode() for index in range(size)]]
