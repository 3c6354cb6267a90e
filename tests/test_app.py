"""The app: construction, defaults, task registry and naming, shared tasks, routing.

Given an app, when tasks are registered and sent, then they get Celery's names, land on the
queue the routes choose, and an unknown name fails with a message that lists the known ones.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

import taskframe
from taskframe import Celery, Taskframe, shared_task
from taskframe.exceptions import BrokerConnectionError, ImproperlyConfigured, NotRegistered


@pytest.fixture(params=["memory", "sqlite"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """The embedded stores only: these tests need a result backend on the broker's URL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(autouse=True)
def _no_env_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TASKFRAME_BROKER_URL",
        "CELERY_BROKER_URL",
        "TASKFRAME_RESULT_BACKEND",
        "CELERY_RESULT_BACKEND",
    ):
        monkeypatch.delenv(name, raising=False)


def write_module(directory: Path, source: str) -> str:
    """A fresh importable module in ``directory``; returns its (unique) name."""
    name = f"tf_mod_{uuid.uuid4().hex[:12]}"
    (directory / f"{name}.py").write_text(source)
    return name


def test_constructor_arguments_and_celery_alias(memory_url: str) -> None:
    app = Celery("proj", broker=memory_url, backend=memory_url, include=["a.b"])

    assert Celery is Taskframe
    assert isinstance(app, Taskframe)
    assert app.main == "proj"
    assert app.broker_url == memory_url
    assert app.result_backend_url == memory_url
    assert tuple(app.conf.include) == ("a.b",)


def test_default_broker_is_sqlite_file_in_cwd_and_backend_shares_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = Taskframe("proj")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert app.broker_url == "sqlite:///taskframe.sqlite3"
    assert app.result_backend_url == "sqlite:///taskframe.sqlite3"

    with app.test_worker():
        assert add.delay(2, 2).get(timeout=10) == 4

    database = tmp_path / "taskframe.sqlite3"
    assert database.exists()
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "tf_messages" in tables
    assert any(name.startswith("tf_result") for name in tables)
    app.close()


def test_include_and_imports_are_imported_on_finalize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_url: str
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    included = write_module(
        tmp_path,
        "from taskframe.context import current_app\n"
        "@current_app().task\n"
        "def mul(x, y):\n    return x * y\n",
    )
    imported = write_module(
        tmp_path,
        "from taskframe.context import current_app\n"
        "@current_app().task(name='custom.sub')\n"
        "def sub(x, y):\n    return x - y\n",
    )
    app = Taskframe("proj", broker=memory_url, include=[included])
    app.conf.imports = (imported,)

    assert f"{included}.mul" not in app.tasks
    app.finalize()

    assert f"{included}.mul" in app.tasks
    assert "custom.sub" in app.tasks
    assert app.get_task("custom.sub")(5, 3) == 2


def test_get_task_finalizes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_url: str
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    included = write_module(
        tmp_path,
        "from taskframe.context import current_app\n"
        "@current_app().task\ndef ping():\n    return 'pong'\n",
    )
    app = Taskframe("proj", broker=memory_url, include=[included])

    assert app.get_task(f"{included}.ping")() == "pong"


def test_task_names(memory_url: str) -> None:
    app = Taskframe("proj", broker=memory_url)

    @app.task
    def plain() -> None: ...

    @app.task(name="explicit.name")
    def named() -> None: ...

    namespace: dict[str, Any] = {"__name__": "__main__", "app": app}
    exec("@app.task\ndef in_main():\n    return 1\n", namespace)

    assert plain.name == f"{__name__}.plain"
    assert named.name == "explicit.name"
    assert namespace["in_main"].name == "proj.in_main"
    assert set(app.tasks) >= {f"{__name__}.plain", "explicit.name", "proj.in_main"}


def test_registering_the_same_function_twice_returns_the_same_task(memory_url: str) -> None:
    app = Taskframe("proj", broker=memory_url)

    def double(x: int) -> int:
        return 2 * x

    assert app.task(double) is app.task(double)


def test_get_task_unknown_name_lists_known_tasks(memory_url: str) -> None:
    app = Taskframe("myapp", broker=memory_url)

    @app.task(name="known.one")
    def one() -> None: ...

    with pytest.raises(NotRegistered) as info:
        app.get_task("no.such.task")

    message = str(info.value)
    assert "'no.such.task'" in message
    assert "'myapp'" in message
    assert "known.one" in message


def test_shared_task_without_and_with_arguments(memory_url: str) -> None:
    first = Taskframe("first", broker=memory_url)
    suffix = uuid.uuid4().hex[:8]

    @shared_task
    def shared_plain(x: int) -> int:
        return x + 1

    @shared_task(name=f"shared.bound.{suffix}", bind=True, max_retries=7)
    def shared_bound(self: Any, x: int) -> str:
        return f"{self.name}:{x}"

    assert shared_plain.app is first
    assert shared_plain(1) == 2
    assert shared_bound.max_retries == 7
    assert shared_bound(3) == f"shared.bound.{suffix}:3"

    later = Taskframe("later", broker=memory_url)
    later.finalize()

    assert later.tasks[shared_plain.name].app is later
    assert later.tasks[f"shared.bound.{suffix}"].app is later
    assert later.tasks[f"shared.bound.{suffix}"](4) == f"shared.bound.{suffix}:4"
    assert first.tasks[f"shared.bound.{suffix}"].app is first
    assert shared_bound.app is later, "a shared task is the current app's task"


