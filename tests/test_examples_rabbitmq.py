"""examples/rabbitmq works as its docstring says: a worker started from the folder, then
``python client.py`` prints every task's result, over RabbitMQ with results in Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from interop_apps.processes import WorkerProcess

from taskframe.brokers.rabbitmq import RabbitMQBroker

pytestmark = [pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rabbitmq"
QUEUE = "rabbitmq-example"


@pytest.fixture
def example_amqp_url(amqp_url: str) -> Iterator[str]:
    """The session's vhost without the fixture's ``max_priority``: the example sets its own.
    The worker and client are other processes, so the example's queue is deleted here."""
    url = amqp_url.split("?", 1)[0]
    yield url
    cleaner = RabbitMQBroker(url)
    cleaner.delete_queue(QUEUE)
    cleaner.close()


def declared_with_max_priority(url: str) -> bool:
    """Whether the example's queue exists with ``x-max-priority`` 9 (RabbitMQ accepts a
    re-declaration only with the very arguments the queue has)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(QUEUE, passive=True)
        channel.queue_declare(QUEUE, durable=True, arguments={"x-max-priority": 9})
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        connection.close()


def test_rabbitmq_example_prints_every_result(
    example_amqp_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = {"AMQP_URL": example_amqp_url, "REDIS_URL": redis_url, "PYTHONDONTWRITEBYTECODE": "1"}
    # Given a worker started in the example's folder, as the docstring says
    worker = WorkerProcess(
        ["-m", "taskframe", "-A", "tasks", "worker", "-c", "2", "-l", "INFO"],
        tmp_path / "worker.log",
        redis_url,
        cwd=EXAMPLE,
        env=env,
    )
    try:
        worker.wait_ready()
        # When the client runs
        completed = subprocess.run(
            [sys.executable, "client.py"],
            cwd=EXAMPLE,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        exit_code = worker.stop()
    # Then it printed each result, on a priority queue, and the worker stopped cleanly
    assert completed.returncode == 0, completed.stderr + worker.output()
    assert completed.stdout.splitlines() == [
        "add(2, 3) -> 5",
        "add(20, 1) after 1s -> 21",
        "urgent add(1, 1) -> 2",
        "chord -> 20",
        "fetch_price -> apples: 3 (after 1 retry)",
        "report -> report of 120 rows",
    ]
    assert declared_with_max_priority(example_amqp_url)
    assert exit_code == 0, worker.output()
    assert "Traceback" not in worker.output()
