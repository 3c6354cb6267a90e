"""Faults around a Redis-backed worker, each on a redis-server this module starts itself.

Wrong password and ACL denial end the worker with one clear line and no retries; a server
that is not there at start is retried with backoff and then given up on (or reached once it
appears); a server that crashes and restarts under a running worker and a publishing producer
loses no message and runs no task twice; a foreign entry pushed onto a queue list is
dead-lettered while the worker goes on. The shared Redis is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import IN_CI, free_port, port_open, wait_for
from interop_apps.processes import WorkerProcess

from taskframe import Taskframe
from taskframe.brokers.base import Message
from taskframe.brokers.redis import RedisBroker
from taskframe.exceptions import BrokerConnectionError

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PASSWORD = "s3cret"
WORKER_ARGV = ["-m", "taskframe", "-A", "interop_apps.faults_app", "worker", "-l", "INFO"]


class RedisServer:
    """A redis-server of this test's own: AOF fsynced on every write, so killing it is a crash
    that keeps every acknowledged write, and starting it again on the same files a restart."""

    def __init__(self, workdir: Path, *options: str) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            if IN_CI:
                pytest.fail("redis-server is not installed (CI=true: fault tests need it)")
            pytest.skip("redis-server is not installed")
        self.argv = [
            executable, "--port", str(free_port()), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(workdir), *options,
        ]  # fmt: skip
        self.port = int(self.argv[2])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", self.port))

    def crash(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    instance = RedisServer(tmp_path, "--requirepass", PASSWORD)
    instance.start()
    yield instance
    instance.stop()


def start_worker(tmp_path: Path, url: str, *options: str, retries: int = 3) -> WorkerProcess:
    return WorkerProcess(
        [*WORKER_ARGV, *options],
        tmp_path / f"worker-{time.monotonic_ns()}.log",
        url,
        env={"FAULTS_RUN_LOG": str(tmp_path / "runs.log"), "FAULTS_MAX_RETRIES": str(retries)},
    )


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def runs(tmp_path: Path) -> Counter[int]:
    log = tmp_path / "runs.log"
    text = log.read_text() if log.exists() else ""
    return Counter(int(line) for line in text.split())


def test_wrong_password_stops_the_worker_with_one_clear_line(
    server: RedisServer, tmp_path: Path
) -> None:
    url = f"redis://default:not-the-password@127.0.0.1:{server.port}/0"
    worker = start_worker(tmp_path, url, "-c", "1")
    assert worker.wait_exit(timeout=30) == 1
    output = worker.output()
    assert error_lines(output) == [
        f"Error: authentication failed for redis://default@127.0.0.1:{server.port}/0 "
        "(WRONGPASS invalid username-password pair or user is disabled.); "
        "check the user name and password in the URL"
    ]
    assert "retry" not in output
    assert "Traceback" not in output
    assert "not-the-password" not in output


def test_acl_denial_stops_the_worker_with_one_clear_line(
    server: RedisServer, tmp_path: Path
) -> None:
    admin = redis.Redis(port=server.port, password=PASSWORD)
    admin.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"],
                      channels=["*"], commands=["-@all", "+@connection"])  # fmt: skip
    admin.close()
    worker = start_worker(tmp_path, f"redis://limited:pw@127.0.0.1:{server.port}/0", "-c", "1")
    assert worker.wait_exit(timeout=30) == 1
    output = worker.output()
    [line] = error_lines(output)
    assert line.startswith(f"Error: permission denied for redis://limited@127.0.0.1:{server.port}")
    assert line.endswith("check the user's ACL rules")
    assert "retry" not in output
    assert "Traceback" not in output


def test_unreachable_server_is_retried_then_given_up(tmp_path: Path) -> None:
    port = free_port()
    worker = start_worker(tmp_path, f"redis://127.0.0.1:{port}/0", "-c", "1", retries=3)
    assert worker.wait_exit(timeout=30) == 1
    output = worker.output()
    retries = [line for line in output.splitlines() if "broker connection failed" in line]
    assert [line.split("; retry ")[1].split(" in ")[0] for line in retries] == [
        "1 of 3",
        "2 of 3",
        "3 of 3",
    ]
    assert f"cannot reach Redis at 127.0.0.1:{port}" in retries[0]
    [line] = error_lines(output)
    assert f"cannot reach Redis at 127.0.0.1:{port}" in line
    assert line.endswith("gave up after 4 tries (broker_connection_max_retries=3)")
    assert "Traceback" not in output


def test_worker_started_before_the_server_connects_once_it_is_up(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    url = f"redis://127.0.0.1:{server.port}/0"
    worker = start_worker(tmp_path, url, "-c", "1", retries=200)
    try:
        wait_for(lambda: "broker connection failed" in worker.output(), timeout=20)
        server.start()
        worker.wait_ready()
        app = Taskframe("producer", broker=url, task_ignore_result=True)
        app.send_task("faults.mark", (7,))
        app.broker.close()
        wait_for(lambda: runs(tmp_path) == Counter({7: 1}), timeout=20)
    finally:
        assert worker.stop() == 0
        server.stop()
    assert "connected to the broker after" in worker.output()


def test_foreign_entries_are_dead_lettered_and_the_worker_goes_on(
    server: RedisServer, tmp_path: Path
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/1"
    client = redis.Redis.from_url(url)
    worker = start_worker(tmp_path, url, "-c", "1")
    try:
        worker.wait_ready()
        client.lpush("celery", b"\x00\xffnot json at all", b'{"not": "an envelope"}')
        wait_for(lambda: client.llen("celery.dlq") == 2, timeout=20)
        app = Taskframe("producer", broker=url, task_ignore_result=True)
        app.send_task("faults.mark", (1,))
        app.broker.close()
        wait_for(lambda: runs(tmp_path) == Counter({1: 1}), timeout=20)
        assert client.llen("celery") == 0
        assert client.hlen("unacked") == 0
    finally:
        assert worker.stop() == 0
        client.close()
    assert worker.output().count("Dead-lettered") == 2


def publish_until_stored(app: Taskframe, number: int, failed: threading.Event) -> None:
    """Publish like a careful producer: a publish that raised is sent again, same task id."""
    deadline = time.monotonic() + 60
    task_id = f"restart-{number}"
    while True:
        try:
            app.send_task("faults.mark", (number, 0.005), task_id=task_id)
            return
        except BrokerConnectionError:
            failed.set()
            assert time.monotonic() < deadline, "the server never came back"
            time.sleep(0.05)


def test_server_restart_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    # Given a worker busy with tasks from a producer, on a server we can crash
    server = RedisServer(tmp_path)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    worker = start_worker(tmp_path, url, "-c", "2", retries=200)
    producer = Taskframe("producer", broker=url, task_ignore_result=True)
    failed = threading.Event()
    try:
        worker.wait_ready()
        for number in range(150):
            publish_until_stored(producer, number, failed)
        wait_for(lambda: len(runs(tmp_path)) >= 20, timeout=20)
        # When the server crashes while the worker runs and the producer goes on publishing
        server.crash()

        def restart_once_both_noticed() -> None:
            failed.wait(timeout=30)
            wait_for(lambda: "lost the broker connection" in worker.output(), timeout=30)
            server.start()

        restarter = threading.Thread(target=restart_once_both_noticed)
        restarter.start()
        for number in range(150, 300):
            publish_until_stored(producer, number, failed)
        restarter.join(timeout=60)
        # Then every task runs, each exactly once
        wait_for(lambda: len(runs(tmp_path)) == 300, timeout=60)
    finally:
        producer.broker.close()
        exit_code = worker.stop()
        server.stop()
    counted = runs(tmp_path)
    assert sorted(counted) == list(range(300))
    assert [number for number, count in counted.items() if count != 1] == []
    assert failed.is_set()
    assert exit_code == 0
    output = worker.output()
    assert "lost the broker connection" in output
    assert "reconnected to the broker" in output


def test_an_ack_made_while_redis_is_down_is_sent_once_it_is_back(tmp_path: Path) -> None:
    # Given a message received from a server that then crashes
    server = RedisServer(tmp_path)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    broker = RedisBroker(url)
    try:
        broker.publish("jobs", Message(b"[[], {}, {}]", headers={"id": "a1", "task": "t"}))
        [delivery] = broker.receive(["jobs"], 1, 1.0)
        server.crash()
        # When it is acked while the server is down: no error, the ack is kept
        delivery.ack()
        with pytest.raises(BrokerConnectionError):
            broker.ensure_connection()
        # Then the server, back with its data, sees the ack on reconnection
        server.start()
        client = redis.Redis.from_url(url)
        assert client.hlen("unacked") == 1
        broker.ensure_connection()
        assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)
        client.close()
    finally:
        broker.close()
        server.stop()
