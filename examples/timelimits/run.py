"""Start a worker, run a long task and a stuck one, print what became of them, stop.

Run it from anywhere: ``python examples/timelimits/run.py`` (embedded sqlite broker).
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
    from tasks import crunch, stuck

    worker = subprocess.Popen(
        [sys.executable, "-m", "taskframe", "-A", "tasks", "worker", "-c", "2", "-l", "CRITICAL"],
        cwd=HERE,
    )
    try:
        print("crunch(10) ->", crunch.delay(10).get(timeout=30))
        print("crunch(1000) ->", crunch.delay(1000).get(timeout=30))
        hung = stuck.delay()
        hung.get(timeout=30, propagate=False)
        print("stuck() ->", hung.state, repr(hung.info))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


if __name__ == "__main__":
    main()
