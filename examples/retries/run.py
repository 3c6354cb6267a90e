"""Start a worker, ship two orders (one never succeeds), show the dead letter, stop.

Run it from anywhere: ``python examples/retries/run.py`` (embedded sqlite broker, no server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    os.chdir(HERE)
    sys.path.insert(0, str(HERE))
    from tasks import ATTEMPTS, app, ship

    ATTEMPTS.unlink(missing_ok=True)
    app.broker.purge_dead_letters("celery")
    worker = subprocess.Popen(
        [sys.executable, "-m", "taskframe", "-A", "tasks", "worker", "-c", "2", "-l", "ERROR"],
        cwd=HERE,
    )
    try:
        print("ship('book') ->", ship.delay("book").get(timeout=30))
        doomed = ship.delay("doomed")
        deadline = time.monotonic() + 30
        while not app.broker.dead_letters("celery") and time.monotonic() < deadline:
            time.sleep(0.05)
        print("ship('doomed') ->", doomed.state)
        for parked in app.broker.dead_letters("celery"):
            print("dead letter:", parked.reason)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    print("attempts:", ATTEMPTS.read_text().split())


if __name__ == "__main__":
    main()
