"""Settings: the object behind ``app.conf``, with Celery's names, defaults and quirks.

A Celery user's configuration loads unchanged: lowercase names (``task_serializer``), the old
uppercase names (``CELERY_TASK_SERIALIZER``, ``BROKER_URL``, ``CELERYD_CONCURRENCY``), Django
style namespaced names (``CELERY_BROKER_URL`` with ``namespace="CELERY"``), attribute and item
access. The name table and the defaults live in `taskframe.config_defaults`.

Decisions, and where they differ from Celery:

- An unknown name is kept (extensions read their own keys) but warned about once per name
  and `Settings`, with the nearest valid name, so a typo does not silently fall back to a
  default. A config module's other attributes (``app``, ``logger``, imports) are not
  settings; an unknown attribute is read, and warned about, only when its name is close
  to a valid one.
- Old and new names may be mixed; when both spell one setting the new name wins. Celery
  refuses the mix with ``ImproperlyConfigured``; there is no ambiguity to refuse.
- `Settings.from_object` merges into the current settings (later calls win) instead of
  replacing a "config source" as Celery does.
- ``broker_url`` and ``result_backend`` are read from the environment first:
  ``TASKFRAME_BROKER_URL``, then ``CELERY_BROKER_URL`` (likewise ``*_RESULT_BACKEND``,
  ``*_BROKER_READ_URL``, ``*_BROKER_WRITE_URL``), then the configured value, as in Celery,
  where the environment beats even ``Celery(broker=...)``. An empty variable is ignored.
- Read-time fallbacks as in Celery: ``broker_read_url``/``broker_write_url`` fall back to
  ``broker_url``, ``task_default_exchange``/``task_default_routing_key`` to
  ``task_default_queue``, ``broker_url`` to ``broker_host``; Django's ``TIME_ZONE`` fills
  ``timezone`` when read with `from_object`. Item access applies them too (Celery's applies
  them to attribute access only).
- ``result_expires`` given as a number of seconds is stored as a ``timedelta``.
- ``broker_url`` stays ``None`` when unset; the app applies `DEFAULT_BROKER_URL`.
"""

from __future__ import annotations

import _collections_abc
import copy
import difflib
import importlib
import os
import re
import sys
import types
import warnings
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from taskframe.config_defaults import (
    DEFAULTS,
    HONOURED,
    OLD_NAMES,
    SETTING_NAMES,
    TASKFRAME_DEFAULTS,
)

__all__ = ["DEFAULT_BROKER_URL", "HONOURED", "Settings", "SettingsWarning"]

#: The broker (and result backend) used when none is configured.
DEFAULT_BROKER_URL = "sqlite:///taskframe.sqlite3"

# Environment variables that beat the configured value, first match wins.
_ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "broker_url": ("TASKFRAME_BROKER_URL", "CELERY_BROKER_URL"),
    "broker_read_url": ("TASKFRAME_BROKER_READ_URL", "CELERY_BROKER_READ_URL"),
    "broker_write_url": ("TASKFRAME_BROKER_WRITE_URL", "CELERY_BROKER_WRITE_URL"),
    "result_backend": ("TASKFRAME_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
}
# Settings that take another setting's value while their own is None.
_FALLBACKS: dict[str, str] = {
    "broker_url": "broker_host",
    "broker_read_url": "broker_url",
    "broker_write_url": "broker_url",
    "task_default_exchange": "task_default_queue",
    "task_default_routing_key": "task_default_queue",
}
_DERIVED = frozenset(_ENV_OVERRIDES) | frozenset(_FALLBACKS)

_MASK = "********"
_SECRET_WORDS = frozenset({"password", "secret", "token", "key", "apikey", "signature"})
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")

# Frames in these files are taskframe's own; a warning points at the first frame outside.
_INTERNAL_FILES = (os.path.dirname(os.path.abspath(__file__)) + os.sep, _collections_abc.__file__)


class SettingsWarning(UserWarning):
    """A setting name that no part of taskframe or Celery knows (most often a typo)."""


