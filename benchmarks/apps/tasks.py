"""The three task bodies every framework runs, registered under the same names.

``noop`` (results ignored) counts itself in Redis; ``echo`` returns its argument (round trip,
chord header); ``chord_done`` is the chord body and tells the harness it ran.
"""

from __future__ import annotations

from typing import Any

from benchmarks import task_counter

__all__ = ["NAMES", "chord_done", "echo", "noop"]

NAMES = {"noop": "bench.noop", "echo": "bench.echo", "chord_done": "bench.chord_done"}


def noop(number: int) -> None:
    task_counter.hit()


def echo(number: int) -> int:
    return number


def chord_done(results: Any = None) -> None:
    task_counter.chord_done()
