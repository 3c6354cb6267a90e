"""The Task class: what ``@app.task`` makes of a function.

A task is one instance per app of a subclass made for the function (so ``base=`` classes with
``on_success``/``on_failure`` hooks work as in Celery). ``Task[P, R]`` keeps the function's
parameters (``ParamSpec``) for ``delay`` and its return type for ``AsyncResult[R]``.
"""

from __future__ import annotations

import functools
import inspect
import random
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeVar

from taskframe.context import Context, current_request, request_context
from taskframe.exceptions import MaxRetriesExceededError, Retry

if TYPE_CHECKING:
    from taskframe.app import Taskframe
    from taskframe.canvas import maps
    from taskframe.canvas.signature import Signature
    from taskframe.result import AsyncResult, EagerResult

__all__ = ["Task"]

P = ParamSpec("P")
R = TypeVar("R")

_EMPTY_CONTEXT = Context()


class Task(Generic[P, R]):
    """A registered task. Class attributes are the task's options; ``@app.task(...)`` sets them."""

    name: str = ""
    app: Taskframe
    typing: ClassVar[bool] = True
    queue: str | None = None
    routing_key: str | None = None
    priority: int | None = None
    serializer: str | None = None
    compression: str | None = None
    ignore_result: bool | None = None
    store_errors_even_if_ignored: bool = False
    max_retries: int | None = 3
    default_retry_delay: float = 180
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    reject_on_worker_lost: bool | None = None
    track_started: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | None = None
    expires: float | datetime | None = None
    autoretry_for: Sequence[type[BaseException]] = ()
    dont_autoretry_for: Sequence[type[BaseException]] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    backoff_strategy: Callable[[int], float] | None = None
    is_async: bool = False
    bound: bool = False

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        raise NotImplementedError(f"task {self.name!r} has no body")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task here and now, like calling the function.

        Called directly inside another task's run, it gets a request of its own
        (``called_directly``), so it never mistakes the caller's id or retries for its own."""
        caller = current_request()
        if caller is None or caller.task == self.name:
            return self.run(*args, **kwargs)
        with request_context(Context(task=self.name, args=list(args), kwargs=dict(kwargs))):
            return self.run(*args, **kwargs)

    @property
    def request(self) -> Context:
        return current_request() or _EMPTY_CONTEXT

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    # -- sending ---------------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        queue: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: dict[str, Any] | None = None,
        serializer: str | None = None,
        ignore_result: bool | None = None,
        link: Signature | Sequence[Signature] | None = None,
        link_error: Signature | Sequence[Signature] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task to a worker (or run it here when ``task_always_eager`` is set)."""
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        if self.typing:
            self._check_arguments(args, kwargs)
        if self.app.conf.task_always_eager:
            return self.apply(
                args, kwargs, task_id=task_id, link=link, link_error=link_error, **options
            )
        return self.app.send_task(
            self.name,
            args,
            kwargs,
            countdown=countdown,
            eta=eta,
            expires=self.expires if expires is None else expires,
            queue=queue,
            routing_key=routing_key,
            priority=priority,
            task_id=task_id,
            headers=headers,
            serializer=serializer,
            ignore_result=ignore_result,
            link=link,
            link_error=link_error,
            task=self,
            **options,
        )

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        link: Signature | Sequence[Signature] | None = None,
        link_error: Signature | Sequence[Signature] | None = None,
        throw: bool | None = None,
        retries: int = 0,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task in this process with the same semantics as a worker run."""
        from taskframe.eager import apply_eagerly

        return apply_eagerly(
            self,
            tuple(args or ()),
            dict(kwargs or {}),
            task_id=task_id,
            link=link,
            link_error=link_error,
            throw=throw,
            retries=retries,
            options=options,
        )

    def _check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        signature = self.run_signature
        if signature is None:
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}() {exc}") from None

    @functools.cached_property
    def run_signature(self) -> inspect.Signature | None:
        """``inspect.signature(self.run)``, worked out once per task: it costs more than the
        rest of a send. None when the callable has no readable signature."""
        try:
            return inspect.signature(self.run)
        except (TypeError, ValueError):
            return None

    # -- signatures --------------------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        from taskframe.canvas.signature import Signature

        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        from taskframe.canvas.signature import Signature

        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        from taskframe.canvas.signature import Signature

        immutable = bool(options.pop("immutable", False))
        return Signature(
            self.name, tuple(args or ()), kwargs or {}, options, immutable=immutable, app=self.app
        )

    subtask = signature

    def map(self, it: Iterable[Any]) -> maps.xmap:
        """One message that calls this task on every item: ``[task(item) for item in it]``."""
        from taskframe.canvas.maps import xmap

        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Sequence[Any]]) -> maps.xstarmap:
        """One message that calls ``task(*item)`` for every item."""
        from taskframe.canvas.maps import xstarmap

        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Iterable[Sequence[Any]], n: int) -> maps.chunks:
        """The items in parts of ``n``, one starmap message per part (a group)."""
        from taskframe.canvas.maps import chunks

        return chunks(self.s(), it, n, app=self.app)

    def replace(self, sig: Signature) -> Any:
        """Replace this running task by ``sig``, which inherits its id, callbacks, chain and
        chord membership (Celery's ``Task.replace``). In a worker it raises :class:`Ignore`;
        eagerly it returns the replacement's value: ``return self.replace(sig)``."""
        from taskframe.canvas.replace import replace_task

        return replace_task(self, sig)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        from taskframe.result import AsyncResult

        return AsyncResult(task_id, app=self.app)

    # -- retry ---------------------------------------------------------------------------

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Schedule this call again, as Celery's ``Task.retry``.

        Raises :class:`Retry` (the worker stores RETRY and sends the retry message), or, once
        ``max_retries`` is used up, re-raises ``exc`` or :class:`MaxRetriesExceededError`."""
        request = self.request
        if request.called_directly:
            raise (
                exc
                if exc is not None
                else RuntimeError(
                    f"task {self.name!r} was called directly, so it cannot be retried"
                )
            )
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            request.retries_exhausted = True
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{tuple(request.args)} "
                f"kwargs:{request.kwargs}"
            )
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        signature = self._retry_signature(
            request, args, kwargs, eta=eta, countdown=countdown, options=options
        )
        retry = Retry(exc=exc, when=eta or countdown, is_eager=request.is_eager, sig=signature)
        if not throw:
            signature.apply_async()
            retry.sig = None
            return retry
        raise retry

    def retry_countdown(self, retries: int) -> float:
        """Seconds before autoretry number ``retries`` + 1, from the backoff options."""
        strategy = type(self).backoff_strategy  # the plain function, not bound to the task
        if strategy is not None:
            return float(strategy(retries))
        if not self.retry_backoff:
            return float(self.retry_kwargs.get("countdown", self.default_retry_delay))
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = min(self.retry_backoff_max, factor * (2**retries))
        if self.retry_jitter:
            countdown = random.randrange(int(countdown) + 1) if countdown >= 1 else countdown
        return float(countdown)

    def _retry_signature(
        self,
        request: Context,
        args: Sequence[Any] | None,
        kwargs: dict[str, Any] | None,
        *,
        eta: datetime | None,
        countdown: float | None,
        options: dict[str, Any],
    ) -> Signature:
        from taskframe.canvas.signature import Signature

        delivery = request.delivery_info or {}
        send_options: dict[str, Any] = {
            "task_id": request.id,
            "retries": request.retries + 1,
            "root_id": request.root_id,
            "parent_id": request.parent_id or request.id,
            "group_id": request.group,
            "group_index": request.group_index,
            "origin": request.origin,
            "link": request.callbacks,
            "link_error": request.errbacks,
            "chain": request.chain,
            "chord": request.chord,
            "expires": request.expires,
            "time_limit": request.timelimit[0],
            "soft_time_limit": request.timelimit[1],
            "queue": delivery.get("routing_key") or None,
            "priority": delivery.get("priority"),
            "reply_to": request.reply_to,
            "shadow": request.shadow,
        }
        if eta is not None:
            send_options["eta"] = eta
        else:
            send_options["countdown"] = countdown
        send_options.update(options)
        return Signature(
            self.name,
            tuple(request.args if args is None else args),
            dict(request.kwargs if kwargs is None else kwargs),
            send_options,
            app=self.app,
        )

    # -- hooks (override in a base class) ----------------------------------------------------

    def before_start(self, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Called in the worker before the task runs."""

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> None:
        """Called in the worker after the task succeeded."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Called in the worker after the task failed."""

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Called in the worker when the task is to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Called in the worker after any outcome."""

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None
    ) -> None:
        """Store a custom state (e.g. PROGRESS) for this or another task."""
        target = task_id or self.request.id
        if target is None:
            raise RuntimeError("update_state() needs a task_id outside a running task")
        self.app.store_result(target, state or "PENDING", meta, request=self.request)
