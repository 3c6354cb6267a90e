"""Results: ``AsyncResult[R]`` for one task, ``GroupResult`` for many, ``EagerResult`` for a
task run in this process.

``get()`` waits through the backend's ``wait`` (pub/sub where the store can push), then
returns the value, or raises the task's own exception when its class can be imported here,
else a :class:`~taskframe.exceptions.RemoteTaskError` that names it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from taskframe import states
from taskframe.exceptions import ImproperlyConfigured, TaskRevokedError, TimeoutError
from taskframe.result_meta import (
    decode_group_meta,
    decode_meta,
    encode_group_meta,
    exception_from_dict,
)

if TYPE_CHECKING:
    from taskframe.app import Taskframe

__all__ = ["AsyncResult", "EagerResult", "GroupResult", "ResultBase"]

R = TypeVar("R")
PARENT_CHECK_INTERVAL = 0.2
"""Seconds between checks of a result's parents while waiting for it."""


class ResultBase:
    """What AsyncResult and GroupResult share: ``.parent`` links a canvas's results."""

    id: str
    parent: ResultBase | None = None

    def as_tuple(self) -> tuple[Any, ...]:
        raise NotImplementedError


class AsyncResult(ResultBase, Generic[R]):
    """The pending outcome of one task call."""

    def __init__(
        self,
        id: str,
        *,
        app: Taskframe | None = None,
        task_name: str | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        if app is None:
            from taskframe.context import current_app

            app = current_app()
        self.id = id
        self.app = app
        self.task_name = task_name
        self.parent = parent
        self._cache: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        return self.id

    def _backend_or_fail(self) -> Any:
        backend = self.app.backend
        if backend is None:
            raise ImproperlyConfigured(
                "no result backend is configured (result_backend is unset or 'disabled'), "
                "so results cannot be read; set app.conf.result_backend"
            )
        return backend

    def _meta(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        payload = self._backend_or_fail().get(self.id)
        if payload is None:
            return {"status": states.PENDING, "result": None, "traceback": None, "children": []}
        meta = decode_meta(payload, self.app.conf.result_serializer)
        if meta.get("status") in states.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        status: str = self._meta()["status"]
        return status

    status = state

    @property
    def info(self) -> Any:
        meta = self._meta()
        value = meta.get("result")
        if (
            meta["status"] in states.EXCEPTION_STATES
            and isinstance(value, dict)
            and "exc_type" in value
        ):
            return exception_from_dict(value)
        return value

    result = info

    @property
    def traceback(self) -> str | None:
        value: str | None = self._meta().get("traceback")
        return value

    @property
    def date_done(self) -> datetime | None:
        value = self._meta().get("date_done")
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    @property
    def children(self) -> list[AsyncResult[Any]]:
        found: list[AsyncResult[Any]] = []
        for child in self._meta().get("children") or []:
            child_id = _result_id(child)
            if child_id is not None:
                found.append(AsyncResult(child_id, app=self.app))
        return found

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        **_: Any,
    ) -> R:
        """Wait for the outcome; return the value or raise the task's exception.

        With ``propagate`` and parents (a chain's earlier steps, a chord's header) a failed
        parent raises its own exception, as Celery: the chain stopped there."""
        if propagate and self.parent is not None and self._cache is None:
            return self._get_following_parents(timeout, interval)
        meta = self._cache
        if meta is None:
            ready = _ReadyCheck(self.app.conf.result_serializer)
            payload = self._backend_or_fail().wait(
                self.id, timeout, ready, interval=min(interval, 0.05)
            )
            if payload is None:
                raise TimeoutError(
                    f"result of task {self.id} ({self.task_name or 'unknown task'}) not ready "
                    f"after {timeout}s"
                )
            meta = ready.meta_of(payload)
            self._cache = meta
        value: R = self._value_from(meta, propagate)
        return value

    wait = get

    def _get_following_parents(self, timeout: float | None, interval: float) -> R:
        backend = self._backend_or_fail()
        ready = _ReadyCheck(self.app.conf.result_serializer)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            failure = self.parent_failure()
            if failure is not None:
                raise failure
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = PARENT_CHECK_INTERVAL
            if remaining is not None:
                step = min(remaining, step)
            payload = backend.wait(self.id, step, ready, interval=min(interval, 0.05))
            if payload is not None:
                meta = ready.meta_of(payload)
                self._cache = meta
                if meta["status"] in states.PROPAGATE_STATES:
                    failure = self.parent_failure()
                    if failure is not None:
                        raise failure
                return self._value_from(meta, True)  # type: ignore[no-any-return]
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"result of task {self.id} ({self.task_name or 'unknown task'}) not ready "
                    f"after {timeout}s"
                )

    def parent_failure(self) -> BaseException | None:
        """The exception of the earliest failed parent, walking ``.parent`` links in a loop."""
        levels: list[list[str]] = []
        node = self.parent
        while node is not None:
            if isinstance(node, GroupResult):
                levels.append([member.id for member in node.results])
            else:
                levels.append([node.id])
            node = node.parent
        ids = [task_id for level in reversed(levels) for task_id in level]
        if not ids:
            return None
        serializer = self.app.conf.result_serializer
        for payload in self._backend_or_fail().get_many(ids):
            if payload is None:
                continue
            meta = decode_meta(payload, serializer)
            if meta["status"] in states.PROPAGATE_STATES:
                failure: BaseException = self._value_from(meta, False)
                return failure
        return None

    def _value_from(self, meta: dict[str, Any], propagate: bool) -> Any:
        status = meta["status"]
        value = meta.get("result")
        if status == states.SUCCESS:
            return value
        exception: BaseException
        if isinstance(value, dict) and "exc_type" in value:
            exception = exception_from_dict(value)
        elif status == states.REVOKED:
            exception = TaskRevokedError("revoked")
        else:
            exception = RuntimeError(f"task {self.id} ended in state {status}: {value!r}")
        if propagate:
            raise exception
        return exception

    def forget(self) -> None:
        self._cache = None
        self._backend_or_fail().delete(self.id)

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> None:
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

    def then(
        self,
        callback: Callable[[AsyncResult[R]], Any],
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> threading.Thread:
        """Call ``callback(self)`` once the result is ready, from a background thread."""

        def wait_then_call() -> None:
            try:
                self.get(propagate=False)
            except Exception as exc:
                if on_error is not None:
                    on_error(exc)
                return
            callback(self)

        thread = threading.Thread(target=wait_then_call, name=f"then-{self.id}", daemon=True)
        thread.start()
        return thread

    def as_tuple(self) -> tuple[Any, ...]:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return ((self.id, parent), None)


class EagerResult(AsyncResult[R]):
    """The outcome of a task run in this process (``apply()`` or ``task_always_eager``)."""

    def __init__(
        self,
        id: str,
        value: Any,
        state: str,
        *,
        traceback: str | None = None,
        app: Taskframe | None = None,
        task_name: str | None = None,
    ) -> None:
        super().__init__(id, app=app, task_name=task_name)
        self._value = value
        self._state = state
        self._traceback = traceback

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"

    def _meta(self) -> dict[str, Any]:
        return {"status": self._state, "result": self._value, "traceback": self._traceback}

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def info(self) -> Any:
        return self._value

    result = info

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        **_: Any,
    ) -> R:
        if self._state == states.SUCCESS:
            value: R = self._value
            return value
        if isinstance(self._value, BaseException):
            if propagate:
                raise self._value
            return self._value  # type: ignore[return-value]  # propagate=False returns the error
        value = self._value
        return value

    wait = get

    def forget(self) -> None:
        """Nothing is stored for an eager result."""


