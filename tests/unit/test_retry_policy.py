"""Backoff is a pure function of the policy, the attempt and a random source."""

from __future__ import annotations

import random

import pytest

from celery_durable import NonRetryable, RetryPolicy


def test_exponential_without_jitter_is_exact_and_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay=2, backoff=2, max_delay=8, jitter=False)
    assert [policy.next_delay(a) for a in range(1, 6)] == [2, 4, 8, 8, 8]


def test_jitter_stays_in_the_upper_half_of_the_delay() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay=1, backoff=3, max_delay=20, jitter=True)
    rng = random.Random(7)
    for attempt in range(1, 8):
        low, high = policy.bounds(attempt)
        draws = [policy.next_delay(attempt, rng) for _ in range(200)]
        assert all(low <= d <= high for d in draws)
        assert min(draws) < low + (high - low) * 0.2 and max(draws) > high - (high - low) * 0.2
    assert policy.bounds(5) == (10.0, 20.0)


def test_same_seed_same_delays() -> None:
    policy = RetryPolicy(initial_delay=1, jitter=True)
    assert [policy.next_delay(2, random.Random(1)) for _ in range(3)] == [
        policy.next_delay(2, random.Random(1))
    ] * 3


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(max_attempts=10_000, initial_delay=1, backoff=10, max_delay=60)
    assert policy.bounds(5_000)[1] == 60


def test_which_errors_retry() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=(OSError,), dont_retry_on=(PermissionError,))
    assert policy.should_retry(ConnectionError(), attempt=1)
    assert not policy.should_retry(ConnectionError(), attempt=3)
    assert not policy.should_retry(PermissionError(), attempt=1)
    assert not policy.should_retry(ValueError(), attempt=1)
    assert not RetryPolicy().should_retry(NonRetryable(), attempt=1)
    with pytest.raises(ValueError):
        policy.next_delay(0)
