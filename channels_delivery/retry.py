"""The retry policy: what a provider's result means for a message (STYLE.md 7).

The one place this is decided. A retryable failure waits along the schedule,
``HERALD_DELIVERY_RETRY_SCHEDULE`` (jittered, never earlier than a Retry-After
asked, which is capped); after ``FAILOVER_AFTER_RETRYABLE`` of them in a row on one
integration, or at once for a permanent or a configuration failure, the next
integration of the channel takes over; with none left, or the schedule spent,
the message fails. ``channels_delivery.services.delivery`` applies the decision.
"""

import enum
import random as random_module
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from channels_delivery.providers.base import ResultKind


def schedule_seconds() -> tuple[float, ...]:
    """The wait before each retry (HERALD_DELIVERY_RETRY_SCHEDULE; by default
    roughly immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h). One more
    retryable failure after the last and the message fails."""
    return tuple(settings.HERALD_DELIVERY_RETRY_SCHEDULE)


def max_attempts() -> int:
    """A message's attempts at most: the first, and one per wait of the schedule."""
    return len(settings.HERALD_DELIVERY_RETRY_SCHEDULE) + 1


# Each wait is spread by this fraction either way, so failures that happened
# together (a provider outage) do not all come back in the same second.
JITTER = 0.2
# A provider's Retry-After is honoured up to this; a longer one (a provider
# asking for days) is cut to it rather than parking the message that long.
RETRY_AFTER_MAX_SECONDS = 36000.0
# Retryable failures in a row on one integration before the next one is tried.
FAILOVER_AFTER_RETRYABLE = 3


class Action(enum.StrEnum):
    SENT = "sent"  # the provider took it
    RETRY = "retry"  # the same integration again after ``delay_seconds``
    FAILOVER = "failover"  # the next integration of the channel, now
    FAIL = "fail"  # give up: ``reason`` says why


@dataclass(frozen=True, kw_only=True)
class Decision:
    action: Action
    delay_seconds: float = 0.0
    reason: str = ""


def retry_delay(
    *,
    retry_number: int,
    retry_after_seconds: float | None = None,
    random: Callable[[], float] = random_module.random,
) -> float | None:
    """Seconds to wait before retry ``retry_number`` (1 = the first retry), or None
    when the schedule is spent. ``random`` returns a float in [0, 1)."""
    if retry_number < 1:
        raise ValueError(f"retry_number starts at 1, not {retry_number}")
    schedule = schedule_seconds()
    if retry_number > len(schedule):
        return None
    base = schedule[retry_number - 1]
    delay = base * (1 - JITTER + 2 * JITTER * random())
    if retry_after_seconds is not None and retry_after_seconds > 0:
        delay = max(delay, min(retry_after_seconds, RETRY_AFTER_MAX_SECONDS))
    return delay


def decide(
    *,
    kind: ResultKind,
    attempt_count: int,
    retryable_in_a_row: int,
    has_next_integration: bool,
    retry_after_seconds: float | None = None,
    error: str = "",
    random: Callable[[], float] = random_module.random,
) -> Decision:
    """What to do after an attempt whose result was ``kind``.

    ``attempt_count`` counts the message's attempts, this one included;
    ``retryable_in_a_row`` the retryable failures in a row on the integration
    just used, this one included when it was retryable.
    """
    if attempt_count < 1:
        raise ValueError(
            f"attempt_count counts this attempt, so is at least 1, not {attempt_count}"
        )
    if kind is ResultKind.ACCEPTED:
        return Decision(action=Action.SENT)
    if kind in (ResultKind.PERMANENT, ResultKind.CONFIG_ERROR):
        # Bounded too: integrations reordered while a message moves between them
        # must not pass it around forever.
        if has_next_integration and attempt_count < max_attempts():
            return Decision(action=Action.FAILOVER, reason=error)
        return Decision(action=Action.FAIL, reason=error)
    if kind is not ResultKind.RETRYABLE:
        raise ValueError(f"unknown result kind {kind!r}")
    delay = retry_delay(
        retry_number=attempt_count, retry_after_seconds=retry_after_seconds, random=random
    )
    if delay is None:
        return Decision(
            action=Action.FAIL, reason=f"gave up after {attempt_count} attempts: {error}"
        )
    if retryable_in_a_row >= FAILOVER_AFTER_RETRYABLE and has_next_integration:
        # The next integration has not been asked to wait: it goes now.
        return Decision(action=Action.FAILOVER, reason=error)
    return Decision(action=Action.RETRY, delay_seconds=delay, reason=error)
