"""Tasks: every option reaches the message or the behaviour, on memory:// and sqlite.

Given a task declared with options or sent with call options, when it is published (and run
by an in-process worker), then the message carries Celery's fields and the run sees them in
``self.request``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import wait_for

from taskframe import Signature, Task, Taskframe, signals, states
from taskframe.brokers.base import Message
from taskframe.exceptions import MaxRetriesExceededError, SerializationError, TaskRevokedError
from taskframe.protocol import TaskMessage, decode_task
from taskframe.timeutils import utcnow

ACCEPT = ["json", "msgpack"]


@pytest.fixture(params=["memory", "sqlite"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """The embedded stores only: these tests need a result backend on the broker's URL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def app(broker_url: str) -> Iterator[Taskframe]:
    application = Taskframe("proj", broker=broker_url)
    yield application
    application.close()


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """The headers of every task message published while the test runs."""
    seen: list[dict[str, Any]] = []

    def record(sender: Any = None, headers: Any = None, **_: Any) -> None:
        seen.append(dict(headers))

    signals.before_task_publish.connect(record)
    yield seen
    signals.before_task_publish.disconnect(record)


def take(app: Taskframe, queue: str = "celery") -> Message:
    """The one ready message on ``queue``, received and acked."""
    deliveries = app.broker.receive([queue], 10, 2.0)
    assert len(deliveries) == 1
    deliveries[0].ack()
    return deliveries[0].message


def decoded(message: Message) -> TaskMessage:
    return decode_task(message, ACCEPT)


def test_task_options_reach_the_message(app: Taskframe) -> None:
    @app.task(
        queue="options",
        priority=7,
        serializer="msgpack",
        ignore_result=True,
        time_limit=10,
        soft_time_limit=5,
        expires=30,
    )
    def opt(x: int) -> int:
        return x

    before = utcnow()
    opt.delay(1)
    after = utcnow()

    message = take(app, "options")
    assert message.content_type == "application/x-msgpack"
    assert message.properties["priority"] == 7
    assert message.headers["ignore_result"] is True
    assert message.headers["timelimit"] == [10, 5]
    task = decoded(message)
    assert task.args == [1]
    assert task.expires is not None
    assert before + timedelta(seconds=30) <= task.expires <= after + timedelta(seconds=30)


def test_task_attribute_options(app: Taskframe) -> None:
    @app.task(
        max_retries=5,
        default_retry_delay=3,
        acks_late=True,
        rate_limit="10/s",
        routing_key="rk",
        track_started=True,
    )
    def opt() -> None: ...

    assert (opt.max_retries, opt.default_retry_delay) == (5, 3)
    assert opt.acks_late is True
    assert opt.rate_limit == "10/s"
    assert opt.routing_key == "rk"
    assert opt.track_started is True
    assert isinstance(opt, Task)


def test_max_retries_and_default_retry_delay(
    app: Taskframe, published: list[dict[str, Any]]
) -> None:
    runs: list[int] = []

    @app.task(bind=True, max_retries=2, default_retry_delay=0.01)
    def always_retries(self: Task[[], None]) -> None:
        runs.append(self.request.retries)
        raise self.retry()

    with pytest.raises(MaxRetriesExceededError):
        always_retries.apply(throw=True)
    assert runs == [0, 1, 2]

    @app.task(bind=True, default_retry_delay=120)
    def retries_later(self: Task[[], None]) -> None:
        raise self.retry()

    with app.test_worker():
        before = utcnow()
        result = retries_later.delay()
        wait_for(lambda: result.state == states.RETRY)
    retry_headers = [h for h in published if h["id"] == result.id and h["retries"] == 1]
    assert len(retry_headers) == 1
    eta = datetime.fromisoformat(retry_headers[0]["eta"])
    assert eta >= before + timedelta(seconds=120)
    assert app.broker.size("celery") == 1, "the retry waits in the store, not in a worker"


def test_acks_late_keeps_the_message_until_the_task_is_done(sqlite_url: str) -> None:
    app = Taskframe("proj", broker=sqlite_url)
    release = threading.Event()
    running = threading.Event()

    @app.task(acks_late=True)
    def late() -> str:
        running.set()
        release.wait(10)
        return "done"

    @app.task
    def early() -> str:
        running.set()
        release.wait(10)
        return "done"

    path = sqlite_url.removeprefix("sqlite:///")

    def messages_held() -> int:
        with sqlite3.connect(path) as connection:
            count: int = connection.execute("SELECT count(*) FROM tf_messages").fetchone()[0]
        return count

    with app.test_worker(concurrency=1):
        for task in (late, early):
            running.clear()
            release.clear()
            result = task.delay()
            assert running.wait(10)
            held_while_running = messages_held()
            release.set()
            assert result.get(timeout=10) == "done"
            wait_for(lambda: messages_held() == 0)
            assert held_while_running == (1 if task is late else 0), task.name
    app.close()


