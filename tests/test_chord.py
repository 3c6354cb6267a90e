"""Chords on a real in-process worker, on every contract broker: results in order, the failure
semantics Celery 5.7 shows on Redis, empty and single-task headers, a failing body, nesting,
and the ``celery.chord_unlock`` path for backends without a native counter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import wait_for
from test_canvas import backend_for

from taskframe import GroupResult, Taskframe, chain, chord, group
from taskframe.exceptions import ChordError

TIMEOUT = 20


class Boom(Exception):
    """A header task's own exception, to be re-raised by the chord's get()."""


@pytest.fixture
def setup(broker_url: str, tmp_path: Path) -> Iterator[tuple[Taskframe, SimpleNamespace]]:
    app = Taskframe("chords", broker=broker_url, backend=backend_for(broker_url, tmp_path))
    app.conf.result_chord_retry_interval = 0.1
    seen: list[Any] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task
    def collect(values: list[Any]) -> list[Any]:
        seen.append(("body", values))
        return values

    @app.task
    def fail(x: int) -> None:
        raise Boom(f"header task {x} failed")

    @app.task
    def on_chord_error(request: Any, exc: BaseException, traceback: str | None) -> None:
        seen.append(("errback", request.id, exc))

    tasks = SimpleNamespace(
        add=add, tsum=tsum, collect=collect, fail=fail, on_chord_error=on_chord_error, seen=seen
    )
    with app.test_worker(concurrency=4):
        yield app, tasks
    app.close()


def test_body_gets_header_results_in_order(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    result = chord([t.add.s(i, 100) for i in range(8)])(t.collect.s())
    assert result.get(timeout=TIMEOUT) == [i + 100 for i in range(8)]
    assert isinstance(result.parent, GroupResult)
    assert result.parent.get(timeout=TIMEOUT) == [i + 100 for i in range(8)]
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s())().get(timeout=TIMEOUT) == 6
    assert [entry[0] for entry in t.seen] == ["body"]


def test_failing_header_task(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    """Body not run; get() raises the header task's own exception; get(propagate=False) is a
    ChordError naming the failed task; the chord's link_error runs once with that ChordError."""
    _, t = setup
    body = t.collect.s()
    body.link_error(t.on_chord_error.s())
    result = chord([t.add.s(1, 1), t.fail.s(2), t.add.s(3, 3)], body)()
    with pytest.raises(Boom, match="header task 2 failed"):
        result.get(timeout=TIMEOUT)
    error = result.get(timeout=TIMEOUT, propagate=False)
    assert isinstance(error, ChordError)
    assert result.parent is not None
    failed_id = result.parent.results[1].id
    assert str(error) == f"Dependency {failed_id} raised Boom('header task 2 failed')"
    wait_for(lambda: t.seen)
    result.parent.join(timeout=TIMEOUT, propagate=False)
    assert len(t.seen) == 1
    kind, errback_task_id, errback_exc = t.seen[0]
    assert (kind, errback_task_id) == ("errback", result.id)
    assert isinstance(errback_exc, ChordError) and str(errback_exc) == str(error)


def test_two_failing_header_tasks_run_link_error_once(
    setup: tuple[Taskframe, SimpleNamespace],
) -> None:
    _, t = setup
    result = chord([t.fail.s(1), t.fail.s(2)], t.collect.s().on_error(t.on_chord_error.s()))()
    assert isinstance(result.get(timeout=TIMEOUT, propagate=False), ChordError)
    assert result.parent is not None
    result.parent.join(timeout=TIMEOUT, propagate=False)
    wait_for(lambda: t.seen)
    assert [entry[0] for entry in t.seen] == ["errback"]


def test_empty_and_single_task_headers(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    empty = chord([], t.collect.s())()
    assert empty.get(timeout=TIMEOUT) == []
    assert isinstance(empty.parent, GroupResult) and len(empty.parent) == 0
    assert chord([t.add.s(2, 3)], t.collect.s())().get(timeout=TIMEOUT) == [5]


def test_failing_body(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    result = chord([t.add.s(1, 1)], t.fail.s().on_error(t.on_chord_error.s()))()
    with pytest.raises(Boom, match=r"header task \[2\] failed"):
        result.get(timeout=TIMEOUT)
    wait_for(lambda: t.seen)
    assert t.seen[0][0:2] == ("errback", result.id)
    assert isinstance(t.seen[0][2], Boom)


def test_nested_chords(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    in_chain = (chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()) | t.add.s(100))()
    assert in_chain.get(timeout=TIMEOUT) == 106
    of_chords = chord(
        [chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()), chord([t.add.s(3, 3)], t.tsum.s())],
        t.collect.s(),
    )()
    assert of_chords.get(timeout=TIMEOUT) == [6, 6]
    chains_in_header = chord([t.add.s(1, 1) | t.add.s(1), group(t.add.s(5, 5))], t.collect.s())()
    assert chains_in_header.get(timeout=TIMEOUT) == [3, 10]
    chord_then_chord = chain(
        chord([t.add.s(1, 1)], t.tsum.s()), chord([t.add.s(1), t.add.s(2)], t.collect.s())
    )()
    assert chord_then_chord.get(timeout=TIMEOUT) == [3, 4]


def test_unlock_path_without_native_counter(
    setup: tuple[Taskframe, SimpleNamespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, t = setup
    backend = app.backend
    assert backend is not None

    def not_called(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the native chord counter must not be used")

    monkeypatch.setattr(backend, "supports_native_chords", False)
    monkeypatch.setattr(backend, "chord_start", not_called)
    monkeypatch.setattr(backend, "chord_part_done", not_called)
    result = chord([t.add.s(i, i) for i in range(4)], t.collect.s())()
    assert result.get(timeout=TIMEOUT) == [0, 2, 4, 6]
    failing = chord([t.add.s(1, 1), t.fail.s(7)], t.collect.s().on_error(t.on_chord_error.s()))()
    with pytest.raises(Boom):
        failing.get(timeout=TIMEOUT)
    error = failing.get(timeout=TIMEOUT, propagate=False)
    assert isinstance(error, ChordError) and "Dependency" in str(error)
    wait_for(lambda: any(entry[0] == "errback" for entry in t.seen))
    assert [entry[0] for entry in t.seen] == ["body", "errback"]
