"""Settings: Celery's names and defaults, old names, namespaces, env overrides, typo warnings."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.app import defaults as celery_defaults

from taskframe.config import DEFAULT_BROKER_URL, Settings, SettingsWarning
from taskframe.config_defaults import DEFAULTS, HONOURED, OLD_NAMES, SETTING_NAMES


@pytest.fixture
def celery_app() -> Iterator[Celery]:
    app = Celery("reference", set_as_current=False)
    yield app
    app.close()


def no_env() -> Settings:
    return Settings(env={})


class DjangoSettings:
    """A Django settings module as a Celery user writes it for ``namespace="CELERY"``."""

    DEBUG = True
    SECRET_KEY = "not-a-celery-setting"
    TIME_ZONE = "Europe/Paris"
    BROKER_URL = "amqp://loser//"
    CELERY_BROKER_URL = "redis://127.0.0.1:6379/3"
    CELERY_RESULT_BACKEND = "redis://127.0.0.1:6379/4"
    CELERY_ALWAYS_EAGER = False
    CELERY_TASK_ALWAYS_EAGER = True
    CELERY_WORKER_PREFETCH_MULTIPLIER = 1


# -- defaults ---------------------------------------------------------------------------------


def test_the_name_table_is_celerys() -> None:
    assert DEFAULTS == celery_defaults.DEFAULTS
    assert OLD_NAMES == celery_defaults._TO_NEW_KEY
    assert HONOURED <= SETTING_NAMES


def test_every_honoured_default_reads_as_in_celery(celery_app: Celery) -> None:
    conf = no_env()
    for name in sorted(HONOURED & set(celery_defaults.DEFAULTS)):
        assert conf[name] == getattr(celery_app.conf, name), name


def test_taskframe_defaults_for_a_new_user() -> None:
    conf = no_env()
    assert conf.broker_url is None
    assert DEFAULT_BROKER_URL == "sqlite:///taskframe.sqlite3"
    assert conf.result_backend is None
    assert conf.worker_shutdown_timeout == 30.0
    assert conf.result_expires == timedelta(days=1)
    assert conf.accept_content == ("json",)


def test_mutable_defaults_are_not_shared_between_instances() -> None:
    first, second = no_env(), no_env()
    first.beat_schedule["tick"] = {"task": "tasks.tick", "schedule": 1.0}
    assert second.beat_schedule == {}
    assert DEFAULTS["beat_schedule"] == {}


# -- access -----------------------------------------------------------------------------------


def test_attribute_item_and_mapping_access() -> None:
    conf = no_env()
    conf.task_serializer = "msgpack"
    conf["result_serializer"] = "msgpack"
    conf.update({"task_acks_late": True}, worker_concurrency=3)

    assert conf["task_serializer"] == "msgpack"
    assert conf.result_serializer == "msgpack"
    assert conf.get("task_acks_late") is True
    assert conf.get("no_such_setting", "fallback") == "fallback"
    assert conf.worker_concurrency == 3
    assert "task_serializer" in conf
    assert "no_such_setting" not in conf
    assert conf.setdefault("task_serializer", "json") == "msgpack"
    assert set(conf) == SETTING_NAMES
    assert len(conf) == len(SETTING_NAMES)


def test_delete_and_clear_return_to_defaults() -> None:
    conf = no_env()
    conf.update(task_serializer="msgpack", worker_concurrency=3)
    del conf["task_serializer"]
    assert conf.task_serializer == "json"
    assert conf.value_set_for("worker_concurrency")
    conf.clear()
    assert conf.worker_concurrency is None
    assert not conf.value_set_for("worker_concurrency")


def test_reading_an_unknown_name_names_the_nearest_valid_one() -> None:
    conf = no_env()
    with pytest.raises(KeyError, match="did you mean 'result_backend'"):
        conf["reslt_backend"]
    with pytest.raises(AttributeError, match="did you mean 'task_serializer'"):
        _ = conf.task_serialiser


def test_fallbacks_as_in_celery(celery_app: Celery) -> None:
    conf = no_env()
    conf.update(task_default_queue="jobs", broker_url="redis://127.0.0.1:6379/5")
    celery_app.conf.update(task_default_queue="jobs", broker_url="redis://127.0.0.1:6379/5")
    for name in ("task_default_exchange", "task_default_routing_key", "broker_read_url"):
        assert conf[name] == getattr(celery_app.conf, name)
    assert conf.task_default_exchange == "jobs"
    assert conf.broker_write_url == "redis://127.0.0.1:6379/5"


def test_result_expires_in_seconds_becomes_a_timedelta() -> None:
    conf = no_env()
    conf.result_expires = 3600
    assert conf.result_expires == timedelta(hours=1)
    conf.result_expires = None
    assert conf.result_expires is None


def test_copy_is_independent() -> None:
    conf = no_env()
    conf.task_serializer = "msgpack"
    clone = conf.copy()
    clone.task_serializer = "pickle"
    assert conf.task_serializer == "msgpack"
    assert clone.task_serializer == "pickle"


# -- old names --------------------------------------------------------------------------------


def test_old_uppercase_names_map_to_new_ones() -> None:
    schedule = {"tick": {"task": "tasks.tick", "schedule": 5.0}}
    conf = Settings(
        {
            "CELERY_TASK_SERIALIZER": "msgpack",
            "BROKER_URL": "redis://127.0.0.1:6379/1",
            "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/2",
            "CELERYBEAT_SCHEDULE": schedule,
            "CELERYD_CONCURRENCY": 8,
            "CELERY_ALWAYS_EAGER": True,
            "CELERYD_TASK_TIME_LIMIT": 60,
            "CELERY_TASK_RESULT_EXPIRES": 120,
        },
        env={},
    )
    assert conf.task_serializer == "msgpack"
    assert conf.broker_url == "redis://127.0.0.1:6379/1"
    assert conf.result_backend == "redis://127.0.0.1:6379/2"
    assert conf.beat_schedule == schedule
    assert conf.worker_concurrency == 8
    assert conf.task_always_eager is True
    assert conf.task_time_limit == 60
    assert conf.result_expires == timedelta(seconds=120)
    assert conf["CELERYD_CONCURRENCY"] == 8
    assert "CELERYD_CONCURRENCY" in conf


def test_new_name_wins_over_old_name_in_one_source() -> None:
    class Config:
        CELERY_ALWAYS_EAGER = False
        task_always_eager = True

    conf = no_env()
    conf.from_object(Config)
    assert conf.task_always_eager is True


# -- from_object ------------------------------------------------------------------------------


@pytest.fixture
def config_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "tf_test_celeryconfig.py").write_text(
        "import os\n"
        "from datetime import timedelta\n"
        "broker_url = 'redis://127.0.0.1:6379/7'\n"
        "task_acks_late = True\n"
        "CELERYD_PREFETCH_MULTIPLIER = 2\n"
        "PROJECT_ROOT = '/srv'\n"
        "logger = object()\n"
        "def helper():\n"
        "    return 1\n"
        "class Nested:\n"
        "    task_serializer = 'msgpack'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tf_test_celeryconfig"
    sys.modules.pop("tf_test_celeryconfig", None)


def test_from_module_path_reads_settings_and_skips_the_rest(config_module: str) -> None:
    conf = no_env()
    assert conf.from_object(config_module) is True
    assert conf.broker_url == "redis://127.0.0.1:6379/7"
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 2
    assert "PROJECT_ROOT" not in conf
    assert "helper" not in conf
    assert "logger" not in conf


@pytest.mark.parametrize("suffix", [":Nested", ".Nested"])
def test_from_module_attribute(config_module: str, suffix: str) -> None:
    conf = no_env()
    conf.from_object(config_module + suffix)
    assert conf.task_serializer == "msgpack"


def test_from_dict_and_from_object() -> None:
    conf = no_env()
    conf.from_object({"task_default_queue": "jobs"})
    conf.from_object(type("Config", (), {"task_default_priority": 5}))
    assert conf.task_default_queue == "jobs"
    assert conf.task_default_priority == 5


def test_missing_module_raises_unless_silent() -> None:
    conf = no_env()
    with pytest.raises(ImportError):
        conf.from_object("tf_no_such_config_module")
    assert conf.from_object("tf_no_such_config_module", silent=True) is False


def test_namespace_reads_prefixed_names_like_celery(celery_app: Celery) -> None:
    conf = no_env()
    conf.from_object(DjangoSettings, namespace="CELERY")
    celery_app.config_from_object(DjangoSettings, namespace="CELERY")
    names = ("broker_url", "result_backend", "task_always_eager", "timezone")
    for name in (*names, "worker_prefetch_multiplier"):
        assert conf[name] == getattr(celery_app.conf, name), name
    assert conf.broker_url == "redis://127.0.0.1:6379/3"
    assert conf.task_always_eager is True
    assert conf.timezone == "Europe/Paris"
    assert "SECRET_KEY" not in conf
    assert "DEBUG" not in conf
    assert conf["CELERY_WORKER_PREFETCH_MULTIPLIER"] == 1


def test_namespace_is_case_matched() -> None:
    conf = no_env()
    conf.from_object({"celery_task_default_queue": "jobs"}, namespace="celery")
    assert conf.task_default_queue == "jobs"


# -- environment ------------------------------------------------------------------------------


def test_environment_beats_configured_urls() -> None:
    env = {
        "TASKFRAME_BROKER_URL": "redis://127.0.0.1:6379/1",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/2",
        "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/3",
    }
    conf = Settings({"broker_url": "memory://", "result_backend": "memory://"}, env=env)
    assert conf.broker_url == "redis://127.0.0.1:6379/1"
    assert conf.result_backend == "redis://127.0.0.1:6379/3"
    assert conf.broker_read_url == "redis://127.0.0.1:6379/1"


def test_celery_variable_applies_when_taskframe_one_is_empty() -> None:
    env = {"TASKFRAME_BROKER_URL": "", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/2"}
    conf = Settings({"broker_url": "memory://"}, env=env)
    assert conf.broker_url == "redis://127.0.0.1:6379/2"


def test_configured_value_applies_without_environment() -> None:
    conf = Settings({"broker_url": "memory://"}, env={"TASKFRAME_RESULT_BACKEND": "memory://"})
    assert conf.broker_url == "memory://"
    assert conf.result_backend == "memory://"


# -- typo warnings ----------------------------------------------------------------------------


def test_unknown_name_warns_with_nearest_name_at_the_callers_line() -> None:
    conf = no_env()
    with pytest.warns(SettingsWarning) as caught:
        conf.reslt_backend = "redis://127.0.0.1:6379/0"
    assert len(caught) == 1
    assert str(caught[0].message) == (
        "unknown setting 'reslt_backend'; did you mean 'result_backend'?"
    )
    assert caught[0].filename == __file__
    assert conf["reslt_backend"] == "redis://127.0.0.1:6379/0"


def test_unknown_name_warns_once_per_name() -> None:
    conf = no_env()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conf.update(task_serialiser="json")
        conf.update(task_serialiser="msgpack")
        conf["worker_concurency"] = 2
    assert [str(w.message) for w in caught] == [
        "unknown setting 'task_serialiser'; did you mean 'task_serializer'?",
        "unknown setting 'worker_concurency'; did you mean 'worker_concurrency'?",
    ]
    assert all(w.filename == __file__ for w in caught)


def test_from_object_warns_about_typos_at_the_callers_line() -> None:
    conf = no_env()
    source: dict[str, Any] = {"broker_urll": "memory://", "CELERY_TASK_SERIALISER": "json"}
    with pytest.warns(SettingsWarning) as caught:
        conf.from_object(source)
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "unknown setting 'CELERY_TASK_SERIALISER'; did you mean 'CELERY_TASK_SERIALIZER'?",
        "unknown setting 'broker_urll'; did you mean 'broker_url'?",
    ]
    assert {w.filename for w in caught} == {__file__}


def test_namespaced_typo_suggests_the_prefixed_name() -> None:
    conf = no_env()
    with pytest.warns(SettingsWarning, match="did you mean 'CELERY_BROKER_URL'"):
        conf.from_object({"CELERY_BROKER_ULR": "memory://"}, namespace="CELERY")


def test_valid_celery_names_taskframe_ignores_do_not_warn() -> None:
    conf = no_env()
    conf.update(cassandra_servers=["db1"], worker_autoscaler="x:y", CELERY_REDIS_HOST="h")
    assert conf.cassandra_servers == ["db1"]
    assert conf.redis_host == "h"


def test_unlike_name_gets_no_suggestion() -> None:
    conf = no_env()
    with pytest.warns(SettingsWarning, match="no Celery or taskframe setting has a similar"):
        conf.zzzzzz = 1


# -- reporting --------------------------------------------------------------------------------


def test_table_lists_changes_with_secrets_masked() -> None:
    conf = no_env()
    conf.update(
        broker_url="redis://user:hunter2@127.0.0.1:6379/0",
        security_key="/etc/key.pem",
        task_default_routing_key="jobs",
        broker_transport_options={"password": "hunter2", "visibility_timeout": 60},
    )
    table = conf.table()
    assert table == {
        "broker_url": "redis://user:********@127.0.0.1:6379/0",
        "security_key": "********",
        "task_default_routing_key": "jobs",
        "broker_transport_options": {"password": "********", "visibility_timeout": 60},
    }
    assert "hunter2" not in conf.humanize()
    assert "hunter2" in conf.humanize(censored=False)
    assert len(conf.table(with_defaults=True)) == len(conf)
