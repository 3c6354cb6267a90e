"""examples/rabbitmq works as its docstring says: a worker started from the folder, then
``python client.py`` prints every task's result, over RabbitMQ with results in Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from interop_apps.processes import run_example

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
    # Given a worker started in the example's folder, when the client runs
    env = {"AMQP_URL": example_amqp_url, "REDIS_URL": redis_url}
    run = run_example(EXAMPLE, env, redis_url, tmp_path / "worker.log")
    # Then it printed each result, on a priority queue, and the worker stopped cleanly
    assert run.client_failure is None, run.client_failure + run.worker_output
    assert run.lines == [
        "add(2, 3) -> 5",
        "add(20, 1) after 1s -> 21",
        "urgent add(1, 1) -> 2",
        "chord -> 20",
        "fetch_price -> apples: 3 (after 1 retry)",
        "report -> report of 120 rows",
    ]
    assert declared_with_max_priority(example_amqp_url)
    assert run.worker_exit_code == 0, run.worker_output
    assert "Traceback" not in run.worker_output
