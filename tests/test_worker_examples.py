"""The worker examples run as a user runs them and print what their docstrings promise.

Each example folder is copied clean (no database, no logs from an earlier run) and its
``run.py`` started; it runs its own worker on the embedded sqlite default and stops it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, tmp_path: Path) -> list[str]:
    folder = tmp_path / name
    shutil.copytree(
        EXAMPLES / name, folder, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3*", "*.log")
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TASKFRAME_BROKER_URL", "CELERY_BROKER_URL", "TASKFRAME_RESULT_BACKEND")
    }
    completed = subprocess.run(
        [sys.executable, str(folder / "run.py")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


def test_retries_example_backs_off_then_dead_letters(tmp_path: Path) -> None:
    lines = run_example("retries", tmp_path)
    assert lines[0] == "ship('book') -> book: shipped"
    assert lines[1] == "ship('doomed') -> FAILURE"
    assert lines[2].startswith("dead letter: retries exhausted: ServiceUnavailable(")
    attempts = lines[3].removeprefix("attempts: ")
    assert attempts.count("'book'") == 3 and attempts.count("'doomed'") == 4


def test_timelimits_example_cleans_up_and_kills_the_stuck_task(tmp_path: Path) -> None:
    lines = run_example("timelimits", tmp_path)
    assert lines[0] == "crunch(10) -> all 10 items done"
    assert lines[1].startswith("crunch(1000) -> stopped at the soft limit after ")
    assert lines[2].startswith("stuck() -> FAILURE TimeLimitExceeded(")


@pytest.mark.timeout(120)
def test_async_example_fetches_concurrently(tmp_path: Path) -> None:
    lines = run_example("async_tasks", tmp_path)
    assert lines[0] == "fetched 50 pages; first: <html from https://example.com/0>"
    assert lines[1].startswith("checksum -> ")
