"""When to try a request again, and how long to wait first: the one place the
client's retry policy lives (the sync and async clients both ask it).

Retried: 429 (the request was not processed), connection failures, timeouts
and 5xx. A request that may have been processed (a timeout, a 5xx) is retried
only when repeating it is safe: reads, PUT/DELETE, and POSTs that carry an
idempotency key or are idempotent by nature. Herald's ``Retry-After`` is
honoured; one longer than ``max_retry_after`` (a monthly quota that resets in
days) is not waited for: the error is raised at once.
"""

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits a random time between
    half and all of ``min(initial * 2**n, maximum)`` seconds, unless Herald's
    ``Retry-After`` says how long."""

    initial: float = 0.5
    maximum: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.initial * 2.0**attempt, self.maximum)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 -- jitter, not secrets


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def delay_after_response(
    response: httpx.Response, *, attempt: int, max_retries: int, retry_safe: bool, backoff: Backoff
) -> float | None:
    """Seconds to wait before trying again after this error answer; None: do not."""
    status = response.status_code
    if attempt >= max_retries or status not in RETRY_STATUSES:
        return None
    if status != 429 and not retry_safe:
        return None
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    if retry_after is None:
        return backoff.delay(attempt)
    if retry_after > backoff.max_retry_after:
        return None
    return retry_after


def delay_after_error(
    error: httpx.TransportError,
    *,
    attempt: int,
    max_retries: int,
    retry_safe: bool,
    backoff: Backoff,
) -> float | None:
    """Seconds to wait before trying again after a transport failure; None: do not.
    A request that never left (no connection) is always safe to send again."""
    if attempt >= max_retries:
        return None
    never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    if not (never_sent or retry_safe):
        return None
    return backoff.delay(attempt)
