"""Run the pipeline over a few generated files with a prefork worker, print the top words.

``python examples/pipeline/run.py`` — uses ./pipeline.sqlite3 in this folder; no server.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "the dog barks and the fox runs",
    "a lazy afternoon for the brown dog",
]


def main() -> None:
    sys.path.insert(0, str(HERE))
    from tasks import pipeline

    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskframe",
            "-A",
            "tasks",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-l",
            "WARNING",
        ],
        cwd=HERE,
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            paths = []
            for index, text in enumerate(TEXTS):
                path = Path(folder) / f"part{index}.txt"
                path.write_text(text, encoding="utf-8")
                paths.append(str(path))
            print("top words:", pipeline(paths).delay().get(timeout=60))
    finally:
        worker.terminate()
        worker.wait(timeout=30)


if __name__ == "__main__":
    main()
