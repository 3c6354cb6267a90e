"""``async def`` tasks: run with ``taskframe -A tasks worker -P asyncio``.

Many of them run at once on one event loop per worker process (``-c`` caps how many). A plain
``def`` task on the same worker runs in a thread, so it never blocks the loop.
"""

from __future__ import annotations

import asyncio
import time

from taskframe import Taskframe

app = Taskframe("tasks")


@app.task
async def fetch(url: str) -> str:
    """Stands in for an HTTP call: waits without holding the loop."""
    await asyncio.sleep(0.5)
    return f"<html from {url}>"


@app.task
def checksum(text: str) -> int:
    """A sync task: runs in a thread of the asyncio pool."""
    time.sleep(0.01)
    return sum(text.encode())