class GroupResult(ResultBase):
    """The results of a group of tasks, in the order they were given."""

    def __init__(
        self,
        id: str,
        results: Sequence[AsyncResult[Any]] = (),
        *,
        app: Taskframe | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        if app is None:
            from taskframe.context import current_app

            app = current_app()
        self.id = id
        self.results = list(results)
        self.app = app
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    def ready(self) -> bool:
        return all(result.ready() for result in self.results)

    def successful(self) -> bool:
        return all(result.successful() for result in self.results)

    def failed(self) -> bool:
        return any(result.failed() for result in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        return sum(1 for result in self.results if result.successful())

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> None:
        for result in self.results:
            result.revoke(terminate=terminate, signal=signal)

    def get(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5, **_: Any
    ) -> list[Any]:
        if all(type(result) is AsyncResult and result.parent is None for result in self.results):
            return self.join_native(
                timeout=timeout, propagate=propagate, interval=min(interval, 0.1)
            )
        return self.join(timeout=timeout, propagate=propagate, interval=interval)

    def join(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5, **_: Any
    ) -> list[Any]:
        """Every member's value in order; fetched in batches once they are ready."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values: list[Any] = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(timeout=remaining, propagate=propagate, interval=interval))
        return values

    def join_native(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.05, **_: Any
    ) -> list[Any]:
        """Every member's value in order, reading the not-yet-ready ones in batches
        (``get_many``), so joining 10,000 results costs a few queries per poll."""
        backend = self.app.backend
        if backend is None:
            raise ImproperlyConfigured("GroupResult.join() needs a result backend")
        serializer = self.app.conf.result_serializer
        deadline = None if timeout is None else time.monotonic() + timeout
        metas: dict[int, dict[str, Any]] = {}
        pending = list(range(len(self.results)))
        delay = min(interval, 0.01)
        while pending:
            payloads = backend.get_many([self.results[index].id for index in pending])
            still: list[int] = []
            for index, payload in zip(pending, payloads, strict=True):
                meta = decode_meta(payload, serializer) if payload is not None else None
                if meta is not None and meta["status"] in states.READY_STATES:
                    metas[index] = meta
                else:
                    still.append(index)
            pending = still
            if pending:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{len(pending)} of {len(self.results)} results of group {self.id} "
                        f"not ready after {timeout}s"
                    )
                time.sleep(delay)
                delay = min(delay * 1.5, interval)
        values: list[Any] = []
        for index, result in enumerate(self.results):
            values.append(result._value_from(metas[index], propagate))
        return values

    def save(self) -> GroupResult:
        backend = self.app.backend
        if backend is None:
            raise ImproperlyConfigured("GroupResult.save() needs a result backend")
        payload = encode_group_meta(
            self.id, [result.id for result in self.results], self.app.conf.result_serializer
        )
        backend.set_group(self.id, payload, expires=self.app.result_expires_seconds)
        return self

    def delete(self) -> None:
        backend = self.app.backend
        if backend is not None:
            backend.delete_group(self.id)

    forget = delete

    @classmethod
    def restore(cls, group_id: str, app: Taskframe | None = None) -> GroupResult | None:
        if app is None:
            from taskframe.context import current_app

            app = current_app()
        backend = app.backend
        if backend is None:
            raise ImproperlyConfigured("GroupResult.restore() needs a result backend")
        payload = backend.get_group(group_id)
        if payload is None:
            return None
        restored_id, member_ids = decode_group_meta(payload, app.conf.result_serializer)
        return cls(restored_id, [AsyncResult(member, app=app) for member in member_ids], app=app)

    def as_tuple(self) -> tuple[Any, ...]:
        return ((self.id, None), [result.as_tuple() for result in self.results])


class _ReadyCheck:
    """The ``is_ready`` predicate of a backend wait; it keeps the meta it decoded last, so
    ``get()`` decodes the ready result once instead of twice."""

    def __init__(self, serializer: str) -> None:
        self.serializer = serializer
        self.payload: bytes | None = None
        self.meta: dict[str, Any] = {}

    def __call__(self, payload: bytes) -> bool:
        meta = decode_meta(payload, self.serializer)
        if meta["status"] not in states.READY_STATES:
            return False
        self.payload, self.meta = payload, meta
        return True

    def meta_of(self, payload: bytes) -> dict[str, Any]:
        if payload == self.payload:
            return self.meta
        return decode_meta(payload, self.serializer)


def _result_id(value: Any) -> str | None:
    """The task id inside Celery's nested result tuple ``[[id, parent], children]``."""
    while isinstance(value, (list, tuple)) and value:
        if isinstance(value[0], str):
            return value[0]
        value = value[0]
    return None
