"""The application: settings, the task registry, and sending tasks.

``Taskframe`` (alias ``Celery``) holds one broker and one result backend, made lazily from
``broker_url`` and ``result_backend`` and made again after a fork, so prefork children never
share a parent's connection.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from taskframe import signals
from taskframe.brokers.base import Broker, Message, ResultBackend, backend_from_url, broker_from_url
from taskframe.config import DEFAULT_BROKER_URL, Settings
from taskframe.context import current_request, set_current_app
from taskframe.exceptions import ImproperlyConfigured, NotRegistered
from taskframe.protocol import Draft, TaskMessage, new_id
from taskframe.result_meta import encode_meta
from taskframe.routing import Router
from taskframe.shared import SharedTask, register_shared, shared_factories
from taskframe.task import Task
from taskframe.timeutils import deadline_from, seconds_until, utcnow

if TYPE_CHECKING:
    from taskframe import result as results
    from taskframe.canvas.signature import Signature
    from taskframe.control import Control

__all__ = ["Celery", "Taskframe", "shared_task"]

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("taskframe.app")


class TaskDecorator(Protocol):
    @overload
    def __call__(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fun: Callable[P, R], /) -> Task[P, R]: ...


class BoundTaskDecorator(Protocol):
    @overload
    def __call__(
        self, fun: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> Task[P, R]: ...
    @overload
    def __call__(self, fun: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


class SharedTaskDecorator(Protocol):
    @overload
    def __call__(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> SharedTask[P, R]: ...
    @overload
    def __call__(self, fun: Callable[P, R], /) -> SharedTask[P, R]: ...


class SharedBoundTaskDecorator(Protocol):
    @overload
    def __call__(
        self, fun: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> SharedTask[P, R]: ...
    @overload
    def __call__(self, fun: Callable[Concatenate[Any, P], R], /) -> SharedTask[P, R]: ...


class Taskframe:
    """A taskframe application. ``Celery`` is the same class under Celery's name."""

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] | None = None,
        *,
        config_source: Any = None,
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Settings()
        if config_source is not None:
            self.conf.from_object(config_source)
        if settings:
            self.conf.update(settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        if include:
            self.conf.include = tuple(include)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.oid = str(uuid.uuid4())
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self.on_after_configure = signals.Signal("on_after_configure")
        self.on_after_finalize = signals.Signal("on_after_finalize")
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._router: Router | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._finalized = False
        self._shared_seen = 0
        if set_as_current:
            set_current_app(self)

    def __repr__(self) -> str:
        return f"<Taskframe {self.main or '__main__'} broker={self.broker_url}>"

    # -- configuration -----------------------------------------------------------------------

    def config_from_object(
        self, obj: Any, namespace: str | None = None, *, silent: bool = False, force: bool = False
    ) -> None:
        self.conf.from_object(obj, namespace=namespace, silent=silent)
        self._reset_connections()

    def config_from_envvar(self, variable_name: str, *, silent: bool = False) -> None:
        module_name = os.environ.get(variable_name)
        if not module_name:
            if silent:
                return
            raise ImproperlyConfigured(f"environment variable {variable_name} is not set")
        self.config_from_object(module_name, silent=silent)

    @property
    def broker_url(self) -> str:
        url: str | None = self.conf.broker_url
        return url or DEFAULT_BROKER_URL

    @property
    def result_backend_url(self) -> str | None:
        """The backend URL; by default the sqlite broker's own file keeps results too."""
        url: str | None = self.conf.result_backend
        if url in ("disabled", "none"):
            return None
        if url:
            return url
        broker_url = self.broker_url
        if broker_url.startswith(("sqlite:", "memory:")):
            return broker_url
        return None

    @property
    def broker(self) -> Broker:
        self._check_fork()
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = broker_from_url(
                        self.broker_url, transport_options=self.conf.broker_transport_options
                    )
        return self._broker

    @property
    def backend(self) -> ResultBackend | None:
        """The result backend, or None when results are disabled."""
        self._check_fork()
        if self._backend is None:
            url = self.result_backend_url
            if url is None:
                return None
            with self._lock:
                if self._backend is None:
                    self._backend = backend_from_url(
                        url, options=self.conf.result_backend_transport_options
                    )
        return self._backend

    @property
    def router(self) -> Router:
        if self._router is None:
            self._router = Router(self.conf.task_routes, self.conf.task_default_queue)
        return self._router

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self.origin = f"gen{self._pid}@{socket.gethostname()}"
            self._broker = None
            self._backend = None

    def _reset_connections(self) -> None:
        for resource in (self._broker, self._backend):
            if resource is not None:
                resource.close()
        self._broker = None
        self._backend = None
        self._router = None

    def close(self) -> None:
        self._reset_connections()

    # -- tasks -------------------------------------------------------------------------------

    @overload
    def task(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fun: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, *, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...
    @overload
    def task(self, *, bind: Literal[False] = False, **options: Any) -> TaskDecorator: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(bind=True, ...)``."""
        if args:
            return self._register(args[0], options)
        return lambda function: self._register(function, options)

    def _register(self, fun: Callable[..., Any], options: dict[str, Any]) -> Task[Any, Any]:
        options = dict(options)
        bind = bool(options.pop("bind", False))
        base: type[Task[Any, Any]] = options.pop("base", None) or Task
        name = options.pop("name", None) or self.gen_task_name(fun.__name__, fun.__module__)
        if name in self.tasks and getattr(self.tasks[name], "__wrapped__", None) is fun:
            return self.tasks[name]
        is_async = inspect.iscoroutinefunction(fun)
        run = fun if bind else staticmethod(fun)
        attributes: dict[str, Any] = {
            "name": name,
            "app": self,
            "run": run,
            "bound": bind,
            "is_async": is_async,
            "__wrapped__": staticmethod(fun),
            "__doc__": fun.__doc__,
            "__module__": fun.__module__,
            "__qualname__": fun.__qualname__,
            **options,
        }
        task_class = type(fun.__name__, (base,), attributes)
        task: Task[Any, Any] = task_class()
        self.tasks[name] = task
        return task

    def gen_task_name(self, name: str, module: str) -> str:
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{name}"

    def get_task(self, name: str) -> Task[Any, Any]:
        """The registered task called ``name``; imports ``include``/``imports`` first."""
        try:
            return self.tasks[name]
        except KeyError:
            self.finalize()
            try:
                return self.tasks[name]
            except KeyError:
                raise NotRegistered(
                    f"task {name!r} is not registered in app {self.main or '__main__'!r}; "
                    f"known tasks: {', '.join(sorted(self.tasks)) or 'none'}"
                ) from None

    def finalize(self) -> None:
        """Import the configured task modules and adopt shared tasks (idempotent)."""
        for factory in shared_factories[self._shared_seen :]:
            factory(self)
        self._shared_seen = len(shared_factories)
        if self._finalized:
            return
        self._finalized = True
        from taskframe.canvas.builtins import register_builtins

        register_builtins(self)
        for module_name in (*self.conf.imports, *self.conf.include):
            importlib.import_module(module_name)
        for factory in shared_factories[self._shared_seen :]:
            factory(self)
        self._shared_seen = len(shared_factories)
        self.on_after_configure.send(sender=self, source=self.conf)
        self.on_after_finalize.send(sender=self)

    def autodiscover_tasks(
        self, packages: Iterable[str] | Callable[[], Iterable[str]], related_name: str = "tasks"
    ) -> None:
        """Import ``<package>.tasks`` for each package that has one (Django's INSTALLED_APPS)."""
        names = packages() if callable(packages) else packages
        for package in names:
            try:
                importlib.import_module(f"{package}.{related_name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{related_name}":
                    raise

    # -- sending -------------------------------------------------------------------------------

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> results.AsyncResult[Any]:
        """Send a task message by name; returns its AsyncResult at once.

        ``options`` are those of :meth:`draft_message` (countdown, eta, expires, queue,
        priority, headers, link, ...), as Celery's ``send_task`` takes them."""
        queue_name, delay, message = self.build_message(name, args, kwargs, **options)
        if signals.before_task_publish.has_receivers():
            signals.before_task_publish.send(
                sender=name,
                body=message.body,
                exchange="",
                routing_key=queue_name,
                headers=message.headers,
                properties=message.properties,
                declare=[],
                retry_policy=None,
            )
        self.broker.publish(queue_name, message, delay=delay, priority=message.priority)
        if signals.after_task_publish.has_receivers():
            signals.after_task_publish.send(
                sender=name,
                body=message.body,
                exchange="",
                routing_key=queue_name,
                headers=message.headers,
            )
        return self.AsyncResult(message.headers["id"], task_name=name)

    def build_message(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> tuple[str, float, Message]:
        """The queue, delay in seconds and encoded message for one call (no I/O); ``options``
        as :meth:`draft_message` takes them."""
        queue_name, delay, draft = self.draft_message(name, args, kwargs, **options)
        return queue_name, delay, draft.encode()

    def draft_message(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        task_id: str | None = None,
        expires: float | datetime | None = None,
        queue: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        headers: dict[str, Any] | None = None,
        serializer: str | None = None,
        compression: str | None = None,
        ignore_result: bool | None = None,
        link: Any = None,
        link_error: Any = None,
        task: Task[Any, Any] | None = None,
        **options: Any,
    ) -> tuple[str, float, Draft]:
        """:meth:`build_message` before encoding: the queue, delay and the call as a
        :class:`~taskframe.protocol.Draft`."""
        args = list(args or ())
        kwargs = dict(kwargs or {})
        if task is None:
            task = self.tasks.get(name)
        delay = 0.0
        expires_at = None
        if countdown is not None or eta is not None or expires is not None:
            now = utcnow()
            if countdown is not None:
                delay = max(0.0, float(countdown))
                eta = deadline_from(delay, now)
            elif eta is not None:
                eta = deadline_from(eta, now)
                assert eta is not None
                delay = seconds_until(eta, now)
            expires_at = deadline_from(expires, now)
        parent = current_request()
        root_id = options.pop("root_id", None)
        parent_id = options.pop("parent_id", None)
        if parent is not None and parent.id is not None and options.pop("add_to_parent", True):
            root_id = root_id or parent.root_id or parent.id
            parent_id = parent_id or parent.id
        route = self.router.route(
            name, args, kwargs, {"queue": queue, "routing_key": routing_key}, task=task
        )
        conf = self.conf
        queue_name = route.get("queue") or conf.task_default_queue
        if priority is None:
            priority = route.get("priority")
        if priority is None and task is not None:
            priority = task.priority
        if priority is None:
            priority = conf.task_default_priority
        time_limit = options.pop("time_limit", None)
        soft_time_limit = options.pop("soft_time_limit", None)
        arg_names = None
        if task is not None:
            if ignore_result is None:
                ignore_result = task.ignore_result
                if ignore_result is None:
                    ignore_result = bool(conf.task_ignore_result)
            time_limit = task.time_limit if time_limit is None else time_limit
            soft_time_limit = task.soft_time_limit if soft_time_limit is None else soft_time_limit
            serializer = serializer or task.serializer
            compression = compression or task.compression
            signature = task.run_signature
            arg_names = list(signature.parameters) if signature is not None else None
        task_message = TaskMessage(
            id=task_id or new_id(),
            task=name,
            args=args,
            kwargs=kwargs,
            callbacks=_signature_dicts(link),
            errbacks=_signature_dicts(link_error),
            chain=_signature_dicts(options.pop("chain", None)),
            chord=_signature_dict(options.pop("chord", None)),
            eta=eta,
            expires=expires_at,
            retries=int(options.pop("retries", 0) or 0),
            timelimit=(time_limit, soft_time_limit),
            root_id=root_id,
            parent_id=parent_id,
            group=options.pop("group_id", None),
            group_index=options.pop("group_index", None),
            shadow=options.pop("shadow", None),
            origin=options.pop("origin", None) or self.origin,
            ignore_result=ignore_result,
            reply_to=options.pop("reply_to", None) or self.oid,
            priority=priority,
            replaced_task_nesting=int(options.pop("replaced_task_nesting", 0) or 0),
            stamped_headers=options.pop("stamped_headers", None),
            stamps=options.pop("stamps", None) or {},
            extra_headers=dict(headers) if headers else {},
        )
        draft = Draft(
            task_message,
            serializer=serializer or conf.task_serializer,
            compression=compression or conf.task_compression,
            arg_names=arg_names,
        )
        return queue_name, delay, draft

    # -- results -------------------------------------------------------------------------------

    def AsyncResult(
        self, task_id: str, *, task_name: str | None = None
    ) -> results.AsyncResult[Any]:
        from taskframe.result import AsyncResult

        return AsyncResult(task_id, app=self, task_name=task_name)

    def GroupResult(
        self, group_id: str, members: Sequence[results.AsyncResult[Any]]
    ) -> results.GroupResult:
        from taskframe.result import GroupResult

        return GroupResult(group_id, list(members), app=self)

    def store_result(
        self,
        task_id: str,
        state: str,
        result: Any,
        *,
        traceback: str | None = None,
        request: Any = None,
        children: list[Any] | None = None,
    ) -> None:
        """Encode and store one task state in Celery's result-meta format."""
        backend = self.backend
        if backend is None:
            return
        payload = self.encode_result(
            task_id, state, result, traceback=traceback, request=request, children=children
        )
        backend.set(task_id, payload, expires=self.result_expires_seconds)

    def encode_result(
        self,
        task_id: str,
        state: str,
        result: Any,
        *,
        traceback: str | None = None,
        request: Any = None,
        children: list[Any] | None = None,
    ) -> bytes:
        """One task state in Celery's result-meta format, as :meth:`store_result` stores it."""
        extended = None
        if self.conf.result_extended and request is not None:
            extended = {
                "name": request.task,
                "args": request.args,
                "kwargs": request.kwargs,
                "worker": request.hostname,
                "retries": request.retries,
                "queue": (request.delivery_info or {}).get("routing_key"),
            }
        return encode_meta(
            task_id,
            state,
            result,
            traceback=traceback,
            children=children,
            group_id=getattr(request, "group", None),
            parent_id=getattr(request, "parent_id", None),
            extended=extended,
            serializer=self.conf.result_serializer,
        )

    @property
    def result_expires_seconds(self) -> float | None:
        expires = self.conf.result_expires
        if expires is None:
            return None
        if hasattr(expires, "total_seconds"):
            return float(expires.total_seconds())
        return float(expires)

    def signature(
        self, name: str, args: Sequence[Any] = (), kwargs: Any = None, **options: Any
    ) -> Signature:
        from taskframe.canvas.signature import Signature

        return Signature(name, tuple(args), kwargs or {}, options, app=self)

    @property
    def control(self) -> Control:
        """Remote control of running workers: ``app.control.revoke(task_id)``, ``ping()``..."""
        from taskframe.control import Control

        return Control(self)

    def test_worker(self, **options: Any) -> Any:
        """An in-process worker for tests: ``with app.test_worker(): ...``."""
        from taskframe.testing import start_worker

        return start_worker(self, **options)

    def add_periodic_task(
        self, schedule: Any, sig: Any, name: str | None = None, **options: Any
    ) -> str:
        """Add a beat entry, as Celery's ``app.add_periodic_task``; returns its name."""
        from taskframe.beat.entry import add_periodic_task

        entry_name: str = add_periodic_task(self, schedule, sig, name=name, **options)
        return entry_name


Celery = Taskframe


def _signature_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if hasattr(value, "as_dict"):
        result: dict[str, Any] = value.as_dict()
        return result
    return dict(value)


def _signature_dicts(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [d for d in (_signature_dict(item) for item in value) if d is not None]
    single = _signature_dict(value)
    return [single] if single is not None else None


@overload
def shared_task(fun: Callable[P, Coroutine[Any, Any, R]], /) -> SharedTask[P, R]: ...
@overload
def shared_task(fun: Callable[P, R], /) -> SharedTask[P, R]: ...
@overload
def shared_task(*, bind: Literal[True], **options: Any) -> SharedBoundTaskDecorator: ...
@overload
def shared_task(*, bind: Literal[False] = False, **options: Any) -> SharedTaskDecorator: ...


def shared_task(*args: Any, **options: Any) -> Any:
    """A task registered on every app, for reusable libraries (Celery's ``shared_task``).

    Returns a :class:`~taskframe.shared.SharedTask` that uses the current app's task."""
    if args:
        return register_shared(args[0], options)
    return lambda function: register_shared(function, options)
