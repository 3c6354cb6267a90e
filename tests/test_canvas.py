"""Canvas on a real in-process worker: signatures, chains, groups, nesting, map/chunks, replace.

Every test runs on each contract broker (memory, sqlite) with ``app.test_worker()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import wait_for

from taskframe import GroupResult, Signature, Taskframe, chain, chunks, group, signature, states
from taskframe.brokers.base import BACKEND_SCHEMES
from taskframe.canvas import from_dict
from taskframe.testing import eager

TIMEOUT = 20


def backend_for(url: str, folder: Path) -> str:
    """The broker's own store when it keeps results, else a sqlite file (RabbitMQ, SQS)."""
    if url.partition(":")[0] in BACKEND_SCHEMES:
        return url
    return f"sqlite:///{folder / 'results.sqlite3'}"


def make_app(url: str, backend: str | None = None) -> tuple[Taskframe, SimpleNamespace]:
    app = Taskframe("canvas", broker=url, backend=backend or url)
    seen: list[Any] = []

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task
    def inc(x: int) -> int:
        return x + 1

    @app.task
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task
    def boom(*args: Any) -> None:
        raise ValueError(f"boom {args}")

    @app.task
    def record(*args: Any) -> None:
        seen.append(args)

    @app.task
    def old_errback(task_id: str) -> None:
        seen.append((task_id,))

    @app.task
    def flat(parts: list[list[int]]) -> list[int]:
        return [value for part in parts for value in part]

    @app.task
    def on_error(request: Any, exc: BaseException, traceback: str | None) -> None:
        seen.append(("errback", request.id, repr(exc)))

    @app.task(bind=True)
    def replaced(self: Any, x: int) -> Any:
        return self.replace(mul.s(x, 10))

    @app.task(bind=True)
    def replaced_by_group(self: Any, x: int) -> Any:
        return self.replace(group(add.s(x, 1), add.s(x, 2)))

    tasks = SimpleNamespace(
        add=add,
        mul=mul,
        inc=inc,
        tsum=tsum,
        boom=boom,
        record=record,
        on_error=on_error,
        old_errback=old_errback,
        flat=flat,
        replaced=replaced,
        replaced_by_group=replaced_by_group,
        seen=seen,
    )
    return app, tasks


@pytest.fixture
def setup(broker_url: str, tmp_path: Path) -> Iterator[tuple[Taskframe, SimpleNamespace]]:
    app, tasks = make_app(broker_url, backend_for(broker_url, tmp_path))
    with app.test_worker(concurrency=4):
        yield app, tasks
    app.close()


# -- signatures (no worker needed) -------------------------------------------------------------


def test_signature_is_celerys_dict_and_round_trips(memory_url: str) -> None:
    app, t = make_app(memory_url)
    sig = t.add.s(2).set(queue="q1", countdown=5)
    assert dict(sig) == {
        "task": t.add.name,
        "args": [2],
        "kwargs": {},
        "options": {"queue": "q1", "countdown": 5},
        "subtask_type": None,
        "immutable": False,
    }
    assert t.add.si(1, 1).immutable is True
    assert signature(t.add.name, args=(1,), app=app) == t.add.s(1)
    nested = from_dict((t.add.s(1) | t.mul.s(2)).as_dict(), app)
    assert isinstance(nested, chain)
    assert [s.task for s in nested.tasks] == [t.add.name, t.mul.name]


def test_clone_partial_and_immutable(memory_url: str) -> None:
    _, t = make_app(memory_url)
    base = t.add.s(2)
    partial = base.clone((1,))
    assert partial.args == (1, 2) and base.args == (2,)
    assert base.partial(kwargs={"y": 3}).kwargs == {"y": 3}
    assert t.add.si(1, 1).clone((9,)).args == (1, 1)
    frozen = base.freeze()
    assert base.id == frozen.id