class Settings(MutableMapping[str, Any]):
    """Celery-compatible settings: ``conf.task_serializer``, ``conf["task_serializer"]``, ...

    Iteration yields every known setting name plus the unknown names that were set.
    ``env`` is the environment read for overrides (``os.environ`` when None).
    """

    def __init__(
        self,
        changes: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._defaults: dict[str, Any] = copy.deepcopy({**DEFAULTS, **TASKFRAME_DEFAULTS})
        self._changes: dict[str, Any] = {}
        self._env = env
        self._namespace: str | None = None
        self._warned: set[str] = set()
        self._mirror_all()
        if changes:
            self.update(changes)

    # -- mapping protocol ------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        name = self._canonical(key)
        if name in _DERIVED:
            return self._derived(name)
        if name in self._changes:
            return self._changes[name]
        if name in self._defaults:
            return self._defaults[name]
        raise KeyError(_unknown_message(key, self._candidates(key)))

    def __setitem__(self, key: str, value: Any) -> None:
        name = self._canonical(key)
        if name not in SETTING_NAMES:
            self._warn_unknown(key)
        self._changes[name] = _coerce(name, value)
        self._mirror(name)

    def __delitem__(self, key: str) -> None:
        """Forget a change; a known setting goes back to its default."""
        name = self._canonical(key)
        if name not in self._changes and name not in SETTING_NAMES:
            raise KeyError(_unknown_message(key, self._candidates(key)))
        self._changes.pop(name, None)
        self._mirror(name)

    def __iter__(self) -> Iterator[str]:
        yield from self._defaults
        yield from (name for name in self._changes if name not in self._defaults)

    def __len__(self) -> int:
        return len(self._defaults) + sum(1 for name in self._changes if name not in self._defaults)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        name = self._canonical(key)
        return name in self._changes or name in self._defaults

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
        else:
            del self[name]

    def __repr__(self) -> str:
        return f"<Settings: {len(self._changes)} changed of {len(self)}>"

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many settings at once, from a mapping, pairs, or keywords."""
        items = other.items() if isinstance(other, Mapping) else other
        for key, value in [*items, *kwargs.items()]:
            self[key] = value

    def clear(self) -> None:
        """Forget every change; known settings keep their defaults (as Celery's ``clear``)."""
        self._changes.clear()
        self._mirror_all()

    def copy(self) -> Settings:
        """An independent copy with the same changes and environment."""
        other = Settings(env=self._env)
        other._changes = copy.deepcopy(self._changes)
        other._mirror_all()
        other._namespace = self._namespace
        other._warned = set(self._warned)
        return other

    # -- loading -------------------------------------------------------------------------

    def from_object(
        self, obj: str | object, *, namespace: str | None = None, silent: bool = False
    ) -> bool:
        """Merge settings from a module, ``"module:attr"``, object or mapping.

        With ``namespace="CELERY"`` (Django style) prefixed names are read with the prefix
        stripped (``CELERY_BROKER_URL`` -> ``broker_url``) and win over unprefixed valid names
        in the same source; other names are not settings and are ignored. Returns False only
        when ``silent`` is true and the import failed.
        """
        if isinstance(obj, str):
            try:
                obj = _import_object(obj)
            except (ImportError, AttributeError):
                if silent:
                    return False
                raise
        source = _attributes(obj)
        if namespace:
            self._namespace = namespace.rstrip("_") + "_"
        prefix = self._namespace if namespace else None
        plain: dict[str, Any] = {}
        prefixed: dict[str, Any] = {}
        for key, value in source.items():
            if prefix and _match_case(key, prefix).startswith(prefix):
                prefixed[key] = value
            elif _is_setting(key, value, namespaced=prefix is not None):
                plain[key] = value
        if "TIME_ZONE" in source and "timezone" not in self._changes:
            self._changes["timezone"] = source["TIME_ZONE"]
            self._mirror("timezone")
        # Old names first, so a new name for the same setting overwrites it.
        for batch in (plain, prefixed):
            for key in sorted(batch, key=lambda k: k not in OLD_NAMES):
                self[key] = batch[key]
        return True

    # -- introspection -------------------------------------------------------------------

    def value_set_for(self, key: str) -> bool:
        """Whether the user set ``key`` (by any of its names), as opposed to its default."""
        return self._canonical(key) in self._changes

    def table(self, with_defaults: bool = False, censored: bool = True) -> dict[str, Any]:
        """Changed settings (or all of them) as a dict; secrets masked unless ``censored=False``."""
        names = list(self) if with_defaults else list(self._changes)
        settings = {name: self[name] for name in names}
        return _censor(settings) if censored else settings

    def humanize(self, with_defaults: bool = False, censored: bool = True) -> str:
        """`table` as ``name: value`` lines, for ``taskframe report`` and logs."""
        return "\n".join(
            f"{name}: {value!r}" for name, value in self.table(with_defaults, censored).items()
        )

    # -- internals -----------------------------------------------------------------------

    def _canonical(self, key: str) -> str:
        if key in SETTING_NAMES:
            return key
        if key in OLD_NAMES:
            return OLD_NAMES[key]
        prefix = self._namespace
        if prefix and _match_case(key, prefix).startswith(prefix):
            stripped = key[len(prefix) :].lower()
            if stripped in SETTING_NAMES:
                return stripped
        return key

    def _mirror(self, name: str) -> None:
        """Keep a known, non-derived setting's current value as an instance attribute, so
        ``conf.task_serializer`` is a plain attribute read: the send path reads several
        settings per message, and ``__getattr__`` costs 25 times as much (0.8 µs, measured)."""
        if name in SETTING_NAMES and name not in _DERIVED:
            self.__dict__[name] = self._changes.get(name, self._defaults[name])

    def _mirror_all(self) -> None:
        for name in self._defaults:
            self._mirror(name)

    def _derived(self, name: str) -> Any:
        env = os.environ if self._env is None else self._env
        for variable in _ENV_OVERRIDES.get(name, ()):
            if env.get(variable):
                return env[variable]
        value = self._changes.get(name, self._defaults[name])
        if value is None and name in _FALLBACKS:
            return self[_FALLBACKS[name]]
        return value

    def _candidates(self, key: str) -> list[str]:
        if not key.isupper():
            return sorted(SETTING_NAMES)
        names = list(OLD_NAMES)
        if self._namespace:
            names += [self._namespace + name.upper() for name in SETTING_NAMES]
        return names

    def _warn_unknown(self, key: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        message = _unknown_message(key, self._candidates(key))
        warnings.warn(message, SettingsWarning, stacklevel=_user_stacklevel())


def _unknown_message(key: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(key, candidates, n=1)
    if match:
        return f"unknown setting {key!r}; did you mean {match[0]!r}?"
    return f"unknown setting {key!r}; no Celery or taskframe setting has a similar name"


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside taskframe, counted from our caller."""
    frame = sys._getframe(2)
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL_FILES):
        frame = frame.f_back
        level += 1
    return level


def _coerce(name: str, value: Any) -> Any:
    if name == "result_expires" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


def _match_case(key: str, prefix: str) -> str:
    """``key`` in the case of ``prefix``, so ``celery_`` and ``CELERY_`` both match."""
    return key.upper() if prefix.isupper() else key.lower()


def _is_setting(key: str, value: Any, *, namespaced: bool) -> bool:
    """Whether an unprefixed attribute of a config source is meant as a setting.

    Known names are. Under a namespace nothing else is (a Django settings module holds far
    more than Celery's). Otherwise an unknown data attribute is taken (and reported) only when
    its name is close to a valid one: a typo, not the module's ``app`` or ``logger``. An
    uppercase name must also start like an old Celery name (``CELERY``, ``BROKER_``).
    """
    if key in SETTING_NAMES or key in OLD_NAMES:
        return True
    if namespaced or callable(value) or isinstance(value, types.ModuleType):
        return False
    if key.isupper() and not key.startswith(("CELERY", "BROKER_")):
        return False
    candidates = OLD_NAMES if key.isupper() else SETTING_NAMES
    return bool(difflib.get_close_matches(key, candidates, n=1))


def _attributes(obj: object) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return {str(key): value for key, value in obj.items()}
    return {name: getattr(obj, name) for name in dir(obj) if not name.startswith("_")}


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Let ``"celeryconfig"`` import from the working directory, as Celery's loader does."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import_object(path: str) -> object:
    """Import ``"pkg.module"``, ``"pkg.module:attr"`` or ``"pkg.module.attr"``."""
    with _cwd_on_path():
        if ":" in path:
            module_name, _, attr = path.partition(":")
        else:
            try:
                return importlib.import_module(path)
            except ImportError:
                module_name, _, attr = path.rpartition(".")
                if not module_name:
                    raise
        target: object = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        return target


def _censor(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _censor_value(key, value) for key, value in settings.items()}


def _censor_value(key: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return _censor(value)
    words = set(str(key).lower().split("_"))
    if words & _SECRET_WORDS and not str(key).lower().endswith("routing_key"):
        return _MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<1>{_MASK}@", value)
    return value
