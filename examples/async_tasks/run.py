"""Start an asyncio worker, fetch 50 pages at once, checksum one, stop.

Run it from anywhere: ``python examples/async_tasks/run.py`` (embedded sqlite broker). The 50
fetches of half a second each finish in about half a second, not 25: they run concurrently.
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
    from tasks import checksum, fetch

    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskframe",
            "-A",
            "tasks",
            "worker",
            "-P",
            "asyncio",
            "-c",
            "100",
            "-l",
            "WARNING",
        ],
        cwd=HERE,
    )
    try:
        pages = [fetch.delay(f"https://example.com/{number}") for number in range(50)]
        bodies = [page.get(timeout=30) for page in pages]
        print("fetched", len(bodies), "pages; first:", bodies[0])
        print("checksum ->", checksum.delay(bodies[0]).get(timeout=30))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


if __name__ == "__main__":
    main()
