"""Signals (receivers, sender filter, error isolation) and the task logger (names, formatter).

The task logger's tests live here with the other worker hooks: both are what a Celery user's
observability code plugs into.
"""

from __future__ import annotations

import gc
import io
import logging
import threading
from typing import Any

import celery.signals
import pytest

import taskframe.signals
from taskframe.signals import Signal
from taskframe.utils.log import (
    TASK_LOGGER_NAME,
    TaskFilter,
    TaskFormatter,
    get_logger,
    get_task_logger,
    task_log_context,
)

# Celery signals taskframe leaves out: deprecated, or for pools and options it does not have.
NOT_PROVIDED = {
    "task_sent",
    "heartbeat_sent",
    "worker_before_create_process",
    "eventlet_pool_started",
    "eventlet_pool_preshutdown",
    "eventlet_pool_postshutdown",
    "eventlet_pool_apply",
    "user_preload_options",
}


class Recorder:
    """A receiver that remembers the keyword arguments of each call."""

    def __init__(self, result: Any = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.result = result

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.result


# -- public names -----------------------------------------------------------------------------


def test_public_names_are_celerys() -> None:
    # celery.signals defines import_modules and Signal but leaves them out of its __all__.
    expected = set(celery.signals.__all__) - NOT_PROVIDED | {"Signal", "import_modules"}
    assert set(taskframe.signals.__all__) == expected
    for name in expected - {"Signal"}:
        signal = getattr(taskframe.signals, name)
        assert isinstance(signal, Signal)
        assert signal.name == name


# -- connect and send -------------------------------------------------------------------------


def test_three_ways_to_connect() -> None:
    signal = Signal("demo")
    plain, decorated, filtered = Recorder("plain"), Recorder("decorated"), Recorder("filtered")

    assert signal.connect(plain) is plain
    assert signal.connect(decorated) is decorated
    assert signal.connect(sender="tasks.add")(filtered) is filtered

    responses = signal.send("tasks.add", task_id="abc")
    assert responses == [(plain, "plain"), (decorated, "decorated"), (filtered, "filtered")]
    assert plain.calls == [{"signal": signal, "sender": "tasks.add", "task_id": "abc"}]
    assert signal.receivers == [plain, decorated, filtered]


def test_decorator_form_keeps_the_function() -> None:
    signal = Signal("demo")

    @signal.connect
    def on_demo(**kwargs: Any) -> str:
        return "seen"

    @signal.connect(sender="tasks.mul")
    def on_mul(**kwargs: Any) -> str:
        return "mul"

    assert on_demo(sender=None) == "seen"
    assert signal.send("tasks.add") == [(on_demo, "seen")]
    assert signal.send("tasks.mul") == [(on_demo, "seen"), (on_mul, "mul")]


def test_sender_filter_matches_the_same_object() -> None:
    signal = Signal("demo")
    task, other = object(), object()
    for_task, for_all = Recorder(), Recorder()
    signal.connect(for_task, sender=task)
    signal.connect(for_all)

    signal.send(other)
    signal.send(task)

    assert [call["sender"] for call in for_task.calls] == [task]
    assert [call["sender"] for call in for_all.calls] == [other, task]


def test_connecting_twice_registers_once() -> None:
    signal = Signal("demo")
    receiver = Recorder()
    signal.connect(receiver)
    signal.connect(receiver)
    signal.connect(Recorder(), dispatch_uid="audit")
    signal.connect(Recorder(), dispatch_uid="audit")
    assert len(signal.receivers) == 2


def test_disconnect_by_receiver_sender_and_uid() -> None:
    signal = Signal("demo")
    receiver, audited = Recorder(), Recorder()
    signal.connect(receiver, sender="tasks.add")
    signal.connect(audited, dispatch_uid="audit")

    assert signal.disconnect(receiver) is False
    assert signal.disconnect(receiver, sender="tasks.add") is True
    assert signal.disconnect(dispatch_uid="audit") is True
    assert signal.receivers == []
    assert signal.has_receivers() is False


def test_has_receivers_is_per_instance() -> None:
    first, second = Signal("first"), Signal("second")
    assert first.has_receivers() is False
    first.connect(Recorder())
    assert first.has_receivers() is True
    assert second.has_receivers() is False
    assert second.send(None) == []


def test_send_without_receivers_returns_nothing() -> None:
    assert Signal("quiet").send(None, anything=1) == []


# -- error isolation --------------------------------------------------------------------------


def test_a_failing_receiver_is_logged_in_one_line_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    signal = Signal("task_success")
    after = Recorder("after")
    error = RuntimeError("metrics server down")

    def broken_hook(**kwargs: Any) -> None:
        raise error

    signal.connect(broken_hook)
    signal.connect(after)

    with caplog.at_level(logging.ERROR, logger="taskframe.signals"):
        responses = signal.send("tasks.add", result=4)

    assert responses == [(broken_hook, error), (after, "after")]
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.name == "taskframe.signals"
    assert record.exc_info is None
    message = record.getMessage()
    assert "\n" not in message
    assert "task_success" in message
    assert "broken_hook" in message
    assert "metrics server down" in message


# -- strong and weak references ---------------------------------------------------------------


def test_receivers_are_kept_by_default() -> None:
    signal = Signal("demo")

    def register() -> None:
        def inner(**kwargs: Any) -> str:
            return "still here"

        signal.connect(inner)

    register()
    gc.collect()
    assert [result for _, result in signal.send(None)] == ["still here"]


def test_weak_receivers_go_away_with_their_object() -> None:
    signal = Signal("demo")
    receiver = Recorder()
    holder = Recorder()
    signal.connect(receiver, weak=True)
    signal.connect(holder.__call__, weak=True)
    assert len(signal.receivers) == 2

    del receiver, holder
    gc.collect()

    assert signal.receivers == []
    assert signal.has_receivers() is False


# -- task logger ------------------------------------------------------------------------------


def test_task_logger_keeps_its_name_under_the_task_parent() -> None:
    task_logger = get_task_logger("proj.tasks")
    assert task_logger.name == "proj.tasks"
    assert task_logger.parent is logging.getLogger(TASK_LOGGER_NAME)
    assert TASK_LOGGER_NAME == "taskframe.task"
    assert get_logger("taskframe.worker") is logging.getLogger("taskframe.worker")


@pytest.mark.parametrize("name", ["taskframe", "taskframe.task"])
def test_reserved_task_logger_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        get_task_logger(name)


def format_one(formatter: logging.Formatter, message: str) -> str:
    record = logging.LogRecord("proj.tasks", logging.INFO, __file__, 1, message, None, None)
    return formatter.format(record)


def test_formatter_renders_the_running_task() -> None:
    formatter = TaskFormatter("%(task_name)s[%(task_id)s]: %(message)s")

    with task_log_context("tasks.add", "4f1c"):
        inside = format_one(formatter, "adding")
    outside = format_one(formatter, "idle")

    assert inside == "tasks.add[4f1c]: adding"
    assert outside == "???[???]: idle"


def test_default_format_is_celerys_task_format() -> None:
    with task_log_context("tasks.add", "4f1c"):
        line = format_one(TaskFormatter(), "adding")
    assert line.endswith("/MainProcess] tasks.add[4f1c]: adding")


def test_filter_tags_records_for_a_handler_and_threads_see_their_own_task() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TaskFilter())
    handler.setFormatter(logging.Formatter("%(task_name)s %(task_id)s %(message)s"))
    task_logger = get_task_logger("tests.signals.filter")
    task_logger.addHandler(handler)
    task_logger.setLevel(logging.INFO)
    try:
        with task_log_context("tasks.mul", "9a9a"):
            task_logger.info("in task")
            thread = threading.Thread(target=task_logger.info, args=("other thread",))
            thread.start()
            thread.join()
    finally:
        task_logger.removeHandler(handler)

    assert stream.getvalue().splitlines() == [
        "tasks.mul 9a9a in task",
        "??? ??? other thread",
    ]


def test_extra_fields_win_over_the_context() -> None:
    formatter = TaskFormatter("%(task_name)s[%(task_id)s]")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.task_name, record.task_id = "given", "id-1"
    with task_log_context("tasks.add", "4f1c"):
        assert formatter.format(record) == "given[id-1]"