def test_expires_is_sent_and_a_late_task_is_revoked_as_expired(app: Taskframe) -> None:
    ran: list[int] = []

    @app.task
    def short_lived() -> None:
        ran.append(1)

    result = short_lived.apply_async(expires=0.05)
    deadline = utcnow() + timedelta(seconds=0.05)
    wait_for(lambda: utcnow() > deadline)
    with app.test_worker(), pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=10)
    assert result.state == states.REVOKED
    assert ran == []


class RecordingTask(Task[Any, Any]):
    """A custom base class whose hooks record what the worker reports."""

    events: list[tuple[str, Any]] = []

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self.events.append(("success", retval))

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.events.append(("failure", type(exc).__name__))

    def after_return(self, status: str, *args: Any) -> None:
        self.events.append(("after_return", status))


def test_base_task_class_hooks_run_in_the_worker(app: Taskframe) -> None:
    RecordingTask.events = []

    @app.task(base=RecordingTask)
    def divide(x: int, y: int) -> float:
        return x / y

    assert isinstance(divide, RecordingTask)
    with app.test_worker():
        assert divide.delay(6, 3).get(timeout=10) == 2
        with pytest.raises(ZeroDivisionError):
            divide.delay(1, 0).get(timeout=10)
        wait_for(lambda: len(RecordingTask.events) == 4)
    assert RecordingTask.events == [
        ("success", 2),
        ("after_return", "SUCCESS"),
        ("failure", "ZeroDivisionError"),
        ("after_return", "FAILURE"),
    ]


def test_apply_async_options_reach_the_message(app: Taskframe) -> None:
    @app.task
    def target(x: int) -> int:
        return x

    @app.task
    def on_error(task_id: str) -> None: ...

    task_id = str(uuid.uuid4())
    target.apply_async(
        (1,),
        queue="explicit",
        priority=3,
        task_id=task_id,
        headers={"tenant": "acme"},
        serializer="msgpack",
        ignore_result=True,
        expires=60,
        link=target.s(10),
        link_error=[on_error.si("x"), on_error.s()],
    )
    message = take(app, "explicit")
    assert message.content_type == "application/x-msgpack"
    assert message.properties["priority"] == 3
    assert message.properties["correlation_id"] == task_id
    assert message.headers["id"] == task_id
    assert message.headers["tenant"] == "acme"
    assert message.headers["ignore_result"] is True
    assert message.headers["expires"] is not None
    task = decoded(message)
    assert task.callbacks == [
        {
            "task": target.name,
            "args": [10],
            "kwargs": {},
            "options": {},
            "subtask_type": None,
            "immutable": False,
        }
    ]
    assert task.errbacks is not None
    assert [(e["task"], e["args"], e["immutable"]) for e in task.errbacks] == [
        (on_error.name, ["x"], True),
        (on_error.name, [], False),
    ]
    assert task.extra_headers["tenant"] == "acme"


def test_countdown_and_eta_are_held_in_the_store(app: Taskframe) -> None:
    @app.task
    def later() -> None: ...

    before = utcnow()
    later.apply_async(countdown=60)
    moment = datetime(2099, 1, 1, tzinfo=timezone.utc)
    later.apply_async(eta=moment)

    assert app.broker.size("celery") == 2
    assert app.broker.receive(["celery"], 10, 0.05) == []
    _, delay, message = app.build_message(later.name, countdown=60)
    assert delay == 60
    eta = datetime.fromisoformat(message.headers["eta"])
    assert before + timedelta(seconds=60) <= eta
    _, delay, message = app.build_message(later.name, eta=moment)
    assert datetime.fromisoformat(message.headers["eta"]) == moment
    assert delay > 60


def test_countdown_runs_after_the_delay_in_a_worker(app: Taskframe) -> None:
    @app.task(bind=True)
    def stamped(self: Task[[], Any]) -> str:
        return str(self.request.eta)

    with app.test_worker():
        result = stamped.apply_async(countdown=0.2)
        eta = result.get(timeout=10)
    assert datetime.fromisoformat(eta) > utcnow() - timedelta(seconds=30)


