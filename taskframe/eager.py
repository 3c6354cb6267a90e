"""``Task.apply()``: run a task in this process with a worker's semantics.

The call goes through the same :func:`~taskframe.execution.execute` as in a worker, so hooks,
signals, retries, callbacks and stored state behave alike; retries run at once, in order, as
Celery's eager mode does. ``task_eager_propagates`` (or ``throw=True``) re-raises a failure.
A task applied from inside another task run gets that run as its parent (and its root), as
in a worker.
"""

from __future__ import annotations

import socket
import uuid
from typing import TYPE_CHECKING, Any

from taskframe import states
from taskframe.app import _signature_dicts
from taskframe.context import current_request
from taskframe.execution import execute
from taskframe.protocol import TaskMessage
from taskframe.result import EagerResult

if TYPE_CHECKING:
    from taskframe.task import Task

__all__ = ["apply_eagerly"]


def apply_eagerly(
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    task_id: str | None,
    link: Any,
    link_error: Any,
    throw: bool | None,
    retries: int,
    options: dict[str, Any],
) -> EagerResult[Any]:
    app = task.app
    task_id = task_id or str(uuid.uuid4())
    root_id, parent_id = options.get("root_id"), options.get("parent_id")
    caller = current_request()
    if caller is not None and caller.id is not None and options.get("add_to_parent", True):
        root_id = root_id or caller.root_id or caller.id
        parent_id = parent_id or caller.id
    message = TaskMessage(
        id=task_id,
        task=task.name,
        args=list(args),
        kwargs=kwargs,
        callbacks=_signature_dicts(link),
        errbacks=_signature_dicts(link_error),
        chain=_signature_dicts(options.get("chain")),
        retries=retries,
        root_id=root_id or task_id,
        parent_id=parent_id,
        group=options.get("group_id"),
        group_index=options.get("group_index"),
        ignore_result=options.get("ignore_result"),
    )
    delivery_info = {"is_eager": True, "routing_key": options.get("queue")}
    outcome = execute(
        app, message, hostname=socket.gethostname(), delivery_info=delivery_info, is_eager=True
    )
    if outcome.state == states.RETRY and outcome.exception is not None:
        retry_sig = getattr(outcome.exception, "sig", None)
        if retry_sig is not None:
            retried: EagerResult[Any] = retry_sig.apply(throw=throw)
            return retried
    propagate = app.conf.task_eager_propagates if throw is None else throw
    if outcome.exception is not None and outcome.state == states.FAILURE and propagate:
        raise outcome.exception
    value = outcome.retval if outcome.state == states.SUCCESS else outcome.exception
    return EagerResult(
        task_id, value, outcome.state, traceback=outcome.traceback, app=app, task_name=task.name
    )
