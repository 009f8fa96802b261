"""The retry policy on its own: pure functions, with the jitter's randomness controlled."""

from typing import Any

import pytest

from channels_delivery.providers.base import ResultKind
from channels_delivery.retry import (
    FAILOVER_AFTER_RETRYABLE,
    JITTER,
    RETRY_AFTER_MAX_SECONDS,
    Action,
    Decision,
    decide,
    max_attempts,
    retry_delay,
    schedule_seconds,
)
from herald.safety import UnsafeSettings, retry_schedule


def low() -> float:
    return 0.0


def middle() -> float:
    return 0.5


def high() -> float:
    return 0.999999


def test_the_schedule_is_the_documented_one() -> None:
    minute, hour = 60, 3600
    assert (
        0,
        5,
        5 * minute,
        30 * minute,
        2 * hour,
        5 * hour,
        10 * hour,
        10 * hour,
    ) == schedule_seconds()
    assert max_attempts() == 9


@pytest.mark.parametrize("number", range(1, len(schedule_seconds()) + 1))
def test_each_retry_waits_its_step_with_bounded_jitter(number: int) -> None:
    base = schedule_seconds()[number - 1]
    assert retry_delay(retry_number=number, random=middle) == pytest.approx(base)
    assert retry_delay(retry_number=number, random=low) == pytest.approx(base * (1 - JITTER))
    assert retry_delay(retry_number=number, random=high) == pytest.approx(base * (1 + JITTER))


def test_jitter_spreads_the_same_step() -> None:
    delays = {retry_delay(retry_number=3) for _ in range(20)}
    assert len(delays) > 1
    assert all(300 * (1 - JITTER) <= delay <= 300 * (1 + JITTER) for delay in delays if delay)


def test_the_schedule_runs_out() -> None:
    assert retry_delay(retry_number=len(schedule_seconds()) + 1) is None


def test_retry_number_starts_at_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        retry_delay(retry_number=0)


def test_retry_after_is_never_undercut_even_by_jitter() -> None:
    # Step 2 is 5 s; the provider asked for 120 s.
    assert retry_delay(retry_number=2, retry_after_seconds=120, random=high) == 120
    # A Retry-After shorter than the step does not shorten it.
    assert retry_delay(retry_number=3, retry_after_seconds=1, random=low) == pytest.approx(
        300 * (1 - JITTER)
    )


def test_retry_after_is_capped() -> None:
    asked = 30 * 24 * 3600.0
    assert retry_delay(retry_number=1, retry_after_seconds=asked) == RETRY_AFTER_MAX_SECONDS


def test_accepted_is_sent() -> None:
    assert decide(
        kind=ResultKind.ACCEPTED, attempt_count=1, retryable_in_a_row=0, has_next_integration=True
    ) == Decision(action=Action.SENT)


@pytest.mark.parametrize("kind", [ResultKind.PERMANENT, ResultKind.CONFIG_ERROR])
def test_permanent_and_config_errors_fail_over_or_fail(kind: ResultKind) -> None:
    over = decide(
        kind=kind,
        attempt_count=1,
        retryable_in_a_row=0,
        has_next_integration=True,
        error="HTTP 400",
    )
    assert over == Decision(action=Action.FAILOVER, reason="HTTP 400")
    last = decide(
        kind=kind,
        attempt_count=1,
        retryable_in_a_row=0,
        has_next_integration=False,
        error="HTTP 400",
    )
    assert last == Decision(action=Action.FAIL, reason="HTTP 400")


def test_retryable_waits_along_the_schedule() -> None:
    first = decide(
        kind=ResultKind.RETRYABLE,
        attempt_count=1,
        retryable_in_a_row=1,
        has_next_integration=True,
        error="HTTP 503",
        random=middle,
    )
    assert first == Decision(action=Action.RETRY, delay_seconds=0, reason="HTTP 503")
    second = decide(
        kind=ResultKind.RETRYABLE,
        attempt_count=2,
        retryable_in_a_row=2,
        has_next_integration=True,
        random=middle,
    )
    assert (second.action, second.delay_seconds) == (Action.RETRY, pytest.approx(5))


def test_retryable_honours_retry_after() -> None:
    decision = decide(
        kind=ResultKind.RETRYABLE,
        attempt_count=1,
        retryable_in_a_row=1,
        has_next_integration=False,
        retry_after_seconds=90,
    )
    assert (decision.action, decision.delay_seconds) == (Action.RETRY, 90)


def test_retryable_fails_over_after_n_in_a_row_on_one_integration() -> None:
    below = decide(
        kind=ResultKind.RETRYABLE,
        attempt_count=FAILOVER_AFTER_RETRYABLE - 1,
        retryable_in_a_row=FAILOVER_AFTER_RETRYABLE - 1,
        has_next_integration=True,
    )
    assert below.action is Action.RETRY
    at = decide(
        kind=ResultKind.RETRYABLE,
        attempt_count=FAILOVER_AFTER_RETRYABLE,
        retryable_in_a_row=FAILOVER_AFTER_RETRYABLE,
        has_next_integration=True,
        error="timed out",
    )
    assert at == Decision(action=Action.FAILOVER, reason="timed out")
    # With no other integration the same one keeps its schedule.
    alone = decide(
        kind=ResultKind.RETRYABLE,
        attempt_count=FAILOVER_AFTER_RETRYABLE,
        retryable_in_a_row=FAILOVER_AFTER_RETRYABLE,
        has_next_integration=False,
    )
    assert alone.action is Action.RETRY


def test_retryable_fails_when_the_schedule_is_spent() -> None:
    decision = decide(
        kind=ResultKind.RETRYABLE,
        attempt_count=max_attempts(),
        retryable_in_a_row=1,
        has_next_integration=True,
        error="HTTP 503",
    )
    assert decision == Decision(action=Action.FAIL, reason="gave up after 9 attempts: HTTP 503")


def test_attempt_count_includes_this_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        decide(
            kind=ResultKind.ACCEPTED,
            attempt_count=0,
            retryable_in_a_row=0,
            has_next_integration=False,
        )


def test_failover_is_bounded_by_the_attempts_too() -> None:
    decision = decide(
        kind=ResultKind.PERMANENT,
        attempt_count=max_attempts(),
        retryable_in_a_row=0,
        has_next_integration=True,
        error="HTTP 400",
    )
    assert decision == Decision(action=Action.FAIL, reason="HTTP 400")


def test_the_schedule_is_a_setting(settings: Any) -> None:
    settings.HERALD_DELIVERY_RETRY_SCHEDULE = (1.0, 60.0)
    assert max_attempts() == 3
    assert retry_delay(retry_number=2, random=middle) == 60.0
    assert retry_delay(retry_number=3) is None
    gave_up = decide(
        kind=ResultKind.RETRYABLE, attempt_count=3, retryable_in_a_row=3,
        has_next_integration=False, error="503",
    )  # fmt: skip
    assert gave_up.action is Action.FAIL


@pytest.mark.parametrize("value", [[], ["5", "soon"], ["-1"], [str(8 * 86400)], ["1"] * 26])
def test_a_bad_schedule_is_refused_naming_the_setting(value: list[str]) -> None:
    with pytest.raises(UnsafeSettings, match="HERALD_DELIVERY_RETRY_SCHEDULE must be 1 to 25"):
        retry_schedule(value)
