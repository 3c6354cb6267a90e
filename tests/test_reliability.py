"""Reliability: a real worker process on sqlite, hurt on purpose, and a count of what ran.

Each test sends tasks, damages the worker (kill -9 of a child or of the whole worker, warm and
cold shutdown under load, a leaking task, a task that never returns, poison messages), drains
what is left with a fresh worker, then counts from a table the tasks write to as they finish:
sent / run once / run twice / lost. Nothing may be lost; a task may run twice only where
at-least-once delivery allows it (late ack and a crash), and those are counted and bounded.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from taskframe import Taskframe, states
from taskframe.brokers.base import Message

PROJECT = textwrap.dedent("""
    import os
    import sqlite3
    import time

    from taskframe import Taskframe

    app = Taskframe("relproj", broker=os.environ["TF_BROKER"])
    app.conf.broker_transport_options = {"visibility_timeout": float(os.environ["TF_VT"])}
    app.conf.worker_shutdown_timeout = 10.0
    LEAKED = []


    def record(task_id, event):
        with sqlite3.connect(os.environ["TF_RUNS"], timeout=30) as db:
            db.execute("INSERT INTO runs VALUES (?, ?, ?)", (task_id, event, os.getpid()))


    @app.task(bind=True)
    def work(self, seconds=0.0):
        time.sleep(seconds)
        record(self.request.id, "done")


    @app.task(bind=True, acks_late=True)
    def work_late(self, seconds=0.0):
        time.sleep(seconds)
        record(self.request.id, "done")


    def victim_body(self):
        record(self.request.id, "start")
        if not self.request.delivery_info.get("redelivered"):
            time.sleep(60)
        record(self.request.id, "done")


    victim = app.task(bind=True, name="relproj.victim")(victim_body)
    victim_late = app.task(
        bind=True, name="relproj.victim_late", acks_late=True, reject_on_worker_lost=True
    )(victim_body)


    @app.task(bind=True, time_limit=0.5)
    def hang(self):
        record(self.request.id, "start")
        while True:
            time.sleep(0.05)


    @app.task(bind=True)
    def leak(self, megabytes):
        LEAKED.append(bytearray(megabytes * 1024 * 1024))
        record(self.request.id, "done")
