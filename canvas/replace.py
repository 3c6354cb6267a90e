"""``self.replace(sig)``: a running task hands its place in the workflow to a new signature.

As in Celery: the replacement keeps the task's id (its last step does), so results already
handed out resolve to the replacement's value; it inherits the task's callbacks and errbacks,
its group and chord membership and the rest of its chain; a group is first turned into a
chord with ``celery.accumulate`` so there is one result to hand on. In a worker the original
task then ends with :class:`~taskframe.exceptions.Ignore` (no state stored for it); eagerly the
replacement runs in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskframe.canvas.builtins import register_builtins
from taskframe.canvas.chain import chain
from taskframe.canvas.group import group
from taskframe.canvas.signature import Signature, from_dict
from taskframe.exceptions import Ignore, ImproperlyConfigured

if TYPE_CHECKING:
    from taskframe.task import Task

__all__ = ["replace_task"]


def replace_task(task: Task[Any, Any], sig: Signature) -> Any:
    request = task.request
    if request.called_directly:
        raise RuntimeError(f"task {task.name!r} was called directly, so it cannot be replaced")
    if "chord" in sig.options:
        raise ImproperlyConfigured("a signature replacing a task must not be part of a chord")
    if isinstance(sig, chain) and not sig.tasks:
        raise ImproperlyConfigured("cannot replace a task with an empty chain")
    app = task.app
    if isinstance(sig, group):
        register_builtins(app)
        sig = sig | app.signature("celery.accumulate", kwargs={"index": 0})
    for callback in request.callbacks or ():
        sig.link(from_dict(callback, app))
    for errback in request.errbacks or ():
        sig.link_error(from_dict(errback, app))
    nesting = int(request.get("replaced_task_nesting", 0) or 0) + 1
    sig.freeze(request.id)
    sig.set(
        chord=from_dict(request.chord, app) if request.chord else None,
        group_id=request.group,
        group_index=request.group_index,
        root_id=request.root_id,
        replaced_task_nesting=nesting,
    )
    for step in reversed(request.chain or []):
        sig = sig | from_dict(step, app).set(replaced_task_nesting=nesting)
    if request.is_eager:
        return sig.apply().get()
    sig.apply_async()
    raise Ignore("replaced by a new task")
