"""The SQS the benchmark runs on: a moto server (``moto[server]``, a dev dependency) started
on a free loopback port for the run and stopped at its end.

moto stands in for SQS so the rows can be measured on any machine; it is far slower than SQS
(a send costs milliseconds, and more as a queue grows), so SQS rows measure moto as much as
the frameworks, run a fraction of the other brokers' sizes (:data:`SQS_SCALE`) and carry no
targets. Every framework talks to it with the credentials ``test``/``test`` in ``us-east-1``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["CREDENTIALS", "SQS_SCALE", "MotoServer", "scaled"]

SQS_SCALE = 20
"""SQS rows run 1/20 of the configured sizes (at least 10 tasks)."""
START_TIMEOUT = 30.0
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoServer:
    """``start()`` returns the endpoint (``host:port``); ``stop()`` ends the server."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self) -> str:
        executable = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        if not Path(executable).exists():
            raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
        port = _free_port()
        self.process = subprocess.Popen(
            [executable, "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            if time.monotonic() >= deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"moto_server did not start on port {port}")
            time.sleep(0.1)
        self.endpoint = f"127.0.0.1:{port}"
        return self.endpoint

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


def scaled(size: int) -> int:
    return max(10, size // SQS_SCALE)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
