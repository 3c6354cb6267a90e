"""The ``taskframe`` command: ``-A`` app lookup, ``call``, ``result``, ``purge``, ``--help``.

Given a project module in a temporary working directory, when the CLI is invoked (click's
runner in this process; a subprocess for ``python -m taskframe``), then it finds the app the
way Celery does and drives the same broker and backend the Python API uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from taskframe import Taskframe, states
from taskframe.cli import main
from taskframe.cli_support import find_app
from taskframe.protocol import decode_task

REPO = Path(__file__).resolve().parent.parent

APP_SOURCE = """\
from taskframe import Taskframe

{name} = Taskframe("proj", broker="{url}")


@{name}.task
def add(x, y):
    return x + y
"""


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> Iterator[Callable[..., str]]:
    """Writes a project module into the working directory; returns its unique name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for variable in ("TASKFRAME_BROKER_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(variable, raising=False)
    written: list[str] = []

    def write(attribute: str = "app", source: str | None = None) -> str:
        name = f"tfproj_{uuid.uuid4().hex[:10]}"
        text = source if source is not None else APP_SOURCE
        (tmp_path / f"{name}.py").write_text(text.format(name=attribute, url=sqlite_url))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.mark.parametrize("attribute", ["app", "celery", "taskframe", "my_app"])
def test_app_lookup_by_module(project: Callable[..., str], attribute: str) -> None:
    module = project(attribute)

    found = find_app(module)

    assert isinstance(found, Taskframe)
    assert found is getattr(sys.modules[module], attribute)


def test_app_lookup_by_module_and_attribute(project: Callable[..., str]) -> None:
    module = project(
        source="from taskframe import Taskframe\n"
        "first = Taskframe('one', broker='{url}')\n"
        "second = Taskframe('two', broker='{url}')\n"
    )

    assert find_app(f"{module}:second").main == "two"
    assert find_app(f"{module}.first").main == "one"


def test_app_lookup_in_celery_submodule(project: Callable[..., str], tmp_path: Path) -> None:
    package = f"tfpkg_{uuid.uuid4().hex[:10]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "celery.py").write_text(
        "from taskframe import Taskframe\napp = Taskframe('pkg', broker='memory://')\n"
    )

    try:
        assert find_app(package).main == "pkg"
    finally:
        sys.modules.pop(f"{package}.celery", None)
        sys.modules.pop(package, None)


def test_app_lookup_errors_are_clear(project: Callable[..., str]) -> None:
    ambiguous = project(
        source="from taskframe import Taskframe\n"
        "one = Taskframe('one', broker='{url}')\n"
        "two = Taskframe('two', broker='{url}')\n"
    )
    module = project()

    result = CliRunner().invoke(main, ["-A", ambiguous, "result", "x"])
    assert result.exit_code == 2
    assert f"no taskframe app found in module {ambiguous!r}" in result.output
    result = CliRunner().invoke(main, ["-A", "tf_no_such_module_xyz", "result", "x"])
    assert result.exit_code == 2
    assert "cannot import app module 'tf_no_such_module_xyz'" in result.output
    result = CliRunner().invoke(main, ["-A", f"{module}:missing", "result", "x"])
    assert result.exit_code == 2
    assert f"{module}:missing is not a taskframe app" in result.output
    result = CliRunner().invoke(main, ["result", "x"])
    assert result.exit_code == 2
    assert "missing -A/--app" in result.output


def test_call_prints_the_id_and_sends_the_options(project: Callable[..., str]) -> None:
    module = project()

    result = invoke(
        "-A",
        module,
        "call",
        f"{module}.add",
        "--args",
        "[2, 3]",
        "--kwargs",
        "{}",
        "--countdown",
        "0",
        "--queue",
        "cli_queue",
    )

    task_id = result.output.strip()
    assert result.exit_code == 0
    assert str(uuid.UUID(task_id)) == task_id
    app = find_app(module)
    deliveries = app.broker.receive(["cli_queue"], 10, 2.0)
    assert len(deliveries) == 1
    message = decode_task(deliveries[0].message, ["json"])
    assert (message.id, message.task, message.args, message.kwargs) == (
        task_id,
        f"{module}.add",
        [2, 3],
        {},
    )
    deliveries[0].ack()


