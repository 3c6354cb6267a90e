"""Typed tasks: mypy accepts correct ``delay``/``apply_async`` calls and flags wrong ones.

Given a snippet of user code, when mypy --strict checks it against taskframe's sources, then
exactly the lines marked ``# E: <code>`` are reported, with that error code. mypy cannot follow
the setuptools package-dir mapping of ``taskframe.brokers``/``taskframe.canvas``, so the check
runs over a tree of symlinks laid out as the package installs (as ``.ci/typecheck`` does).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SNIPPET = """\
from typing import Any

from taskframe import AsyncResult, Taskframe, shared_task
from taskframe.result import EagerResult

app = Taskframe("proj", broker="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=3)
def bound(self: Any, text: str, *, upper: bool = False) -> str:
    return text.upper() if upper else text


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


@shared_task
def halve(n: int) -> float:
    return n / 2


@shared_task(bind=True)
def shared_bound(self: Any, n: int) -> int:
    return n


ok_delay: AsyncResult[int] = add.delay(1, 2)
ok_keywords: AsyncResult[int] = add.delay(x=1, y=2)
ok_apply_async: AsyncResult[int] = add.apply_async((1, 2), countdown=5, queue="q")
ok_bound: AsyncResult[str] = bound.delay("x", upper=True)
ok_async: AsyncResult[bytes] = fetch.delay("http://example.com")
ok_shared: AsyncResult[float] = halve.delay(3)
ok_shared_bound: AsyncResult[int] = shared_bound.delay(3)
ok_value: int = add.delay(1, 2).get(timeout=1)
ok_direct: int = add(1, 2)
ok_eager: EagerResult[int] = add.apply((1, 2))

bad_type = add.delay("1", 2)  # E: arg-type
bad_missing = add.delay(1)  # E: call-arg
bad_result: AsyncResult[str] = add.delay(1, 2)  # E: assignment
bad_bound = bound.delay(1)  # E: arg-type
bad_keyword = bound.delay("x", upper="yes")  # E: arg-type
bad_async: AsyncResult[str] = fetch.delay("u")  # E: assignment
bad_value: str = add.delay(1, 2).get()  # E: assignment
bad_extra = add.delay(1, 2, z=3)  # E: call-arg
bad_shared = halve.delay("n")  # E: arg-type
bad_shared_bound = shared_bound.delay("n")  # E: arg-type
bad_direct: str = add(1, 2)  # E: assignment
"""


def symlink_tree(root: Path) -> Path:
    """``taskframe`` as installed: its entries, plus brokers/ and canvas/ mapped inside."""
    package = root / "taskframe"
    package.mkdir(parents=True)
    for entry in (REPO / "taskframe").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "brokers").symlink_to(REPO / "brokers")
    (package / "canvas").symlink_to(REPO / "canvas")
    return root


def test_mypy_accepts_correct_calls_and_flags_wrong_ones(tmp_path: Path) -> None:
    tree = symlink_tree(tmp_path / "tree")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    mypy = Path(sys.executable).parent / "mypy"
    completed = subprocess.run(
        [
            str(mypy),
            "--strict",
            "--no-site-packages",
            "--follow-imports=silent",
            "--ignore-missing-imports",
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(snippet),
        ],
        cwd=tree,
        env={**os.environ, "MYPYPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    reported = {
        (int(line), code)
        for line, code in re.findall(r"snippet\.py:(\d+): error: .*\[([a-z-]+)\]$", output, re.M)
    }
    expected = {
        (number, marker.group(1))
        for number, text in enumerate(SNIPPET.splitlines(), start=1)
        if (marker := re.search(r"# E: ([a-z-]+)$", text))
    }
    assert len(expected) == 11
    assert reported == expected, output
    assert completed.returncode == 1, output
