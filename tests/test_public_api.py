"""The public surface: ``__all__`` of ``taskframe`` and of each Celery import path, pinned.

Given the modules a Celery project imports from, when ``celery`` is replaced by ``taskframe``
in its import lines, then the same names exist; the names each module exports are pinned here
so that a change to the public API is a deliberate edit of this file. Where a module mirrors
one of Celery's, the names it shares with Celery are pinned too, and the values that must
match (state names) are compared with Celery's own.
"""

from __future__ import annotations

import importlib

import pytest

PINNED: dict[str, set[str]] = {
    "taskframe": {
        "AsyncResult",
        "Celery",
        "GroupResult",
        "Signature",
        "Task",
        "Taskframe",
        "chain",
        "chord",
        "chunks",
        "crontab",
        "current_app",
        "group",
        "maybe_signature",
        "schedule",
        "shared_task",
        "signature",
        "states",
        "xmap",
        "xstarmap",
    },
    "taskframe.states": {
        "ALL_STATES",
        "EXCEPTION_STATES",
        "FAILURE",
        "PENDING",
        "PROPAGATE_STATES",
        "READY_STATES",
        "RECEIVED",
        "REJECTED",
        "RETRY",
        "REVOKED",
        "STARTED",
        "SUCCESS",
        "UNREADY_STATES",
    },
    "taskframe.signals": {
        "Signal",
        "after_setup_logger",
        "after_setup_task_logger",
        "after_task_publish",
        "beat_embedded_init",
        "beat_init",
        "before_task_publish",
        "celeryd_after_setup",
        "celeryd_init",
        "import_modules",
        "setup_logging",
        "task_failure",
        "task_internal_error",
        "task_postrun",
        "task_prerun",
        "task_received",
        "task_rejected",
        "task_retry",
        "task_revoked",
        "task_success",
        "task_unknown",
        "worker_init",
        "worker_process_init",
        "worker_process_shutdown",
        "worker_ready",
        "worker_shutdown",
        "worker_shutting_down",
    },
    "taskframe.result": {"AsyncResult", "EagerResult", "GroupResult", "ResultBase"},
    "taskframe.exceptions": {
        "BrokerConnectionError",
        "BrokerError",
        "ChordError",
        "ContentDisallowed",
        "Ignore",
        "ImproperlyConfigured",
        "MaxRetriesExceededError",
        "NotRegistered",
        "ProtocolError",
        "Reject",
        "RemoteTaskError",
        "Retry",
        "SerializationError",
        "SoftTimeLimitExceeded",
        "TaskError",
        "TaskRevokedError",
        "TaskframeError",
        "TimeLimitExceeded",
        "TimeoutError",
        "WorkerLostError",
    },
    "taskframe.utils.log": {
        "TASK_LOGGER_NAME",
        "TaskFilter",
        "TaskFormatter",
        "get_logger",
        "get_task_logger",
        "task_log_context",
    },
    "taskframe.schedules": {
        "BaseSchedule",
        "ParseException",
        "crontab",
        "crontab_parser",
        "maybe_schedule",
        "schedstate",
        "schedule",
    },
}

# Names each module exports that the Celery module of the same path also defines.
SHARED_WITH_CELERY: dict[str, set[str]] = {
    "taskframe": {
        "Celery",
        "Signature",
        "Task",
        "chain",
        "chord",
        "chunks",
        "current_app",
        "group",
        "maybe_signature",
        "shared_task",
        "signature",
        "xmap",
        "xstarmap",
    },
    "taskframe.states": PINNED["taskframe.states"],
    "taskframe.signals": PINNED["taskframe.signals"],
    "taskframe.result": {"AsyncResult", "EagerResult", "GroupResult", "ResultBase"},
    "taskframe.exceptions": {
        "ChordError",
        "Ignore",
        "ImproperlyConfigured",
        "MaxRetriesExceededError",
        "NotRegistered",
        "Reject",
        "Retry",
        "SoftTimeLimitExceeded",
        "TaskError",
        "TaskRevokedError",
        "TimeLimitExceeded",
        "TimeoutError",
        "WorkerLostError",
    },
    "taskframe.utils.log": {"get_logger", "get_task_logger"},
    "taskframe.schedules": PINNED["taskframe.schedules"],
}


@pytest.mark.parametrize("module_name", sorted(PINNED))
def test_all_is_pinned_and_every_name_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)

    assert set(module.__all__) == PINNED[module_name]
    assert len(module.__all__) == len(set(module.__all__)), "no duplicates in __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("module_name", sorted(SHARED_WITH_CELERY))
def test_names_shared_with_celery(module_name: str) -> None:
    module = importlib.import_module(module_name)
    celery_module = importlib.import_module(module_name.replace("taskframe", "celery", 1))
    celery_names = set(celery_module.__all__) | {
        name for name in dir(celery_module) if not name.startswith("_")
    }

    shared = set(module.__all__) & celery_names
    assert shared == SHARED_WITH_CELERY[module_name]
    for name in shared:
        ours, theirs = getattr(module, name), getattr(celery_module, name)
        assert isinstance(ours, type) == isinstance(theirs, type), name
        assert callable(ours) == callable(theirs), name


def test_state_values_match_celery() -> None:
    from celery import states as celery_states

    from taskframe import states

    for name in SHARED_WITH_CELERY["taskframe.states"]:
        ours, theirs = getattr(states, name), getattr(celery_states, name)
        if isinstance(ours, str):
            assert ours == theirs, name
        else:
            assert set(ours) == set(theirs), name


def test_exceptions_keep_celery_bases() -> None:
    from taskframe import exceptions

    assert issubclass(exceptions.NotRegistered, KeyError)
    for name in ("Retry", "Ignore", "Reject", "MaxRetriesExceededError", "TaskRevokedError"):
        assert issubclass(getattr(exceptions, name), exceptions.TaskError), name
    assert issubclass(exceptions.TaskError, exceptions.TaskframeError)


def test_celery_import_lines_work_with_taskframe() -> None:
    """The import lines of a typical Celery project, with ``celery`` replaced."""
    namespace: dict[str, object] = {}
    exec(
        "from taskframe import Celery, Task, shared_task, signature, states\n"
        "from taskframe.result import AsyncResult, GroupResult\n"
        "from taskframe.exceptions import Retry, MaxRetriesExceededError, SoftTimeLimitExceeded\n"
        "from taskframe.signals import task_success, worker_ready\n"
        "from taskframe.utils.log import get_task_logger\n"
        "from taskframe.schedules import crontab, schedule\n",
        namespace,
    )
    assert {"Celery", "get_task_logger", "crontab", "task_success"} <= set(namespace)