""")


class Node:
    """A project in a temporary directory, its store, and the workers it starts."""

    def __init__(self, root: Path, visibility_timeout: float = 3600.0) -> None:
        self.root = root
        (root / "relproj.py").write_text(PROJECT)
        self.runs = root / "runs.sqlite3"
        with closing(sqlite3.connect(self.runs)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE runs (task_id TEXT, event TEXT, pid INTEGER)")
            db.commit()
        self.env = {
            **os.environ,
            "TF_BROKER": f"sqlite:///{root / 'broker.sqlite3'}",
            "TF_VT": str(visibility_timeout),
            "TF_RUNS": str(self.runs),
            "PYTHONPATH": str(root),
        }
        sys.path.insert(0, str(root))
        saved = {key: os.environ.get(key) for key in ("TF_BROKER", "TF_VT", "TF_RUNS")}
        os.environ.update({key: self.env[key] for key in saved})
        try:
            sys.modules.pop("relproj", None)
            import relproj

            self.app: Taskframe = relproj.app
        finally:
            sys.path.remove(str(root))
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self, *options: str) -> subprocess.Popen[bytes]:
        log = self.root / f"worker-{len(self.workers)}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskframe",
                    "-A",
                    "relproj",
                    "worker",
                    "-l",
                    "WARNING",
                    "-c",
                    "2",
                    *options,
                ],
                cwd=self.root,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=output,
            )
        self.workers.append(process)
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        return (self.root / f"worker-{self.workers.index(process)}.log").read_text()[-3000:]

    def drain(self, *options: str) -> None:
        """Run burst workers until no message is left, waiting for unacked ones to come back
        after the visibility timeout."""
        while self.unsettled():
            wait_for(lambda: self.app.broker.size("celery") > 0 or not self.unsettled(), 30)
            process = self.start("--burst", *options)
            assert process.wait(timeout=60) == 0, self.log(process)

    def unsettled(self) -> int:
        with closing(sqlite3.connect(self.root / "broker.sqlite3", timeout=30)) as db:
            count: int = db.execute("SELECT COUNT(*) FROM tf_messages").fetchall()[0][0]
        return count

    def events(self, event: str = "done") -> list[tuple[str, int]]:
        with closing(sqlite3.connect(self.runs, timeout=30)) as db:
            rows = db.execute("SELECT task_id, pid FROM runs WHERE event = ?", (event,))
            return [(task_id, pid) for task_id, pid in rows.fetchall()]

    def figure(self, sent: list[str], failed_ok: Collection[str] = ()) -> dict[str, int]:
        """sent / run once / run twice / lost, printed and returned."""
        done = Counter(task_id for task_id, _ in self.events())
        figure = {
            "sent": len(sent),
            "once": sum(1 for task_id in sent if done[task_id] == 1),
            "twice": sum(1 for task_id in sent if done[task_id] >= 2),
            "failed": sum(1 for task_id in sent if done[task_id] == 0 and task_id in failed_ok),
            "lost": sum(1 for task_id in sent if done[task_id] == 0 and task_id not in failed_ok),
        }
        print(f"reliability figure: {json.dumps(figure)}")
        return figure

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        self.app.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path)
    yield node
    node.close()


def send(node: Node, name: str, count: int, *args: Any) -> list[str]:
    app = node.app
    items = []
    for _ in range(count):
        queue, delay, message = app.build_message(f"relproj.{name}", list(args))
        items.append((queue, message, delay, None))
    app.broker.publish_many(items)
    return [message.headers["id"] for _, message, _, _ in items]


def stop(node: Node, process: subprocess.Popen[bytes], *signals: int) -> None:
    for number in signals:
        process.send_signal(number)
    assert process.wait(timeout=30) == 0, node.log(process)


@pytest.mark.parametrize("victim", ["victim", "victim_late"])
def test_kill_9_of_a_child_mid_task(node: Node, victim: str) -> None:
    (doomed,) = send(node, victim, 1)
    quick = send(node, "work", 30, 0.01)
    worker = node.start()
    wait_for(lambda: node.events("start"), timeout=20)
    os.kill(node.events("start")[0][1], signal.SIGKILL)
    wait_for(lambda: len(node.events()) >= 30 + (victim == "victim_late"), timeout=30)
    stop(node, worker, signal.SIGTERM)
    result = node.app.AsyncResult(doomed)
    if victim == "victim":
        assert result.state == states.FAILURE
        assert "WorkerLostError" in repr(result.info)
        figure = node.figure([doomed, *quick], failed_ok={doomed})
        assert figure == {"sent": 31, "once": 30, "twice": 0, "failed": 1, "lost": 0}
    else:
        assert len(node.events("start")) == 2
        figure = node.figure([doomed, *quick])
        assert figure == {"sent": 31, "once": 31, "twice": 0, "failed": 0, "lost": 0}


def test_kill_9_of_the_whole_worker_holding_prefetched_messages(tmp_path: Path) -> None:
    node = Node(tmp_path, visibility_timeout=1.0)
    try:
        sent = send(node, "work", 120, 0.01)
        worker = node.start("--prefetch-multiplier", "20")
        wait_for(lambda: len(node.events()) >= 20, timeout=20)
        worker.kill()
        worker.wait(timeout=10)
        assert node.unsettled() > 0
        node.drain()
        figure = node.figure(sent)
        assert figure == {"sent": 120, "once": 120, "twice": 0, "failed": 0, "lost": 0}
    finally:
        node.close()


def test_warm_shutdown_under_load_loses_nothing(node: Node) -> None:
    sent = send(node, "work", 1000, 0.001)
    worker = node.start()
    wait_for(lambda: len(node.events()) >= 100, timeout=30)
    stop(node, worker, signal.SIGTERM)
    assert node.app.broker.size("celery") > 0
    node.drain()
    figure = node.figure(sent)
    assert figure == {"sent": 1000, "once": 1000, "twice": 0, "failed": 0, "lost": 0}


def test_cold_shutdown_under_load_gives_late_ack_tasks_back(node: Node) -> None:
    sent = send(node, "work_late", 1000, 0.005)
    worker = node.start()
    wait_for(lambda: len(node.events()) >= 100, timeout=30)
    stop(node, worker, signal.SIGTERM, signal.SIGTERM)
    node.drain()
    figure = node.figure(sent)
    assert figure["lost"] == 0 and figure["failed"] == 0
    assert figure["twice"] <= 2
    assert figure["once"] + figure["twice"] == 1000


def test_a_leaking_task_recycles_its_child(node: Node) -> None:
    sent = send(node, "leak", 24, 8)
    node.drain("--max-memory-per-child", str(_rss_kib_after_import(node) + 40_000))
    figure = node.figure(sent)
    assert figure == {"sent": 24, "once": 24, "twice": 0, "failed": 0, "lost": 0}
    assert len({pid for _, pid in node.events()}) >= 4


def test_a_task_that_never_returns_is_killed_at_the_hard_limit(node: Node) -> None:
    (stuck,) = send(node, "hang", 1)
    quick = send(node, "work", 30, 0.01)
    node.drain()
    result = node.app.AsyncResult(stuck)
    assert result.state == states.FAILURE
    assert "TimeLimitExceeded" in repr(result.info)
    figure = node.figure([stuck, *quick], failed_ok={stuck})
    assert figure == {"sent": 31, "once": 30, "twice": 0, "failed": 1, "lost": 0}


def test_malformed_messages_mixed_with_good_ones(node: Node) -> None:
    app = node.app
    good = send(node, "work", 1000)
    queue, _, template = app.build_message("relproj.work")
    poison: list[tuple[str, Message, float, int | None]] = []
    for number in range(1000):
        kind = number % 5
        headers = dict(template.headers, id=f"poison-{number}")
        if kind == 0:
            message = Message(b"{not json", headers)
        elif kind == 1:
            message = Message(template.body, dict(headers, task="relproj.missing"))
        elif kind == 2:
            message = Message(b'{"just": "a dict"}', {})
        elif kind == 3:
            message = Message(b"[1, 2]", headers)
        else:
            message = Message(
                b"\x80\x04K\x01.", headers, content_type="application/x-python-serialize"
            )
        poison.append((queue, message, 0.0, None))
    app.broker.publish_many(poison)
    node.drain()
    figure = node.figure(good)
    assert figure == {"sent": 1000, "once": 1000, "twice": 0, "failed": 0, "lost": 0}
    parked = app.broker.dead_letters(queue, limit=2000)
    assert len(parked) == 1000
    assert {item.message.headers.get("id") for item in parked} >= {"poison-0", "poison-1"}


def _rss_kib_after_import(node: Node) -> int:
    """Resident memory of a fresh interpreter that imported the project (a child's start)."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import relproj, taskframe.worker.prefork as p; print(p._rss_kib())",
        ],
        cwd=node.root,
        env=node.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(probe.stdout.strip())
