"""RedisBackend: Celery's Redis result backend keys and JSON, results pushed by pub/sub.

See the package docstring for the keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from taskframe.brokers.base import ResultBackend
from taskframe.brokers.redis import scripts
from taskframe.brokers.redis.client import HeldConnection, Script
from taskframe.brokers.redis.connection import connect, parse_url, translate_errors
from taskframe.brokers.redis.listener import ResultListener
from taskframe.brokers.redis.wire import NoScriptError, ResponseError
from taskframe.exceptions import ChordError

__all__ = ["RedisBackend"]

TASK_PREFIX = "celery-task-meta-"
GROUP_PREFIX = "celery-taskset-meta-"


def _task_id_of(part: bytes) -> str:
    """The task id of an encoded ``[1, task_id, state, result]`` part, for Celery's ``.d``."""
    try:
        decoded = json.loads(part)
    except ValueError:
        return ""
    if isinstance(decoded, list) and len(decoded) > 1 and isinstance(decoded[1], str):
        return decoded[1]
    return ""


def _ms(expires: float | None) -> int:
    return 0 if expires is None else max(1, int(expires * 1000))


def _px(expires: float | None) -> tuple[str, int] | tuple[()]:
    """SET's expiry arguments (none: kept for ever)."""
    return ("PX", _ms(expires)) if expires is not None else ()


def _chord_part(
    group_id: str, index: int, part: bytes, expires: float | None
) -> tuple[list[str], list[Any]]:
    """Keys and arguments of ``scripts.CHORD_PART`` for one header part."""
    key = GROUP_PREFIX + group_id
    keys = [key + ".j", key + ".t", key + ".s", key + ".d", key, key + ".c"]
    return keys, [_task_id_of(part), index, part, _ms(expires)]


def _parts(group_id: str, reply: Any) -> list[bytes] | None:
    """The chord's parts from ``scripts.CHORD_PART``'s reply (None: not the completing one)."""
    if reply == -1:
        raise ChordError(f"chord {group_id} was never started (or its counter expired)")
    return [bytes(p) for p in reply] if isinstance(reply, list) else None


class RedisBackend(ResultBackend):
    """Results a Celery client reads, and that reads a Celery worker's results."""

    scheme = "redis"
    supports_native_chords: ClassVar[bool] = True

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options)
        self.target = parse_url(url)
        self.recheck_interval = float(self.options.get("wait_recheck_interval", 10.0))
        self.client = connect(self.target, self.options)
        self._commands = HeldConnection(self.client.settings)
        self._set_script = Script(scripts.SET_RESULT)
        self._chord_script = Script(scripts.CHORD_PART)
        self._adjust_script = Script(scripts.CHORD_ADJUST)
        self._listener = ResultListener(self.client, self.recheck_interval)

    def set(self, task_id: str, payload: bytes, *, expires: float | None) -> None:
        """GET, SET (with expiry) and PUBLISH in one script; a stored SUCCESS is kept."""
        with translate_errors(self.target):
            self._set_script(self._commands, [TASK_PREFIX + task_id], [payload, _ms(expires)])

    def get(self, task_id: str) -> bytes | None:
        with translate_errors(self.target):
            value: bytes | None = self._commands.execute("GET", TASK_PREFIX + task_id)
        return value

    def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        if not task_ids:
            return []
        with translate_errors(self.target):
            values: list[bytes | None] = self.client.execute(
                "MGET", *[TASK_PREFIX + t for t in task_ids]
            )
        return values

    def delete(self, task_id: str) -> None:
        with translate_errors(self.target):
            self.client.execute("DEL", TASK_PREFIX + task_id)

    def wait(
        self,
        task_id: str,
        timeout: float | None,
        is_ready: Callable[[bytes], bool],
        interval: float = 0.01,
    ) -> bytes | None:
        """Subscribe to the result's channel first (on the one connection this backend's
        waiters share in this process), then GET, so a result stored in between is not
        missed; then sleep on the subscription until a ready result is published.

        After ``wait_recheck_interval`` seconds (10) of silence it GETs once more, so a
        result published while the subscription was reconnecting is still seen."""
        key = TASK_PREFIX + task_id
        deadline = None if timeout is None else time.monotonic() + timeout
        with translate_errors(self.target):
            return self._listener.wait(
                key, lambda: self._commands.execute("GET", key), is_ready, deadline
            )

    def set_group(self, group_id: str, payload: bytes, *, expires: float | None) -> None:
        with translate_errors(self.target):
            self.client.execute("SET", GROUP_PREFIX + group_id, payload, *_px(expires))

    def get_group(self, group_id: str) -> bytes | None:
        with translate_errors(self.target):
            value: bytes | None = self.client.execute("GET", GROUP_PREFIX + group_id)
        return value

    def delete_group(self, group_id: str) -> None:
        with translate_errors(self.target):
            self.client.execute("DEL", GROUP_PREFIX + group_id)

    def chord_start(self, group_id: str, size: int, *, expires: float | None) -> None:
        """``DEL .c`` and ``SET .s size``, as Celery's producer does at apply time; also
        drops any parts an earlier start of the same group counted."""
        key = GROUP_PREFIX + group_id
        with translate_errors(self.target):
            pipe = self.client.pipeline(transaction=True)
            pipe.add("DEL", key + ".c", key + ".j", key + ".t", key + ".d")
            pipe.add("SET", key + ".s", size, *_px(expires))
            pipe.execute()

    def chord_part_done(
        self, group_id: str, index: int, part: bytes, *, expires: float | None
    ) -> list[bytes] | None:
        keys, args = _chord_part(group_id, index, part, expires)
        with translate_errors(self.target):
            reply = self._chord_script(self._commands, keys, args)
        return _parts(group_id, reply)

    def store_chord_member(
        self,
        task_id: str,
        payload: bytes,
        part: bytes,
        *,
        group_id: str,
        index: int,
        expires: float | None,
    ) -> list[bytes] | None:
        """Both scripts in one write, so a chord header member costs one round trip."""
        set_keys, set_args = [TASK_PREFIX + task_id], [payload, _ms(expires)]
        keys, args = _chord_part(group_id, index, part, expires)
        calls = [(self._set_script, set_keys, set_args), (self._chord_script, keys, args)]
        with translate_errors(self.target):
            replies = self._commands.execute_many([s.command(k, a) for s, k, a in calls])
            for number, (reply, (script, k, a)) in enumerate(zip(replies, calls, strict=True)):
                if isinstance(reply, NoScriptError):  # not run: a restarted server
                    replies[number] = script(self._commands, k, a)
                elif isinstance(reply, ResponseError):
                    raise reply
        return _parts(group_id, replies[1])

    def chord_adjust(self, group_id: str, delta: int) -> None:
        key = GROUP_PREFIX + group_id
        with translate_errors(self.target):
            reply = self._adjust_script(self.client, [key + ".s", key + ".t"], [delta])
        if reply == -1:
            raise ChordError(f"chord {group_id} was never started (or its counter expired)")

    def close(self) -> None:
        self._listener.close()
        self._commands.close()
        self.client.close()
