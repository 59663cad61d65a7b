"""The one retry loop: attempts, doubling delays, what each failure is told, what is raised."""

from __future__ import annotations

import pytest

from backup_pipeline import retry


def test_retries_with_doubling_delays_then_returns(monkeypatch):
    slept, told = [], []
    monkeypatch.setattr(retry.time, "sleep", slept.append)
    results = iter([OSError("first"), OSError("second"), "done"])

    def action():
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    value = retry.with_retries(action, attempts=4, base_seconds=1.5, retry_on=(OSError,),
                               on_failure=lambda n, e, d: told.append((n, str(e), d)))
    assert value == "done"
    assert slept == [1.5, 3.0]
    assert told == [(1, "first", 1.5), (2, "second", 3.0)]


def test_the_last_failure_is_told_without_a_delay_and_raised(monkeypatch):
    slept, told = [], []
    monkeypatch.setattr(retry.time, "sleep", slept.append)

    def action():
        raise TimeoutError(f"try {len(told) + 1}")

    with pytest.raises(TimeoutError, match="try 3"):
        retry.with_retries(action, attempts=3, base_seconds=2, retry_on=(OSError,),
                           on_failure=lambda n, e, d: told.append((n, d)))
    assert told == [(1, 2), (2, 4), (3, None)] and slept == [2, 4]


def test_an_error_it_does_not_retry_goes_through_at_once(monkeypatch):
    monkeypatch.setattr(retry.time, "sleep", pytest.fail)

    def action():
        raise ValueError("not a network error")

    with pytest.raises(ValueError):
        retry.with_retries(action, attempts=5, base_seconds=1, retry_on=(OSError,),
                           on_failure=lambda *told: pytest.fail("told of an error not retried"))
