"""The ``worker``, ``revoke`` and ``dlq`` commands, on a sqlite project in a temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import wait_for

from taskframe import Taskframe, states
from taskframe.cli import main
from taskframe.worker import Worker
from taskframe.worker.cli import banner
from taskframe.worker.revoke import load_revoked

PROJECT = textwrap.dedent("""
    import os

    from taskframe import Taskframe
    from taskframe.exceptions import Reject

    app = Taskframe("cliproj", broker=os.environ["TF_BROKER"])


    @app.task
    def add(x, y):
        return x + y


    @app.task
    async def async_add(x, y):
        return x + y


    @app.task
    def refuse(reason):
        raise Reject(reason, requeue=False)
""")


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "cliproj.py").write_text(PROJECT)
        self.url = f"sqlite:///{root / 'store.sqlite3'}"
        self.env = {**os.environ, "TF_BROKER": self.url, "PYTHONPATH": str(root)}
        self.app = Taskframe("cliproj", broker=self.url, set_as_current=False)

    def run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskframe", "-A", "cliproj", *arguments],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def invoke(self, *arguments: str, input: str | None = None) -> str:
        runner = CliRunner()
        saved = os.environ.get("TF_BROKER")
        os.environ["TF_BROKER"] = self.url
        sys.path.insert(0, str(self.root))
        sys.modules.pop("cliproj", None)
        try:
            result = runner.invoke(main, ["-A", "cliproj", *arguments], input=input)
        finally:
            sys.path.remove(str(self.root))
            if saved is None:
                os.environ.pop("TF_BROKER", None)
            else:
                os.environ["TF_BROKER"] = saved
        assert result.exit_code == 0, result.output
        return result.output


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    project = Project(tmp_path)
    yield project
    project.app.close()


def test_banner_masks_the_broker_password() -> None:
    app = Taskframe("bannerapp", broker="memory://", set_as_current=False)
    app.conf.broker_url = "memory://"
    node = Worker(app, pool="solo", queues=["high", "low"])
    app.conf.broker_url = "redis://user:s3cret@example.com:6379/0"
    text = banner(app, node)
    assert "s3cret" not in text and "redis://user:**@example.com:6379/0" in text
    assert ".> high" in text and ".> low" in text and "concurrency: 1 (solo)" in text


@pytest.mark.parametrize("pool", ["prefork", "asyncio"])
def test_burst_worker_runs_tasks_and_logs_their_names_and_ids(project: Project, pool: str) -> None:
    sync = project.app.send_task("cliproj.add", [2, 3])
    coroutine = project.app.send_task("cliproj.async_add", [4, 5])
    finished = project.run("worker", "--burst", "-P", pool, "-c", "2")
    assert finished.returncode == 0, finished.stderr
    assert sync.get(timeout=5) == 5 and coroutine.get(timeout=5) == 9
    assert f"Task cliproj.add[{sync.id}] succeeded" in finished.stderr
    assert f"({pool})" in finished.stderr


def test_sighup_replaces_children_and_sigterm_stops(project: Project) -> None:
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskframe",
            "-A",
            "cliproj",
            "worker",
            "-c",
            "2",
            "-n",
            "hup@test",
            "-l",
            "WARNING",
        ],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        inspect = project.app.control.inspect(destination=["hup@test"], timeout=5)

        def children() -> set[int]:
            stats = inspect.stats()
            return set(stats["hup@test"]["pool"]["processes"]) if stats else set()

        wait_for(lambda: len(children()) == 2, timeout=20)
        before = children()
        worker.send_signal(signal.SIGHUP)
        wait_for(lambda: len(children()) == 2 and not children() & before, timeout=20)
        assert project.app.send_task("cliproj.add", [1, 1]).get(timeout=10) == 2
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_revoke_command_is_stored_for_workers_started_later(project: Project) -> None:
    result = project.app.send_task("cliproj.add", [1, 2])
    output = project.invoke("revoke", result.id)
    assert "1 task revoked" in output
    assert result.id in load_revoked(project.app)
    finished = project.run("worker", "--burst", "-P", "solo")
    assert finished.returncode == 0, finished.stderr
    assert result.state == states.REVOKED


def test_dlq_list_show_replay_purge(project: Project) -> None:
    first = project.app.send_task("cliproj.refuse", ["bad"])
    second = project.app.send_task("cliproj.refuse", ["worse"])
    assert project.run("worker", "--burst", "-P", "solo").returncode == 0
    listing = project.invoke("dlq", "list")
    assert f"cliproj.refuse[{first.id}]" in listing and f"cliproj.refuse[{second.id}]" in listing
    assert "rejected" in listing
    shown = project.invoke("dlq", "show", first.id)
    assert "reason:      rejected" in shown and "exception:   Reject('bad', False)" in shown
    parked = project.app.broker.dead_letters("celery")
    assert "Replayed 1 message to celery." in project.invoke("dlq", "replay", parked[0].id)
    assert project.app.broker.size("celery") == 1
    assert "Purged 1 dead letter from celery." in project.invoke("dlq", "purge", "-f")
    assert project.app.broker.dead_letters("celery") == []
    assert "Replayed 0 messages to celery." in project.invoke("dlq", "replay", "--all")
