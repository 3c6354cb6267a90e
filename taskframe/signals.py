"""Celery's signals, by Celery's names, so existing receivers keep working.

Receivers are called as ``receiver(signal=sig, sender=sender, **named)``, like Celery. A
receiver connected with ``sender=X`` hears only sends from ``X`` (the same object, or an equal
string such as a task name); one connected without a sender hears every send.

A receiver that raises does not stop the send: its error is logged in one line on the
``taskframe.signals`` logger and returned in place of its result, because a hook must never
kill the worker. Receivers are held strongly unless ``weak=True`` (Celery's default is weak,
which silently drops receivers defined inside a function; taskframe prefers the receiver that
stays connected). ``task_sent`` is not provided; it was replaced by ``after_task_publish``.

The worker checks `Signal.has_receivers` before building a send's arguments, so an unused
signal costs one attribute read on the hot path.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, overload

__all__ = [
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
]

logger = logging.getLogger("taskframe.signals")

Receiver = Callable[..., Any]
R = TypeVar("R", bound=Receiver)


def _identity(target: object) -> Hashable:
    """A key that names ``target``: strings by value, bound methods by (instance, function)."""
    if isinstance(target, (str, bytes)):
        return target
    func = getattr(target, "__func__", None)
    if func is not None:
        return (id(getattr(target, "__self__", None)), id(func))
    return id(target)


class Signal:
    """A named hook: receivers connect, the framework sends."""

    def __init__(self, name: str = "anonymous") -> None:
        self.name = name
        # Re-entrant: a weak receiver's death callback can run while this thread holds it.
        self._lock = threading.RLock()
        # (lookup key, sender key, receiver or a weak reference to it), in connect order.
        self._entries: list[tuple[Hashable, Hashable, Any]] = []

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    @overload
    def connect(
        self,
        receiver: R,
        *,
        sender: Any = None,
        weak: bool = False,
        dispatch_uid: Hashable | None = None,
    ) -> R: ...

    @overload
    def connect(
        self,
        receiver: None = None,
        *,
        sender: Any = None,
        weak: bool = False,
        dispatch_uid: Hashable | None = None,
    ) -> Callable[[R], R]: ...

    def connect(
        self,
        receiver: R | None = None,
        *,
        sender: Any = None,
        weak: bool = False,
        dispatch_uid: Hashable | None = None,
    ) -> R | Callable[[R], R]:
        """Connect ``receiver``; usable as ``@sig.connect``, ``@sig.connect(sender=...)``.

        Connecting the same receiver (or ``dispatch_uid``) for the same sender twice is a
        no-op. With ``weak=True`` the receiver is dropped when it is garbage collected.
        """

        def register(fn: R) -> R:
            if not callable(fn):
                raise TypeError(f"signal {self.name} receiver must be callable, got {fn!r}")
            key = (dispatch_uid if dispatch_uid is not None else _identity(fn), _identity(sender))
            held: Any = fn
            if weak:
                ref_type = weakref.WeakMethod if hasattr(fn, "__self__") else weakref.ref
                held = ref_type(fn, self._drop_dead)
            with self._lock:
                if all(entry[0] != key for entry in self._entries):
                    self._entries.append((key, key[1], held))
            return fn

        return register if receiver is None else register(receiver)

    def disconnect(
        self,
        receiver: Receiver | None = None,
        *,
        sender: Any = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Disconnect a receiver (or ``dispatch_uid``) for ``sender``; True if it was connected."""
        key = (dispatch_uid if dispatch_uid is not None else _identity(receiver), _identity(sender))
        with self._lock:
            for index, entry in enumerate(self._entries):
                if entry[0] == key:
                    del self._entries[index]
                    return True
        return False

    @property
    def receivers(self) -> list[Receiver]:
        """The live receivers, in the order they were connected."""
        return [receiver for _, receiver in self._live()]

    def has_receivers(self) -> bool:
        """Cheap check, so a caller can skip building arguments nobody will read."""
        return bool(self._entries)

    def send(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver for ``sender``; returns ``[(receiver, result or exception)]``."""
        if not self._entries:
            return []
        sender_key = _identity(sender)
        none_key = _identity(None)
        responses: list[tuple[Receiver, Any]] = []
        for wanted, receiver in self._live():
            if wanted != none_key and wanted != sender_key:
                continue
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                logger.error(
                    "signal %s receiver %s raised %s: %s",
                    self.name,
                    getattr(receiver, "__qualname__", repr(receiver)),
                    type(exc).__name__,
                    exc,
                )
                response = exc
            responses.append((receiver, response))
        return responses

    send_robust = send

    def _live(self) -> list[tuple[Hashable, Receiver]]:
        live: list[tuple[Hashable, Receiver]] = []
        for _, sender_key, held in list(self._entries):
            receiver = held() if isinstance(held, weakref.ref) else held
            if receiver is not None:
                live.append((sender_key, receiver))
        return live

    def _drop_dead(self, ref: object) -> None:
        with self._lock:
            self._entries = [entry for entry in self._entries if entry[2] is not ref]


# Task publishing (producer side): sender is the task name.
before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")

# Task execution (worker side): sender is the task, or the consumer for a received request.
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")
task_internal_error = Signal("task_internal_error")

# Worker lifecycle.
celeryd_init = Signal("celeryd_init")
celeryd_after_setup = Signal("celeryd_after_setup")
import_modules = Signal("import_modules")
worker_init = Signal("worker_init")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
worker_ready = Signal("worker_ready")
worker_shutting_down = Signal("worker_shutting_down")
worker_shutdown = Signal("worker_shutdown")

# Beat.
beat_init = Signal("beat_init")
beat_embedded_init = Signal("beat_embedded_init")

# Logging.
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
