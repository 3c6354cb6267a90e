"""Canvas messages compared field by field with the ones Celery 5.7 itself produces.

Both sides build the same canvas with tasks of the same names; Celery publishes to a
``memory://`` broker (its messages are caught with ``before_task_publish``), taskframe to its
own memory broker. Every id in both message lists is renamed by order of first appearance
(``id0``, ``id1``...), so the comparison still checks which id goes where (a chord body's
``group_id`` is its header's ``group`` header, a chain step's ``task_id`` is the result
handed back...) while ignoring the random values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskframe import Taskframe, chain, chord, group
from taskframe.brokers.base import Message

celery = pytest.importorskip("celery")

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
COMPARED_HEADERS = (
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
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
)
Canvas = Callable[[Any], Any]


def canonical(messages: list[tuple[dict[str, Any], Any]], result_id: str) -> str:
    """The messages and the returned result's id as JSON with ids renamed in order."""
    text = json.dumps(
        {
            "result": result_id,
            "messages": [
                {"headers": {key: headers.get(key) for key in COMPARED_HEADERS}, "body": body}
                for headers, body in messages
            ],
        },
        sort_keys=True,
    )
    names: dict[str, str] = {}
    return UUID.sub(lambda match: names.setdefault(match.group(0), f"id{len(names)}"), text)


def add(x: int, y: int) -> int:
    return x + y


def mul(x: int, y: int) -> int:
    return x * y


def tsum(values: list[int]) -> int:
    return sum(values)


def on_error(task_id: str) -> None:
    """An old-style errback: it is sent with the failed task's id."""


class Tasks:
    """The same four tasks, on either framework."""

    def __init__(self, app: Any) -> None:
        # Celery registers tasks on every later app unless shared=False; keep them to this one.
        options = {"shared": False} if isinstance(app, celery.Celery) else {}
        self.add = app.task(name="wire.add", **options)(add)
        self.mul = app.task(name="wire.mul", **options)(mul)
        self.tsum = app.task(name="wire.tsum", **options)(tsum)
        self.on_error = app.task(name="wire.on_error", **options)(on_error)


@pytest.fixture(scope="module")
def celery_side() -> Iterator[tuple[Any, Tasks, list[tuple[dict[str, Any], Any]]]]:
    from celery.signals import before_task_publish

    app = celery.Celery("wire", broker="memory://", backend="cache+memory://", set_as_current=False)
    caught: list[tuple[dict[str, Any], Any]] = []

    def catch(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
        caught.append((dict(headers), json.loads(json.dumps(body))))

    before_task_publish.connect(catch, weak=False)
    yield app, Tasks(app), caught
    before_task_publish.disconnect(catch)


@pytest.fixture
def taskframe_side(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Taskframe, Tasks, list[tuple[dict[str, Any], Any]]]:
    app = Taskframe("wire", broker=memory_url, backend=memory_url)
    caught: list[tuple[dict[str, Any], Any]] = []

    def record(message: Message) -> None:
        caught.append((dict(message.headers), json.loads(message.body)))

    broker = app.broker
    monkeypatch.setattr(broker, "publish", lambda queue, message, **_: record(message))
    monkeypatch.setattr(
        broker, "publish_many", lambda items: [record(message) for _, message, _, _ in items]
    )
    return app, Tasks(app), caught


CANVASES: dict[str, Callable[[Any, Tasks], Any]] = {
    "chain": lambda m, t: m.chain(t.add.s(1, 2), t.mul.s(3), t.add.s(4))(),
    "link": lambda m, t: t.add.apply_async((1, 1), link=t.mul.s(10), link_error=t.on_error.s()),
    "group": lambda m, t: m.group(t.add.s(1, 1), t.add.s(2, 2))(),
    "chord": lambda m, t: m.chord([t.add.s(1, 1), t.add.s(2, 2)])(t.tsum.s()),
    "chord of one": lambda m, t: m.chord([t.add.s(1, 1)], t.tsum.s())(),
    "empty chord": lambda m, t: m.chord([], t.tsum.s())(),
    "group | task": lambda m, t: (m.group(t.add.s(1, 1), t.add.s(2, 2)) | t.tsum.s())(),
    "chain on_error": lambda m, t: (t.add.s(1, 1) | t.mul.s(2)).on_error(t.on_error.s()).delay(),
    "chord link_error": lambda m, t: m.chord([t.add.s(1, 1)], t.tsum.s().on_error(t.mul.s(1)))(),
    "group of chains": lambda m, t: m.group(
        t.add.s(1, 1) | t.mul.s(2), t.add.s(2, 2) | t.mul.s(3)
    )(),
    "chain ending in group": lambda m, t: (t.add.s(1, 1) | m.group(t.add.s(1), t.add.s(2)))(),
    "map": lambda m, t: t.tsum.map([[1, 2], [3]]).apply_async(),
    "starmap": lambda m, t: t.add.starmap([(1, 2), (3, 4)]).apply_async(),
    "chunks": lambda m, t: t.add.chunks([(1, 1), (2, 2), (3, 3)], 2)(),
}


class CeleryCanvas:
    chain = celery.chain
    group = celery.group
    chord = celery.chord


class TaskframeCanvas:
    chain = chain
    group = group
    chord = chord


@pytest.mark.parametrize("name", list(CANVASES))
def test_messages_match_celerys(
    name: str,
    celery_side: tuple[Any, Tasks, list[tuple[dict[str, Any], Any]]],
    taskframe_side: tuple[Taskframe, Tasks, list[tuple[dict[str, Any], Any]]],
) -> None:
    _celery_app, celery_tasks, celery_caught = celery_side
    _app, tasks, caught = taskframe_side
    celery_caught.clear()
    expected_result = CANVASES[name](CeleryCanvas, celery_tasks)
    result = CANVASES[name](TaskframeCanvas, tasks)
    expected = canonical(celery_caught, expected_result.id)
    assert canonical(caught, result.id) == expected
    assert caught
