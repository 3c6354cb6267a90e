"""Shared fixtures: real servers, isolated per test.

A server that does not answer skips its tests locally and fails them when ``CI=true``.
Redis tests use database 9 (flushed before each test); RabbitMQ tests use their own queue
names; SQS tests use a moto server started once per session on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
REDIS_HOST, REDIS_PORT, REDIS_TEST_DB = "127.0.0.1", 6379, 9
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672

CONTRACT_BROKERS = ["memory", "sqlite", "redis", "amqp"]
"""The brokers that run the worker and canvas suites. SQS runs the broker contract suite only
(tests/test_broker_contract.py): moto answers too slowly for those suites to fit CI's budget."""
ALL_BROKERS = [*CONTRACT_BROKERS, "sqs"]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (in CI) when a server is not answering."""
    if port_open(host, port):
        return
    message = f"{name} is not answering on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: servers are required)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until ``condition()`` is truthy, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {condition}")


@pytest.fixture
def redis_url() -> Iterator[str]:
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_TEST_DB)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}"
    client.flushdb()
    client.close()


@pytest.fixture
def redis_raw(redis_url: str) -> Iterator[Any]:
    """redis-py on the test database: an independent client to look at what taskframe wrote."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(params=[3, 2], ids=["resp3", "resp2"])
def resp_protocol(request: pytest.FixtureRequest) -> int:
    """Each RESP version taskframe's Redis client speaks."""
    version: int = request.param
    return version


@pytest.fixture
def rabbitmq_url() -> str:
    require_server("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    return f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//"


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this test session (rabbitmqctl), deleted with all it holds at the
    end, so Celery's default queue names never touch the shared default vhost."""
    require_server("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        if IN_CI:
            pytest.fail("rabbitmqctl is needed to create the test vhost")
        pytest.skip("rabbitmqctl is not installed: cannot create an isolated test vhost")
    vhost = f"taskframe-test-{uuid.uuid4().hex[:10]}"
    for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)
    yield vhost
    subprocess.run([ctl, "-q", "delete_vhost", vhost], check=False, capture_output=True, timeout=60)


@pytest.fixture
def amqp_url(amqp_vhost: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session vhost with queues declared with ``x-max-priority`` 9; every queue a broker
    in this process declares during the test is deleted after it (with its DLQ and delays)."""
    from taskframe.brokers.rabbitmq.broker import RabbitMQBroker

    declared: set[str] = set()
    declare = RabbitMQBroker._declare

    def recording(broker: RabbitMQBroker, session: Any, queue: str) -> None:
        declared.add(queue)
        declare(broker, session, queue)

    monkeypatch.setattr(RabbitMQBroker, "_declare", recording)
    url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{amqp_vhost}?max_priority=9"
    yield url
    cleaner = RabbitMQBroker(url)
    for queue in sorted(declared):
        cleaner.delete_queue(queue)
    cleaner.close()


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """A real SQS-compatible server (moto) on a free loopback port, for the whole session."""
    executable = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(executable).exists():
        if IN_CI:
            pytest.fail("moto_server is not installed (pip install 'moto[server]')")
        pytest.skip("moto_server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def sqs_url(sqs_endpoint: str) -> str:
    """The moto server as kombu spells it (host:port = http endpoint), with a queue-name
    prefix of its own so this test's queues are not another's."""
    host = sqs_endpoint.removeprefix("http://")
    return f"sqs://test:test@{host}/?queue_name_prefix=t{uuid.uuid4().hex[:10]}-"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'taskframe.sqlite3'}"


@pytest.fixture
def memory_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture(params=CONTRACT_BROKERS)
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each contract broker's URL, isolated for this test."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url
