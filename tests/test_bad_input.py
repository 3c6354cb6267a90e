"""Bad input through a real worker: a prefork ``python -m taskframe worker`` on sqlite.

Given a worker subprocess, when it receives a message that is not JSON, a content type it
does not accept, or an unknown task name, then it logs one line per message, parks it in the
dead-letter store with the reason, and keeps consuming. A task called with the wrong number
of arguments fails with TypeError as its result. A worker killed with SIGKILL while holding
prefetched, unstarted messages loses none: they run exactly once after the visibility timeout.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import wait_for

from taskframe import states
from taskframe.brokers.base import Message

PROJECT = """\
import time
from pathlib import Path

from taskframe import Taskframe

HERE = Path(__file__).resolve().parent
app = Taskframe("badinput", broker="{url}")
app.conf.broker_transport_options = {{"visibility_timeout": 2}}
app.conf.accept_content = ["json"]


@app.task
def add(x, y):
    return x + y


@app.task
def slow(n):
    with open(HERE / "started.txt", "a") as log:
        log.write(f"{{n}}\\n")
    time.sleep(0.5)
    with open(HERE / "done.txt", "a") as log:
        log.write(f"{{n}}\\n")
    return n
"""


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> Iterator[ModuleType]:
    """The project module, imported here too (to send tasks and read results)."""
    name = f"tfbad_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(PROJECT.format(url=sqlite_url))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    yield module
    module.app.close()
    sys.modules.pop(name, None)


@pytest.fixture
def start_worker(
    project: ModuleType, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts ``python -m taskframe -A <project> worker``; stops every one it started."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker{len(started)}.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [sys.executable, "-m", "taskframe", "-A", project.__name__, "worker", *options],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def worker_log(tmp_path: Path, number: int = 0) -> str:
    return (tmp_path / f"worker{number}.log").read_text()


def task_headers(name: str, task_id: str) -> dict[str, object]:
    return {
        "lang": "py",
        "task": name,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "test",
        "ignore_result": False,
    }


def test_poison_messages_are_dead_lettered_and_the_worker_goes_on(
    project: ModuleType, start_worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    app = project.app
    broker = app.broker
    add_name = f"{project.__name__}.add"
    not_json_id = str(uuid.uuid4())
    broker.publish(
        "celery",
        Message(
            body=b'[[1, 2], {}, {"callbacks": nul',
            headers=task_headers(add_name, not_json_id),
            properties={"correlation_id": not_json_id, "priority": 0},
        ),
    )
    _, _, pickled = app.build_message(add_name, [1, 2], serializer="pickle")
    assert pickled.content_type == "application/x-python-serialize"
    broker.publish("celery", pickled)
    pickled_id = str(pickled.headers["id"])
    unknown = app.send_task("no.such.task", [1])
    wrong_arity = app.send_task(add_name, [1])
    good = app.send_task(add_name, [20, 22])

    worker = start_worker("-c", "1")

    assert good.get(timeout=30) == 42
    with pytest.raises(TypeError):
        wrong_arity.get(timeout=10)
    assert wrong_arity.state == states.FAILURE
    wait_for(lambda: len(broker.dead_letters("celery")) == 3, timeout=10)
    reasons = {str(d.message.headers.get("id")): d.reason for d in broker.dead_letters("celery")}
    assert set(reasons) == {not_json_id, pickled_id, unknown.id}
    assert "malformed" in reasons[not_json_id]
    assert "application/x-python-serialize" in reasons[pickled_id]
    assert "unknown task" in reasons[unknown.id] and "no.such.task" in reasons[unknown.id]
    assert broker.size("celery") == 0
    after = app.send_task(add_name, [1, 1])
    assert after.get(timeout=10) == 2
    assert worker.poll() is None, "the worker is still running"
    log = worker_log(tmp_path)
    for task_id in (not_json_id, pickled_id, unknown.id):
        lines = [line for line in log.splitlines() if task_id in line]
        assert len(lines) == 1, (task_id, lines)


@pytest.mark.parametrize("optimization", ["fair", "default"])
def test_kill_9_with_prefetched_messages_loses_nothing_and_runs_nothing_twice(
    project: ModuleType,
    start_worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    optimization: str,
) -> None:
    """``-O fair``: the unstarted messages wait in the worker's own prefetch window, unacked,
    and come back after the visibility timeout. Default: a child also holds a few handed-over
    (acked) jobs, which it still runs once the parent is gone."""
    app = project.app
    database = app.broker_url.removeprefix("sqlite:///")
    results = [project.slow.delay(n) for n in range(4)]

    def held_by_a_worker() -> int:
        with sqlite3.connect(database) as connection:
            count: int = connection.execute(
                "SELECT count(*) FROM tf_messages WHERE state = 2"
            ).fetchone()[0]
        return count

    def lines(name: str) -> list[str]:
        path = tmp_path / name
        return path.read_text().split() if path.exists() else []

    def holding_unstarted_work() -> bool:
        started = len(lines("started.txt"))
        if optimization == "fair":
            return started >= 1 and started + held_by_a_worker() == 4
        return 1 <= started < 4

    first = start_worker("-c", "1", "-O", optimization, "--prefetch-multiplier", "4")
    wait_for(holding_unstarted_work, timeout=30)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert len(lines("started.txt")) < 4, "some messages were prefetched but not started"

    start_worker("-c", "2")
    assert sorted(result.get(timeout=30) for result in results) == [0, 1, 2, 3]
    wait_for(lambda: len(lines("done.txt")) == 4, timeout=10)
    assert sorted(lines("started.txt")) == ["0", "1", "2", "3"]
    assert sorted(lines("done.txt")) == ["0", "1", "2", "3"]
    assert app.broker.size("celery") == 0
    assert app.broker.dead_letters("celery") == []