def test_call_with_countdown_and_kwargs_is_delayed(project: Callable[..., str]) -> None:
    module = project()

    result = invoke(
        "-A", module, "call", f"{module}.add", "--kwargs", '{"x": 1, "y": 2}', "--countdown", "60"
    )

    assert result.exit_code == 0
    app = find_app(module)
    assert app.broker.size("celery") == 1
    assert app.broker.receive(["celery"], 10, 0.05) == []


def test_call_rejects_arguments_that_are_not_json(project: Callable[..., str]) -> None:
    module = project()

    result = CliRunner().invoke(main, ["-A", module, "call", "x.add", "--args", "[1,"])

    assert result.exit_code == 2
    assert "must be JSON" in result.output
    assert find_app(module).broker.size("celery") == 0


def test_result_prints_state_and_value(project: Callable[..., str]) -> None:
    module = project()
    app = find_app(module)
    pending_id = str(uuid.uuid4())
    done_id = str(uuid.uuid4())
    app.store_result(done_id, states.SUCCESS, {"total": 4})

    assert invoke("-A", module, "result", pending_id).output.strip() == "PENDING"
    assert invoke("-A", module, "result", done_id).output.strip() == "SUCCESS {'total': 4}"


def test_result_wait_waits_for_the_worker(project: Callable[..., str]) -> None:
    module = project()
    app = find_app(module)
    sent = invoke("-A", module, "call", f"{module}.add", "--args", "[20, 22]").output.strip()

    with app.test_worker():
        result = invoke("-A", module, "result", sent, "--wait", "--timeout", "10")

    assert result.exit_code == 0
    assert result.output.strip() == "SUCCESS 42"


def test_purge_asks_unless_forced(project: Callable[..., str]) -> None:
    module = project()
    app = find_app(module)
    for queue in ("celery", "celery", "other"):
        app.send_task(f"{module}.add", [1, 1], queue=queue)

    declined = CliRunner().invoke(main, ["-A", module, "purge"], input="n\n")
    assert declined.exit_code == 1
    assert "Delete all waiting messages from celery" in declined.output
    assert app.broker.size("celery") == 2

    accepted = invoke("-A", module, "purge", input="y\n")
    assert accepted.exit_code == 0
    assert "Purged 2 messages from celery." in accepted.output
    assert app.broker.size("celery") == 0
    assert app.broker.size("other") == 1

    forced = invoke("-A", module, "purge", "-f", "-Q", "other,celery")
    assert forced.exit_code == 0
    assert "Delete all" not in forced.output
    assert "Purged 1 message from other, celery." in forced.output
    assert app.broker.size("other") == 0


def test_help_everywhere() -> None:
    top = invoke("--help")
    assert top.exit_code == 0
    assert {"worker", "call", "result", "purge"} <= set(main.commands)
    for name in main.commands:
        assert name in top.output
        for flag in ("--help", "-h"):
            result = invoke(name, flag)
            assert result.exit_code == 0, name
            assert f"Usage: main {name}" in result.output


def test_python_dash_m_taskframe_help() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "taskframe", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )

    assert completed.returncode == 0, completed.stderr
    assert "Usage:" in completed.stdout
    assert "worker" in completed.stdout


def test_taskframe_errors_print_one_line_and_exit_1(project: Callable[..., str]) -> None:
    module = project(
        source="from taskframe import Taskframe\napp = Taskframe('p', broker='nosuch://x')\n"
    )

    completed = subprocess.run(
        [sys.executable, "-m", "taskframe", "-A", module, "call", "any.task"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 1
    assert completed.stderr.startswith("Error: unknown broker URL scheme 'nosuch'")
    assert "Traceback" not in completed.stderr
    assert json.dumps("sqlite://")[1:-1] in completed.stderr


def test_an_import_error_inside_the_celery_submodule_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    package = f"tfpkg_{uuid.uuid4().hex[:10]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "celery.py").write_text("import tf_missing_dependency_xyz\n")

    try:
        with pytest.raises(click.UsageError, match="tf_missing_dependency_xyz"):
            find_app(package)
    finally:
        sys.modules.pop(package, None)
