"""Time helpers: aware UTC datetimes everywhere inside taskframe."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

__all__ = ["deadline_from", "seconds_until", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def deadline_from(value: float | timedelta | datetime | None, now: datetime) -> datetime | None:
    """An absolute aware time from seconds, a timedelta or a datetime (naive means UTC)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    if isinstance(value, timedelta):
        return now + value
    return now + timedelta(seconds=float(value))


def seconds_until(moment: datetime, now: datetime) -> float:
    return max(0.0, (moment - now).total_seconds())
