"""Quickstart: start a worker, send it tasks, print the results, stop the worker.

Run it from anywhere: ``python examples/quickstart/run.py``. It uses the embedded default
broker (``taskframe.sqlite3`` in this folder), so no server is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    os.chdir(HERE)
    sys.path.insert(0, str(HERE))
    from tasks import add, flaky_divide

    worker = subprocess.Popen(
        [sys.executable, "-m", "taskframe", "-A", "tasks", "worker", "-c", "2", "-l", "WARNING"],
        cwd=HERE,
    )
    try:
        results = [add.delay(i, i) for i in range(10)]
        print("add(i, i) for i in 0..9 ->", [r.get(timeout=30) for r in results])
        print("flaky_divide(10, 4) ->", flaky_divide.delay(10, 4).get(timeout=30))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    print("worker stopped; done")


if __name__ == "__main__":
    main()
