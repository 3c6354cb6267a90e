"""Raising a time-limit error inside a running task, in whichever thread runs it.

A soft limit must surface *inside* the task, where it can clean up. Two ways, chosen per thread:

* the main thread (a prefork child, ``-P solo`` from the command line) arms ``SIGALRM`` with
  ``setitimer``; the signal interrupts blocking calls such as ``time.sleep``, so the error
  arrives on time;
* any other thread (the threads pool, sync tasks on the asyncio pool, an in-process test
  worker) gets the error through ``PyThreadState_SetAsyncExc`` from a timer thread. CPython
  delivers it at the next bytecode the thread runs, so a task blocked in one long C call (a
  ``sleep``, a socket read without timeout) sees it only when that call returns.

Either way the guard disarms itself when the block ends, and clears an error that was set but
not yet delivered, so it never leaks into the next task on the same thread.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from types import FrameType, TracebackType

from taskframe.exceptions import SoftTimeLimitExceeded

__all__ = ["SoftLimit", "raise_in_thread"]


def raise_in_thread(thread_id: int, error: type[BaseException] | None) -> bool:
    """Ask CPython to raise ``error`` in thread ``thread_id`` (None clears a pending one)."""
    target = ctypes.py_object(error) if error is not None else None
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target)
    return bool(changed == 1)


def _raise_soft_limit(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded("SoftTimeLimitExceeded()")


class SoftLimit:
    """``with SoftLimit(seconds): run()`` raises :class:`SoftTimeLimitExceeded` in ``run``
    after ``seconds`` (no-op for None or 0)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._active = False
        self._fired = False
        self._timer: threading.Timer | None = None
        self._thread_id = 0
        self._main = False

    def __enter__(self) -> SoftLimit:
        if not self.seconds:
            return self
        self._active = True
        self._main = threading.current_thread() is threading.main_thread()
        if self._main:
            signal.signal(signal.SIGALRM, _raise_soft_limit)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            self._thread_id = threading.get_ident()
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _fire(self) -> None:
        with self._lock:
            if self._active:
                self._fired = raise_in_thread(self._thread_id, SoftTimeLimitExceeded)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.seconds:
            return
        if self._main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        with self._lock:
            self._active = False
            if self._fired:
                raise_in_thread(self._thread_id, None)
        if self._timer is not None:
            self._timer.cancel()