def test_request_fields_inside_a_worker_run(app: Taskframe) -> None:
    @app.task(bind=True)
    def info(self: Task[..., Any], x: int, *, y: int = 0) -> dict[str, Any]:
        request = self.request
        return {
            "id": request.id,
            "args": request.args,
            "kwargs": request.kwargs,
            "retries": request.retries,
            "eta": request.eta.isoformat() if request.eta else None,
            "expires": request.expires.isoformat() if request.expires else None,
            "hostname": request.hostname,
            "routing_key": request.delivery_info.get("routing_key"),
            "is_eager": request.is_eager,
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "group": request.group,
            "correlation_id": request.correlation_id,
        }

    with app.test_worker(hostname="node1@here"):
        result = info.apply_async(
            (1,), {"y": 2}, countdown=0.01, expires=600, queue="celery", group_id="g-1"
        )
        seen = result.get(timeout=10)
    assert seen["id"] == result.id
    assert seen["args"] == [1]
    assert seen["kwargs"] == {"y": 2}
    assert seen["retries"] == 0
    assert seen["eta"] is not None
    assert seen["expires"] is not None
    assert datetime.fromisoformat(seen["expires"]) > datetime.fromisoformat(seen["eta"])
    assert seen["hostname"] == "node1@here"
    assert seen["routing_key"] == "celery"
    assert seen["is_eager"] is False
    assert seen["root_id"] == result.id
    assert seen["parent_id"] is None
    assert seen["group"] == "g-1"
    assert seen["correlation_id"] == result.id


def test_apply_runs_eagerly_with_worker_semantics(app: Taskframe) -> None:
    RecordingTask.events = []

    @app.task(bind=True, base=RecordingTask)
    def info(self: Task[[int], Any], x: int) -> dict[str, Any]:
        if x < 0:
            raise ValueError("negative")
        return {"eager": self.request.is_eager, "id": self.request.id, "args": self.request.args}

    result = info.apply((5,), task_id="fixed-id")
    assert result.id == "fixed-id"
    assert result.state == states.SUCCESS
    assert result.get() == {"eager": True, "id": "fixed-id", "args": [5]}
    failed = info.apply((-1,))
    assert failed.state == states.FAILURE
    assert isinstance(failed.result, ValueError)
    with pytest.raises(ValueError, match="negative"):
        failed.get()
    with pytest.raises(ValueError, match="negative"):
        info.apply((-1,), throw=True)
    assert [name for name, _ in RecordingTask.events].count("success") == 1
    assert [name for name, _ in RecordingTask.events].count("failure") == 2
    assert app.broker.size("celery") == 0, "apply() publishes nothing"


def test_task_always_eager_runs_delay_in_place(app: Taskframe) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    app.conf.task_always_eager = True
    result = add.delay(2, 3)

    assert result.get() == 5
    assert app.broker.size("celery") == 0


def test_signatures(app: Taskframe) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    partial = add.s(2)
    immutable = add.si(1, 1)
    full = add.signature((4, 4), {}, countdown=0.01)

    assert isinstance(partial, Signature)
    assert (partial.task, partial.args, partial.immutable) == (add.name, (2,), False)
    assert (immutable.args, immutable.immutable) == ((1, 1), True)
    assert full.options == {"countdown": 0.01}
    assert add.subtask((1, 2)).args == (1, 2)
    with app.test_worker():
        assert partial.delay(3).get(timeout=10) == 5
        assert immutable.apply_async((100,)).get(timeout=10) == 2
        assert full.apply_async().get(timeout=10) == 8


def test_retry_keeps_id_and_root_and_sets_parent(
    app: Taskframe, published: list[dict[str, Any]]
) -> None:
    """As Celery: a retry keeps the id and root; its parent is the original parent, or the
    task itself when it had none."""

    @app.task(bind=True, max_retries=3)
    def flaky(self: Task[[], Any]) -> dict[str, Any]:
        if self.request.retries < 2:
            raise self.retry(exc=KeyError("not yet"), countdown=0.01)
        request = self.request
        return {"retries": request.retries, "root": request.root_id, "parent": request.parent_id}

    with app.test_worker():
        top = flaky.delay()
        assert top.get(timeout=10) == {"retries": 2, "root": top.id, "parent": top.id}
        child = flaky.apply_async(root_id="root-1", parent_id="parent-1")
        assert child.get(timeout=10) == {"retries": 2, "root": "root-1", "parent": "parent-1"}

    sent = [h for h in published if h["id"] == top.id]
    assert [(h["retries"], h["root_id"], h["parent_id"]) for h in sent] == [
        (0, top.id, None),
        (1, top.id, top.id),
        (2, top.id, top.id),
    ]
    sent = [h for h in published if h["id"] == child.id]
    assert [(h["retries"], h["root_id"], h["parent_id"]) for h in sent] == [
        (0, "root-1", "parent-1"),
        (1, "root-1", "parent-1"),
        (2, "root-1", "parent-1"),
    ]