def test_shared_task_runs_on_an_app_created_later(memory_url: str) -> None:
    Taskframe("declaring", broker=memory_url)
    name = f"shared.later.{uuid.uuid4().hex[:8]}"

    @shared_task(name=name)
    def triple(x: int) -> int:
        return 3 * x

    later = Taskframe("later", broker=memory_url)
    with later.test_worker():
        assert later.send_task(name, [3]).get(timeout=10) == 9


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ({"proj.a": {"queue": "qa"}}, {"proj.a": "qa", "proj.b": "celery"}),
        ({"proj.*": "glob"}, {"proj.a": "glob", "proj.b": "glob"}),
        ({"proj.b": {"routing_key": "by_key"}}, {"proj.a": "celery", "proj.b": "by_key"}),
        ({re.compile(r"proj\.b"): {"queue": "regex"}}, {"proj.a": "celery", "proj.b": "regex"}),
        (
            lambda name, args, kwargs, options, task=None, **kw: (
                {"queue": "fn"} if name == "proj.b" else None
            ),
            {"proj.a": "celery", "proj.b": "fn"},
        ),
        (
            [{"proj.a": "first"}, lambda name, *a, **kw: "second", {"proj.b": "never"}],
            {"proj.a": "first", "proj.b": "second"},
        ),
    ],
    ids=["dict", "glob", "routing_key", "regex", "function", "list"],
)
def test_task_routes(routes: Any, expected: dict[str, str], broker_url: str) -> None:
    app = Taskframe("proj", broker=broker_url)
    app.conf.task_routes = routes

    @app.task(name="proj.a")
    def a() -> None: ...

    @app.task(name="proj.b")
    def b() -> None: ...

    for task in (a, b):
        task.delay()
    for name, queue in expected.items():
        assert app.build_message(name)[0] == queue
    for queue in set(expected.values()):
        assert app.broker.size(queue) == list(expected.values()).count(queue)
    app.close()


def test_queue_option_and_explicit_queue_beat_routes(broker_url: str) -> None:
    app = Taskframe("proj", broker=broker_url)
    app.conf.task_routes = {"proj.*": {"queue": "routed"}}

    @app.task(name="proj.fixed", queue="fixed")
    def fixed() -> None: ...

    @app.task(name="other.unrouted", queue="own")
    def unrouted() -> None: ...

    fixed.apply_async(queue="explicit")
    unrouted.delay()
    fixed.delay()

    assert app.broker.size("explicit") == 1
    assert app.broker.size("own") == 1
    assert app.broker.size("routed") == 1, "a route wins over the task's queue, as in Celery"
    app.close()


def test_routing_key_without_queue_names_the_queue(broker_url: str) -> None:
    """Celery publishes to the default exchange, where the routing key is the queue name."""
    app = Taskframe("proj", broker=broker_url)

    @app.task(routing_key="by_key")
    def keyed() -> None: ...

    @app.task
    def plain() -> None: ...

    keyed.delay()
    plain.apply_async(routing_key="call_key")

    assert app.broker.size("by_key") == 1
    assert app.broker.size("call_key") == 1
    assert app.broker.size("celery") == 0
    app.close()


def test_result_backend_disabled(broker_url: str) -> None:
    app = Taskframe("proj", broker=broker_url, backend="disabled")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert app.result_backend_url is None
    assert app.backend is None
    with app.test_worker() as worker:
        result = add.delay(1, 2)
        with pytest.raises(ImproperlyConfigured, match="result_backend"):
            result.get(timeout=1)
        wait_for(lambda: worker.processed == 1)
    assert app.broker.size("celery") == 0
    app.close()


def test_current_app_is_the_last_created(memory_url: str) -> None:
    Taskframe("one", broker=memory_url)
    second = Taskframe("two", broker=memory_url)

    assert taskframe.current_app() is second
    assert repr(second).startswith("<Taskframe two")


def test_unknown_broker_scheme_lists_the_known_ones() -> None:
    app = Taskframe("proj", broker="nosuch://somewhere")

    with pytest.raises(ImproperlyConfigured) as info:
        app.broker  # noqa: B018 - the property makes the broker

    message = str(info.value)
    assert "unknown broker URL scheme 'nosuch'" in message
    for known in ("memory://", "sqlite://", "redis://", "amqp://", "sqs://"):
        assert known in message


@pytest.mark.redis
def test_the_redis_broker_and_backend_need_no_client_library(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # Given an installation where redis-py cannot be imported
    for name in list(sys.modules):
        if name.startswith("taskframe.brokers.redis"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    app = Taskframe("proj", broker=redis_url, backend=redis_url)

    @app.task(name="no_client_library.echo")
    def echo(x: int) -> int:
        return x

    # Then tasks go out and results are stored and read through taskframe's own client
    app.broker.purge("celery")
    echo.delay(7)
    [delivery] = app.broker.receive(["celery"], 1, 1.0)
    assert delivery.message.headers["task"] == "no_client_library.echo"
    delivery.ack()
    app.backend.set("no-client-library", b"{}", expires=60)
    assert app.backend.get("no-client-library") == b"{}"
    app.close()


def test_unreachable_sqlite_path_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "tasks.sqlite3"
    app = Taskframe("proj", broker=f"sqlite:///{path}")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(BrokerConnectionError) as info:
        app.broker.ensure_connection()
    assert str(path) in str(info.value)
    with pytest.raises(BrokerConnectionError, match=re.escape(str(path))):
        add.delay(1, 2)
    with pytest.raises(BrokerConnectionError, match=re.escape(str(path))):
        app.AsyncResult("some-id").state  # noqa: B018 - reading the state queries the backend
