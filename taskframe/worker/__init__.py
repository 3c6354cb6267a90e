"""The worker: consumer loop and pools."""

from taskframe.worker.consumer import Worker

__all__ = ["Worker"]
