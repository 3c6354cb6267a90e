"""The quickstart app: no broker configured, so taskframe uses ./taskframe.sqlite3."""

from taskframe import Taskframe

app = Taskframe("tasks")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=3, default_retry_delay=0.1)
def flaky_divide(self, x: float, y: float) -> float:
    """Fails on its first try, then succeeds: shows a retry."""
    if self.request.retries == 0:
        raise self.retry(exc=RuntimeError("first try fails"))
    return x / y
