"""Emptying the stores between frameworks, without touching anything the run does not own.

Redis: every key of the run's db except kombu's ``_kombu.binding*`` sets, which a live Celery
producer has declared once and would not write again. RabbitMQ: purge (and at the end delete)
the named queues; a queue that does not exist is skipped. SQS (moto): purge, and at the end
delete, every queue whose name starts with the run's prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import boto3
import pika
import pika.exceptions
import redis

__all__ = [
    "amqp_available",
    "clear_redis",
    "delete_amqp_queues",
    "delete_sqs_queues",
    "purge_amqp_queues",
    "purge_sqs_queues",
]


def clear_redis(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        doomed = [
            key for key in client.scan_iter(count=1000) if not key.startswith(b"_kombu.binding")
        ]
        for start in range(0, len(doomed), 1000):
            client.delete(*doomed[start : start + 1000])
    finally:
        client.close()


def _each_queue(url: str, queues: Sequence[str], delete: bool) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                if delete:
                    channel.queue_delete(queue)
                else:
                    channel.queue_purge(queue)
            except pika.exceptions.ChannelClosedByBroker:
                channel = connection.channel()
    finally:
        connection.close()


def purge_amqp_queues(url: str, queues: Sequence[str]) -> None:
    _each_queue(url, queues, delete=False)


def delete_amqp_queues(url: str, queues: Sequence[str]) -> None:
    _each_queue(url, queues, delete=True)


def amqp_available(url: str) -> str | None:
    """None when RabbitMQ answers, else why not."""
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.AMQPError as exc:
        return f"RabbitMQ unreachable: {exc!r}"
    return None


def _sqs_queues(endpoint: str, prefix: str) -> tuple[Any, list[str]]:
    client = boto3.client(
        "sqs",
        endpoint_url=f"http://{endpoint}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    urls: list[str] = client.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
    return client, urls


def purge_sqs_queues(endpoint: str, prefix: str) -> None:
    client, urls = _sqs_queues(endpoint, prefix)
    for url in urls:
        client.purge_queue(QueueUrl=url)


def delete_sqs_queues(endpoint: str, prefix: str) -> None:
    client, urls = _sqs_queues(endpoint, prefix)
    for url in urls:
        client.delete_queue(QueueUrl=url)