def test_or_builds_chains_and_chords(memory_url: str) -> None:
    from taskframe import chord

    _, t = make_app(memory_url)
    two = t.add.s(1) | t.mul.s(2)
    three = two | t.inc.s()
    assert isinstance(three, chain) and len(three.tasks) == 3
    assert isinstance(group(t.add.s(1, 1)) | t.tsum.s(), chord)
    extended = chord([t.add.s(1, 1)], t.tsum.s()) | t.inc.s()
    assert isinstance(extended, chord) and isinstance(extended.body, chain)


# -- single signatures through a worker ---------------------------------------------------------


def test_delay_apply_async_apply_and_invert(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    assert t.add.s(2).delay(3).get(timeout=TIMEOUT) == 5
    assert t.add.s(2, 2).apply_async(countdown=0.01).get(timeout=TIMEOUT) == 4
    assert t.add.s(1).apply((1,)).get() == 2
    assert ~t.mul.s(3, 4) == 12


def test_link_and_link_error(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _app, t = setup
    ok = t.add.s(1, 1)
    ok.link(t.mul.s(10))
    result = ok.apply_async()
    assert result.get(timeout=TIMEOUT) == 2
    wait_for(lambda: result.children)
    assert result.children[0].get(timeout=TIMEOUT) == 20

    failing = t.boom.s(1).on_error(t.on_error.s()).on_error(t.old_errback.s())
    failed = failing.apply_async()
    with pytest.raises(ValueError, match="boom"):
        failed.get(timeout=TIMEOUT)
    wait_for(lambda: len(t.seen) == 2)
    assert ("errback", failed.id, "ValueError('boom (1,)')") in t.seen
    assert (failed.id,) in t.seen


# -- chains -----------------------------------------------------------------------------------


def test_chain_results_flow_with_parent_links(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    result = chain(t.add.s(1, 2), t.mul.s(3), t.add.si(10, 10), t.add.s(4))()
    assert result.get(timeout=TIMEOUT) == 24
    values = []
    node: Any = result
    while node is not None:
        values.append(node.get(timeout=TIMEOUT))
        node = node.parent
    assert values == [24, 20, 9, 3]


def test_chain_error_stops_and_runs_link_error(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    workflow = (t.add.s(1, 1) | t.boom.s() | t.record.s("never")).on_error(t.on_error.s())
    result = workflow.apply_async()
    with pytest.raises(ValueError, match=r"boom \(2,\)"):
        result.get(timeout=TIMEOUT)
    assert result.state == states.PENDING
    wait_for(lambda: t.seen)
    assert [entry[0] for entry in t.seen] == ["errback"]


def test_thousand_step_chain(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    result = chain(t.inc.s(0), *[t.inc.s() for _ in range(999)])()
    assert result.get(timeout=60) == 1000


# -- groups -----------------------------------------------------------------------------------


def test_group_result_api(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    app, t = setup
    result = group(t.add.s(i, i) for i in range(5))()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]
    assert result.join(timeout=TIMEOUT) == [0, 2, 4, 6, 8]
    assert result.ready() and result.successful() and result.completed_count() == 5
    result.save()
    restored = GroupResult.restore(result.id, app=app)
    assert restored is not None
    assert [r.id for r in restored] == [r.id for r in result]
    assert restored.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]


def test_group_partial_args_and_failure(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    assert group(t.add.s(1), t.mul.s(2))(10).get(timeout=TIMEOUT) == [11, 20]
    mixed = group(t.add.s(1, 1), t.boom.s())()
    with pytest.raises(ValueError):
        mixed.get(timeout=TIMEOUT)
    values = mixed.get(timeout=TIMEOUT, propagate=False)
    assert values[0] == 2 and isinstance(values[1], ValueError)
    assert mixed.failed() and mixed.completed_count() == 1


def test_group_members_carry_group_headers(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    app, t = setup
    result = group(t.add.s(1, 1), t.add.s(2, 2))()
    result.get(timeout=TIMEOUT)
    assert [member.id for member in result] == [r.id for r in result.results]
    from taskframe.result_meta import decode_meta

    backend = app.backend
    assert backend is not None
    metas = [decode_meta(backend.get(member.id) or b"") for member in result]
    assert {meta["group_id"] for meta in metas} == {result.id}


def test_ten_thousand_task_group_publishes_in_batches(
    setup: tuple[Taskframe, SimpleNamespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, t = setup
    batches: list[int] = []
    publish_many = app.broker.publish_many

    def counting(items: Any) -> None:
        items = list(items)
        batches.append(len(items))
        publish_many(items)

    monkeypatch.setattr(app.broker, "publish_many", counting)
    result = group(t.add.s(i, 1) for i in range(10_000))()
    assert sum(batches) == 10_000 and len(batches) <= 25
    assert result.get(timeout=90) == [i + 1 for i in range(10_000)]


# -- nesting and upgrades ---------------------------------------------------------------------


def test_group_followed_by_task_becomes_chord(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    assert (group(t.add.s(1, 1), t.add.s(2, 2)) | t.tsum.s())().get(timeout=TIMEOUT) == 6
    workflow = t.add.s(1, 1) | group(t.add.s(1), t.add.s(2)) | t.tsum.s() | t.mul.s(10)
    assert workflow().get(timeout=TIMEOUT) == 70


def test_chain_of_groups_and_group_of_chains(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    of_chains = group(t.add.s(1, 1) | t.mul.s(2), t.add.s(2, 2) | t.mul.s(3) | t.inc.s())()
    assert of_chains.get(timeout=TIMEOUT) == [4, 13]
    ending_in_group = (t.add.s(1, 1) | group(t.add.s(1), t.mul.s(5)))()
    assert ending_in_group.get(timeout=TIMEOUT) == [3, 10]
    of_groups = chain(group(t.add.s(1, 1), t.add.s(2, 2)), group(t.tsum.s(), t.tsum.s()))()
    assert of_groups.get(timeout=TIMEOUT) == [6, 6]


# -- map, starmap, chunks ---------------------------------------------------------------------


def test_map_starmap_chunks(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    assert t.inc.map([1, 2, 3]).delay().get(timeout=TIMEOUT) == [2, 3, 4]
    assert t.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=TIMEOUT) == [3, 7]
    parts = t.add.chunks([(i, i) for i in range(5)], 2)
    assert isinstance(parts, chunks)
    assert parts().get(timeout=TIMEOUT) == [[0, 2], [4, 6], [8]]
    as_group = parts.group()
    assert len(as_group.tasks) == 3
    assert (as_group | t.flat.s()).delay().get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]


# -- replace ------------------------------------------------------------------------------------


def test_replace_keeps_id_and_chain(setup: tuple[Taskframe, SimpleNamespace]) -> None:
    _, t = setup
    result = (t.replaced.s(4) | t.inc.s())()
    assert result.get(timeout=TIMEOUT) == 41
    assert result.parent is not None
    assert result.parent.get(timeout=TIMEOUT) == 40
    direct = t.replaced.delay(2)
    assert direct.get(timeout=TIMEOUT) == 20
    assert t.replaced_by_group.delay(1).get(timeout=TIMEOUT) == [2, 3]


def test_eager_canvas(memory_url: str) -> None:
    app, t = make_app(memory_url)
    with eager(app):
        assert chain(t.add.s(1, 1), t.mul.s(3))().get() == 6
        assert group(t.add.s(1, 1), t.add.s(2, 2))().get() == [2, 4]
        assert (group(t.add.s(1, 1), t.add.s(2, 2)) | t.tsum.s())().get() == 6
        assert t.replaced.delay(3).get() == 30


def test_signature_mapping_access(memory_url: str) -> None:
    _, t = make_app(memory_url)
    sig: Signature = t.add.s(1, y=2)
    assert sig["args"] == [1] and sig["kwargs"] == {"y": 2} and len(sig) == 6
