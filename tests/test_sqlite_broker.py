"""What only the sqlite:// store promises: many processes on one file, durability across a
reopen, no loss when a consumer is killed, and clear errors for a path it cannot use."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from taskframe.brokers.base import Delivery, Message
from taskframe.brokers.sqlite import SQLiteBroker
from taskframe.brokers.sqlite_backend import SQLiteBackend
from taskframe.exceptions import BrokerConnectionError, ImproperlyConfigured

# Children inherit the parent's broker object, so the reconnect after fork() is exercised too.
FORK = multiprocessing.get_context("fork")
TOTAL, PRODUCERS, CONSUMERS, BATCH = 2000, 2, 2, 50


def receive_until(broker: SQLiteBroker, queue: str, count: int) -> list[Delivery]:
    """Receive until ``count`` deliveries arrived (acking none), failing after 30 s."""
    received: list[Delivery] = []
    deadline = time.monotonic() + 30
    while len(received) < count and time.monotonic() < deadline:
        received += broker.receive([queue], count - len(received), 0.5)
    assert len(received) == count, f"received {len(received)} of {count}"
    return received


def produce(broker: SQLiteBroker, first: int, count: int) -> None:
    for start in range(first, first + count, BATCH):
        broker.publish_many(
            ("work", Message(str(number).encode()), 0.0, None)
            for number in range(start, min(start + BATCH, first + count))
        )


def consume(broker: SQLiteBroker, done: Any, results: Any) -> None:
    """Receive and ack in batches until told that every message was seen."""
    seen: list[int] = []
    while not done.is_set():
        deliveries = broker.receive(["work"], BATCH, 0.05)
        if deliveries:
            seen += [int(delivery.message.body) for delivery in deliveries]
            broker.ack_many(deliveries)
            results.put(len(deliveries))
    results.put(seen)


def test_many_processes_deliver_every_message_exactly_once(sqlite_url: str) -> None:
    # Given one file used by the parent before two producers and two consumers fork
    broker = SQLiteBroker(sqlite_url)
    broker.ensure_connection()
    done, counts = FORK.Event(), FORK.Queue()
    share = TOTAL // PRODUCERS
    producers = [
        FORK.Process(target=produce, args=(broker, index * share, share))
        for index in range(PRODUCERS)
    ]
    consumers = [
        FORK.Process(target=consume, args=(broker, done, counts)) for _ in range(CONSUMERS)
    ]
    for process in producers + consumers:
        process.start()
    # When all messages were received and acked
    received = 0
    while received < TOTAL:
        received += counts.get(timeout=60)
    done.set()
    seen: list[int] = []
    for _ in consumers:
        item = counts.get(timeout=30)
        while isinstance(item, int):
            item = counts.get(timeout=30)
        seen += item
    for process in producers + consumers:
        process.join(timeout=30)
    # Then each message was delivered exactly once, and none is left
    assert [process.exitcode for process in producers + consumers] == [0] * 4
    assert sorted(seen) == list(range(TOTAL))
    assert broker.size("work") == 0
    assert broker.receive(["work"], 1, 0.0) == []
    broker.close()


def test_messages_and_results_survive_a_reopen(sqlite_url: str) -> None:
    # Given messages, a dead letter and a result written by a store that is then closed
    broker = SQLiteBroker(sqlite_url)
    broker.publish("jobs", Message(b"low"), priority=1)
    broker.publish("jobs", Message(b"high"), priority=8)
    broker.publish("jobs", Message(b"later"), delay=0.3)
    broker.publish("poison", Message(b"bad"))
    [poison] = broker.receive(["poison"], 1, 5.0)
    broker.dead_letter(poison, "undecodable")
    backend = SQLiteBackend(sqlite_url)
    backend.set("task-1", b"done", expires=None)
    broker.close()
    backend.close()
    # When the file is opened again
    reopened = SQLiteBroker(sqlite_url)
    # Then everything is still there, in the same order
    assert reopened.size("jobs") == 3
    first = reopened.receive(["jobs"], 2, 5.0)
    assert [delivery.message.body for delivery in first] == [b"high", b"low"]
    later = receive_until(reopened, "jobs", 1)
    assert later[0].message.body == b"later"
    assert [item.reason for item in reopened.dead_letters("poison")] == ["undecodable"]
    reopened_backend = SQLiteBackend(sqlite_url)
    assert reopened_backend.get("task-1") == b"done"
    reopened.close()
    reopened_backend.close()


def hold_messages(url: str, ready: Any) -> None:
    """Receive every message without acking, say so, then wait to be killed."""
    broker = SQLiteBroker(url, transport_options={"visibility_timeout": 1.0})
    held = broker.receive(["tasks"], 5, 10.0)
    ready.send(len(held))
    signal.pause()


def test_messages_of_a_killed_consumer_are_delivered_again(sqlite_url: str) -> None:
    # Given a consumer process that holds unacked messages
    broker = SQLiteBroker(sqlite_url, transport_options={"visibility_timeout": 1.0})
    broker.publish_many(("tasks", Message(f"task{n}".encode()), 0.0, None) for n in range(5))
    parent_end, child_end = FORK.Pipe()
    consumer = FORK.Process(target=hold_messages, args=(sqlite_url, child_end))
    consumer.start()
    assert parent_end.poll(30)
    assert parent_end.recv() == 5
    # When it is killed with SIGKILL
    assert consumer.pid is not None
    os.kill(consumer.pid, signal.SIGKILL)
    consumer.join(timeout=10)
    assert consumer.exitcode == -signal.SIGKILL
    # Then after the visibility timeout every message comes back, marked redelivered
    redelivered = receive_until(broker, "tasks", 5)
    assert sorted(delivery.message.body for delivery in redelivered) == [
        f"task{n}".encode() for n in range(5)
    ]
    assert all(delivery.redelivered for delivery in redelivered)
    broker.ack_many(redelivered)
    assert broker.size("tasks") == 0
    broker.close()


def test_rate_limits_are_shared_by_every_instance(sqlite_url: str) -> None:
    first, second = SQLiteBroker(sqlite_url), SQLiteBroker(sqlite_url)
    assert first.acquire_rate_token("tasks.send_mail", rate=0.1, capacity=1) == 0.0
    assert second.acquire_rate_token("tasks.send_mail", rate=0.1, capacity=1) > 0.0
    first.close()
    second.close()


@pytest.mark.parametrize(
    "path",
    ["/nonexistent-taskframe-dir/sub/broker.sqlite3", "/proc/taskframe-broker.sqlite3"],
    ids=["missing-directory", "unwritable-directory"],
)
def test_a_path_that_cannot_be_used_is_named_in_the_error(path: str) -> None:
    broker = SQLiteBroker(f"sqlite:///{path}")
    with pytest.raises(BrokerConnectionError, match=path):
        broker.ensure_connection()


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(BrokerConnectionError, match=str(tmp_path)):
        SQLiteBroker(f"sqlite:///{tmp_path}").publish("q", Message(b"x"))


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite://host/db", "sqlite:///:memory:"]
)
def test_a_url_without_a_file_is_refused(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="does not name a file"):
        SQLiteBroker(url)


def test_relative_url_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = SQLiteBroker("sqlite:///taskframe.sqlite3")
    broker.publish("q", Message(b"x"))
    assert broker.path == str(tmp_path / "taskframe.sqlite3")
    assert (tmp_path / "taskframe.sqlite3").exists()
    broker.close()