def test_retry_stores_retry_state_with_the_reason(app: Taskframe) -> None:
    @app.task(bind=True)
    def waits(self: Task[[], None]) -> None:
        raise self.retry(exc=KeyError("busy"), countdown=300)

    with app.test_worker():
        result = waits.delay()
        wait_for(lambda: result.state == states.RETRY)
    assert isinstance(result.info, KeyError)
    assert "busy" in (result.traceback or "")
    assert app.broker.size("celery") == 1


def test_task_sent_from_a_task_gets_root_and_parent(app: Taskframe) -> None:
    @app.task(bind=True)
    def child(self: Task[[], Any]) -> tuple[str | None, str | None]:
        return self.request.root_id, self.request.parent_id

    @app.task(bind=True)
    def grandchild_sender(self: Task[[], Any]) -> str:
        return child.delay().id

    @app.task(bind=True)
    def parent(self: Task[[], Any]) -> tuple[str, str]:
        return grandchild_sender.delay().id, child.delay().id

    with app.test_worker():
        top = parent.delay()
        middle_id, direct_child_id = top.get(timeout=10)
        assert app.AsyncResult(direct_child_id).get(timeout=10) == [top.id, top.id]
        grandchild_id = app.AsyncResult(middle_id).get(timeout=10)
        assert app.AsyncResult(grandchild_id).get(timeout=10) == [top.id, middle_id]


def test_async_def_tasks_run_eagerly_and_in_a_worker(app: Taskframe) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    @app.task(bind=True)
    async def who(self: Task[[], Any]) -> str | None:
        return self.request.id

    assert add.is_async
    assert add.apply((1, 2)).get() == 3
    with app.test_worker():
        assert add.delay(2, 3).get(timeout=10) == 5
        result = who.delay()
        assert result.get(timeout=10) == result.id


def test_wrong_arguments_fail_at_the_call_site(app: Taskframe) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def bound(self: Task[[int], int], x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"test_task\.add\(\) missing .*'y'"):
        add.delay(1)  # type: ignore[call-arg]  # the point of the test
    with pytest.raises(TypeError, match="unexpected keyword"):
        add.apply_async((1, 2), {"z": 3})
    with pytest.raises(TypeError, match=r"test_task\.bound\(\)"):
        bound.delay(1, 2)  # type: ignore[call-arg]  # the point of the test
    failed = add.apply((1,))
    assert failed.state == states.FAILURE, "apply() fails like a worker run would"
    assert isinstance(failed.result, TypeError)
    assert app.broker.size("celery") == 0
    bound.delay(1)
    assert app.broker.size("celery") == 1


class Opaque:
    """A value json cannot carry."""


def test_unserializable_argument_fails_at_the_call_site_and_publishes_nothing(
    app: Taskframe,
) -> None:
    @app.task
    def store(key: str, value: Any = None) -> None: ...

    with pytest.raises(SerializationError) as positional:
        store.delay(Opaque())  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(SerializationError) as keyword:
        store.apply_async(("k",), {"value": {1, 2}})

    assert "task 'test_task.store'" in str(positional.value)
    assert "argument 'key'" in str(positional.value)
    assert "Opaque" in str(positional.value)
    assert "argument 'value'" in str(keyword.value)
    assert "set" in str(keyword.value)
    assert app.broker.size("celery") == 0


def test_pickle_round_trips_only_when_accepted(app: Taskframe) -> None:
    app.conf.accept_content = ["json", "pickle"]
    app.conf.result_accept_content = ["json", "pickle"]

    @app.task(serializer="pickle")
    def members(values: set[int]) -> list[int]:
        return sorted(values)

    with app.test_worker():
        assert members.delay({3, 1, 2}).get(timeout=10) == [1, 2, 3]


def test_zlib_compression_round_trips_through_a_worker(app: Taskframe) -> None:
    @app.task(compression="zlib")
    def echo(text: str) -> str:
        return text

    payload = "taskframe " * 500
    _, _, message = app.build_message(echo.name, [payload], task=echo)
    assert message.headers["compression"] == "application/x-gzip"
    assert len(message.body) < len(payload)
    with app.test_worker():
        assert echo.delay(payload).get(timeout=10) == payload
        assert echo.apply_async((payload,), compression="zlib").get(timeout=10) == payload


def test_a_task_called_directly_inside_a_run_gets_its_own_request(app: Taskframe) -> None:
    @app.task(bind=True)
    def inner(self: Task[[int], Any], x: int) -> list[Any]:
        request = self.request
        return [request.id, request.called_directly, request.args, x]

    @app.task(bind=True)
    def outer(self: Task[[], Any]) -> list[Any]:
        return [inner(5), self.request.id]

    with app.test_worker():
        result = outer.delay()
        assert result.get(timeout=10) == [[None, True, [5], 5], result.id]
    assert outer.apply().get()[0] == [None, True, [5], 5]
