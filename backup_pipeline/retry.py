"""Retrying with doubling delays: the one loop behind the database connection and the SMTP
delivery, so both count attempts, wait and report the same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def with_retries(action: Callable[[], T], *, attempts: int, base_seconds: float,
                 retry_on: tuple[type[BaseException], ...],
                 on_failure: Callable[[int, BaseException, float | None], None]) -> T:
    """`action()`, tried up to `attempts` times: after failure number n (1-based) of a
    `retry_on` error, `on_failure(n, error, delay)` is told, then the wait is
    base_seconds * 2**(n-1); after the last, it is told with delay None and the error raised."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except retry_on as error:
            last = attempt == attempts
            delay = None if last else base_seconds * 2 ** (attempt - 1)
            on_failure(attempt, error, delay)
            if last:
                raise
            time.sleep(delay)
    raise ValueError(f"attempts must be at least 1, not {attempts}")
