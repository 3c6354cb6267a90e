"""The README's demo: ``python examples/quickstart/run.py`` works and prints the results.

Given a clean copy of the quickstart folder (no database left by an earlier run), when its
``run.py`` runs as a user would run it, then it starts a prefork worker on the embedded sqlite
default, prints the tasks' results, stops the worker and exits by itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart"


def test_quickstart_runs_and_prints_results(tmp_path: Path) -> None:
    folder = tmp_path / "quickstart"
    shutil.copytree(QUICKSTART, folder, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3*"))
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
    assert completed.stdout.splitlines() == [
        "add(i, i) for i in 0..9 -> [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]",
        "flaky_divide(10, 4) -> 2.5",
        "worker stopped; done",
    ]
    assert (folder / "taskframe.sqlite3").exists(), "the embedded default lives beside tasks.py"
    assert "Traceback" not in completed.stderr
