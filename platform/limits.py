"""Per-tenant limits: the API request rate and the monthly event quota; and
per client address, the failed API key lookups.

Both live in Redis, so every web process shares them, and both fail open: when
Redis is unreachable requests and events are let through and a warning is
logged (at most once a minute), because refusing every tenant's traffic over a
cache outage would be worse than briefly not limiting it.

The rate limit is a token bucket per tenant, refilled at the plan's
``api_requests_per_second`` and holding ``HERALD_RATE_LIMIT_BURST_SECONDS`` of
that rate. One Lua script refills and spends the bucket by Redis' own clock:
one round trip per request, atomic across processes, and independent of how
well the web servers' clocks agree.

The event quota is a counter per tenant and UTC month. When the counter is
missing (a new month, or Redis lost its data) it is seeded from the tenant's
Event rows, so losing Redis never hands a tenant a fresh month.

Failed API key lookups are counted per client address in a fixed window: a
client that keeps sending keys that match nothing is refused before its keys
are looked up, which bounds both guessing and the database lookups it costs.
"""

import functools
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from herald.problems import problem_response
from rules_engine.models import Event
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# After a Redis failure the limits are skipped (open) this long before Redis
# is tried again, so a Redis that hangs costs one timeout, not one per request.
REDIS_RETRY_SECONDS = 1.0
REDIS_WARNING_INTERVAL_SECONDS = 60.0
# The month's counter outlives the month by this much, then Redis drops it.
QUOTA_KEY_GRACE = timedelta(days=3)

MICROSECONDS = 1_000_000

# KEYS[1]: the tenant's bucket. ARGV[1]: refill rate in tokens per second;
# ARGV[2]: capacity in tokens. Tokens are counted in millionths, so that one
# microsecond of refill at an integral rate is a whole number and the sums stay
# exact. Returns {allowed (1/0), whole tokens left, microseconds until one
# token is available (0 when allowed), microseconds until the bucket is full}.
# spend(key, rate, capacity): spends one token of the bucket in ``key``.
_RATE_LIMIT_SPEND = """
local function spend(key, rate, capacity_tokens)
  local capacity = capacity_tokens * 1000000
  local cost = 1000000
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1])
  local at = tonumber(state[2])
  if tokens == nil or at == nil then
    tokens = capacity
  else
    local elapsed = now - at
    if elapsed < 0 then elapsed = 0 end
    tokens = math.min(capacity, tokens + elapsed * rate)
  end
  local allowed = 0
  local retry_after = 0
  if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
  else
    retry_after = math.ceil((cost - tokens) / rate)
  end
  local until_full = math.ceil((capacity - tokens) / rate)
  redis.call('HSET', key, 'tokens', tokens, 'at', now)
  redis.call('PEXPIRE', key, math.ceil(until_full / 1000) + 1000)
  return allowed, math.floor(tokens / cost), retry_after, until_full
end
"""

RATE_LIMIT_LUA = (
    _RATE_LIMIT_SPEND
    + """
local allowed, left, retry_after, until_full = spend(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
return {allowed, left, retry_after, until_full}
"""
)

# KEYS[1]: the tenant's counter for the month. ARGV[1]: events to add;
# ARGV[2]: the monthly limit (-1: none); ARGV[3]: the month's count from the
# database, or '' when the caller has not counted; ARGV[4]: expiry (unix s).
# Returns {1, new total} when counted, {0, current total} when refused (nothing
# added), {-1, 0} when the counter is missing and must be seeded first.
EVENT_QUOTA_LUA = """
local used = redis.call('GET', KEYS[1])
if not used then
  if ARGV[3] == '' then return {-1, 0} end
  used = ARGV[3]
  redis.call('SET', KEYS[1], used, 'EXAT', ARGV[4])
end
used = tonumber(used)
local count = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if limit >= 0 and used + count > limit then return {0, used} end
return {1, redis.call('INCRBY', KEYS[1], count)}
"""

# The limits of one POST /events in one round trip: the rate limit (KEYS[1],
# ARGV[1..2] as RATE_LIMIT_LUA; ARGV[1] = 0: not limited) and, when the request
# is allowed, the quota (KEYS[2], ARGV[3..4] as EVENT_QUOTA_LUA's ARGV[1..2];
# a missing counter is not seeded here). Returns the rate limit's four values,
# then the quota's two ({-2, 0}: not tried).
RATE_LIMIT_AND_QUOTA_LUA = (
    _RATE_LIMIT_SPEND
    + """
local allowed, left, retry_after, until_full = 1, 0, 0, 0
if tonumber(ARGV[1]) > 0 then
  allowed, left, retry_after, until_full = spend(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
end
if allowed == 0 then return {allowed, left, retry_after, until_full, -2, 0} end
local used = redis.call('GET', KEYS[2])
if not used then return {allowed, left, retry_after, until_full, -1, 0} end
used = tonumber(used)
local count = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
if limit >= 0 and used + count > limit then
  return {allowed, left, retry_after, until_full, 0, used}
end
return {allowed, left, retry_after, until_full, 1, redis.call('INCRBY', KEYS[2], count)}
"""
)


# --- Redis ---------------------------------------------------------------------

_client: redis.Redis | None = None
_scripts: dict[str, Script] = {}
_client_lock = threading.Lock()


def limits_redis() -> redis.Redis:
    """The limits' own client: short timeouts and no retries, so a sick Redis
    delays a request by at most HERALD_LIMITS_REDIS_TIMEOUT_SECONDS."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                timeout = settings.HERALD_LIMITS_REDIS_TIMEOUT_SECONDS
                _client = redis.Redis.from_url(
                    settings.REDIS_URL,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0),
                )
    return _client


def _script(source: str) -> Script:
    """Registered once per process; each call is an EVALSHA (EVAL only if Redis
    lost the script)."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = limits_redis().register_script(source)
    return script


class _RedisGuard:
    """Fail open quietly: skip Redis briefly after a failure, warn once a minute."""

    def __init__(self) -> None:
        self._skip_until = 0.0
        self._warned_at = -math.inf

    def available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def failed(self, *, purpose: str, error: Exception) -> None:
        now = time.monotonic()
        self._skip_until = now + REDIS_RETRY_SECONDS
        if now - self._warned_at >= REDIS_WARNING_INTERVAL_SECONDS:
            self._warned_at = now
            logger.warning(
                "Redis is unavailable (%s: %s); %s is not enforced until it is back",
                type(error).__name__,
                error,
                purpose,
            )


redis_guard = _RedisGuard()


# --- Request rate ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RateLimitDecision:
    allowed: bool
    rate_per_second: int
    limit: int
    """The bucket's capacity: the most requests that can be made at once."""
    remaining: int
    reset_seconds: int
    """Until the bucket is full again."""
    retry_after_seconds: int
    """Until the next request is allowed; 0 when this one was."""

    def headers(self) -> dict[str, str]:
        """RateLimit header fields (IETF draft-ietf-httpapi-ratelimit-headers).

        On a refusal the reset points at the same instant as Retry-After, as
        the draft asks when a response carries both.
        """
        reset = self.reset_seconds if self.allowed else self.retry_after_seconds
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(reset),
        }


def rate_limit_key(schema_name: str) -> str:
    return f"herald:ratelimit:{schema_name}"


def tenant_request_rate(tenant: Tenant) -> int:
    plan = tenant.plan
    rate = plan.api_requests_per_second if plan is not None else None
    if rate is None:
        rate = settings.HERALD_RATE_LIMIT_DEFAULT_PER_SECOND
    # A bucket that never refills would lock the tenant out for good.
    return max(1, rate)


def rate_limit_check(*, tenant: Tenant) -> RateLimitDecision | None:
    """Spend one request of ``tenant``'s bucket.

    None when nothing was decided: the limiter is disabled or Redis is
    unavailable (fail open); the request goes ahead without RateLimit headers.
    """
    if not settings.HERALD_RATE_LIMIT_ENABLED or not redis_guard.available():
        return None
    rate, capacity = _bucket(tenant)
    try:
        allowed, remaining, retry_after_us, until_full_us = _script(RATE_LIMIT_LUA)(
            keys=[rate_limit_key(tenant.schema_name)],
            args=[rate, capacity],
            client=limits_redis(),
        )
    except redis.RedisError as error:
        redis_guard.failed(purpose="the API rate limit", error=error)
        return None
    return _decision(
        rate=rate,
        capacity=capacity,
        allowed=allowed,
        remaining=remaining,
        retry_after_us=retry_after_us,
        until_full_us=until_full_us,
    )


def _bucket(tenant: Tenant) -> tuple[int, int]:
    rate = tenant_request_rate(tenant)
    return rate, max(1, int(rate * settings.HERALD_RATE_LIMIT_BURST_SECONDS))


def _decision(
    *,
    rate: int,
    capacity: int,
    allowed: int,
    remaining: int,
    retry_after_us: int,
    until_full_us: int,
) -> RateLimitDecision:
    return RateLimitDecision(
        allowed=bool(allowed),
        rate_per_second=rate,
        limit=capacity,
        remaining=int(remaining),
        reset_seconds=math.ceil(int(until_full_us) / MICROSECONDS),
        retry_after_seconds=0 if allowed else max(1, math.ceil(retry_after_us / MICROSECONDS)),
    )


def rate_limited_response(decision: RateLimitDecision) -> HttpResponse:
    retry_after = decision.retry_after_seconds
    return problem_response(
        status=429,
        slug="rate-limited",
        title="Too many requests",
        detail=(
            f"This tenant may make {decision.rate_per_second} API requests per second, "
            f"in bursts of up to {decision.limit}; retry after {retry_after} s."
        ),
        headers={"Retry-After": str(retry_after), **decision.headers()},
        rate_per_second=decision.rate_per_second,
        burst=decision.limit,
    )


# --- Any token bucket ------------------------------------------------------------


def token_wait(*, key: str, rate: int, capacity: int) -> float:
    """Take one token from the bucket at ``key`` (``rate`` tokens a second, at
    most ``capacity`` saved up): 0.0 when one was taken, else the seconds until
    one will be there. Fails open (0.0) while Redis is unavailable, as the API
    rate limit does: a provider's limit is not worth stopping delivery for."""
    if rate < 1 or capacity < 1:
        raise ValueError(f"a token bucket needs rate and capacity >= 1, not {rate}, {capacity}")
    if not redis_guard.available():
        return 0.0
    try:
        allowed, _remaining, retry_after_us, _until_full = _script(RATE_LIMIT_LUA)(
            keys=[key], args=[rate, capacity], client=limits_redis()
        )
    except redis.RedisError as error:
        redis_guard.failed(purpose="an integration's rate limit", error=error)
        return 0.0
    return 0.0 if allowed else max(int(retry_after_us), 1) / MICROSECONDS


# --- Monthly event quota ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class QuotaUsage:
    limit: int | None
    """Events allowed per month; None when the tenant has no plan."""
    used: int | None
    """Events counted this month, including these; None when Redis is unavailable."""
    resets_at: datetime


class QuotaExceeded(Exception):
    """Accepting the events would take the tenant past its monthly quota."""

    def __init__(self, *, limit: int, used: int, requested: int, resets_at: datetime) -> None:
        super().__init__(f"{used} + {requested} events would exceed the monthly quota of {limit}")
        self.limit = limit
        self.used = used
        self.requested = requested
        self.resets_at = resets_at


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The first instants (UTC) of ``now``'s month and of the next."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (start + timedelta(days=32)).replace(day=1)


def event_quota_key(schema_name: str, month_start: datetime) -> str:
    return f"herald:quota:{schema_name}:{month_start:%Y-%m}"


def event_quota_consume(*, tenant: Tenant, count: int) -> QuotaUsage:
    """Count ``count`` events against ``tenant``'s monthly quota, or refuse them all.

    Call it inside the tenant's schema and before the events are stored: a
    missing counter is seeded from the month's Event rows, which must not
    include these yet. Raises QuotaExceeded without counting anything when the
    quota would be exceeded.
    """
    if count < 0:
        raise ValueError(f"count must not be negative, not {count}")
    month_start, resets_at = month_bounds(timezone.now())
    plan = tenant.plan
    limit = plan.events_per_month if plan is not None else None
    if not redis_guard.available():
        return QuotaUsage(limit=limit, used=None, resets_at=resets_at)
    key = event_quota_key(tenant.schema_name, month_start)
    expire_at = int((resets_at + QUOTA_KEY_GRACE).timestamp())
    script = _script(EVENT_QUOTA_LUA)
    limit_arg = -1 if limit is None else limit
    try:
        outcome, total = script(
            keys=[key], args=[count, limit_arg, "", expire_at], client=limits_redis()
        )
        if outcome == -1:
            seed = Event.objects.filter(created_at__gte=month_start, created_at__lt=resets_at)
            outcome, total = script(
                keys=[key],
                args=[count, limit_arg, seed.count(), expire_at],
                client=limits_redis(),
            )
    except redis.RedisError as error:
        redis_guard.failed(purpose="the monthly event quota", error=error)
        return QuotaUsage(limit=limit, used=None, resets_at=resets_at)
    if outcome == 0 and limit is not None:  # the script refuses only with a limit
        raise QuotaExceeded(limit=limit, used=int(total), requested=count, resets_at=resets_at)
    return QuotaUsage(limit=limit, used=int(total), resets_at=resets_at)


def quota_exceeded_response(exc: QuotaExceeded) -> HttpResponse:
    retry_after = max(1, math.ceil((exc.resets_at - timezone.now()).total_seconds()))
    resets_at = exc.resets_at.isoformat().replace("+00:00", "Z")
    return problem_response(
        status=429,
        slug="quota-exceeded",
        title="Monthly event quota exceeded",
        detail=(
            f"This tenant's plan allows {exc.limit} events a month; {exc.used} have been "
            f"accepted this month, so {exc.requested} more can not be. "
            f"The quota resets at {resets_at}."
        ),
        headers={"Retry-After": str(retry_after)},
        limit=exc.limit,
        used=exc.used,
        requested=exc.requested,
        resets_at=resets_at,
    )


class QuotaReservation:
    """Events counted against the quota before the request's body was read.

    The API's limits check (rate_limit_and_reserve) counts a POST /events' one
    event in the same Redis round trip as the rate limit. The endpoint then
    ``take()``s it — or, when the event is refused before that, the middleware
    ``release()``s it, so every reserved event is either stored or given back.
    """

    def __init__(
        self, *, tenant: Tenant, count: int, usage: QuotaUsage | None, refused: QuotaExceeded | None
    ) -> None:
        self.tenant = tenant
        self.count = count
        self.usage = usage
        """What was counted; None when nothing was (refused, or not decided here)."""
        self.refused = refused
        self.settled = False

    def take(self) -> QuotaUsage:
        """Use the reservation: the counted usage, or QuotaExceeded when refused;
        when the check could not decide (a counter to seed), count now."""
        self.settled = True
        if self.refused is not None:
            raise self.refused
        if self.usage is not None:
            return self.usage
        return event_quota_consume(tenant=self.tenant, count=self.count)

    def release(self) -> None:
        """Give back what was counted and not taken (idempotent)."""
        if not self.settled and self.usage is not None and self.usage.used is not None:
            event_quota_refund(tenant=self.tenant, count=self.count)
        self.settled = True


def rate_limit_and_reserve(
    *, tenant: Tenant, events: int
) -> tuple[RateLimitDecision | None, QuotaReservation]:
    """The rate limit and a quota reservation for ``events`` events, in one round trip.

    Fails open like both halves: with Redis unavailable the decision is None and
    the reservation counts nothing (taking it then is a no-op, as
    event_quota_consume is with Redis down).
    """
    month_start, resets_at = month_bounds(timezone.now())
    plan = tenant.plan
    limit = plan.events_per_month if plan is not None else None
    undecided = QuotaReservation(tenant=tenant, count=events, usage=None, refused=None)
    if not redis_guard.available():
        return None, undecided
    limited = bool(settings.HERALD_RATE_LIMIT_ENABLED)
    rate, capacity = _bucket(tenant) if limited else (0, 0)
    try:
        allowed, remaining, retry_after_us, until_full_us, outcome, total = _script(
            RATE_LIMIT_AND_QUOTA_LUA
        )(
            keys=[
                rate_limit_key(tenant.schema_name),
                event_quota_key(tenant.schema_name, month_start),
            ],
            args=[rate, capacity, events, -1 if limit is None else limit],
            client=limits_redis(),
        )
    except redis.RedisError as error:
        redis_guard.failed(purpose="the API rate limit and event quota", error=error)
        return None, undecided
    decision = (
        _decision(
            rate=rate,
            capacity=capacity,
            allowed=allowed,
            remaining=remaining,
            retry_after_us=retry_after_us,
            until_full_us=until_full_us,
        )
        if limited
        else None
    )
    if outcome == 1:
        usage = QuotaUsage(limit=limit, used=int(total), resets_at=resets_at)
        return decision, QuotaReservation(tenant=tenant, count=events, usage=usage, refused=None)
    if outcome == 0 and limit is not None:
        refused = QuotaExceeded(limit=limit, used=int(total), requested=events, resets_at=resets_at)
        return decision, QuotaReservation(tenant=tenant, count=events, usage=None, refused=refused)
    return decision, undecided  # not tried (rate limited) or a counter to seed


# KEYS[1]: the tenant's counter for the month. ARGV[1]: events to give back.
# Only an existing counter is decremented: a missing one is seeded from the
# database on next use, which already leaves refunded events out.
EVENT_QUOTA_REFUND_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('DECRBY', KEYS[1], ARGV[1])
end
return false
"""


def event_quota_refund(*, tenant: Tenant, count: int) -> None:
    """Give back events counted by event_quota_consume that were not stored
    (idempotent replays, refused items)."""
    if count <= 0 or not redis_guard.available():
        return
    month_start, _ = month_bounds(timezone.now())
    try:
        _script(EVENT_QUOTA_REFUND_LUA)(
            keys=[event_quota_key(tenant.schema_name, month_start)],
            args=[count],
            client=limits_redis(),
        )
    except redis.RedisError as error:
        redis_guard.failed(purpose="the monthly event quota", error=error)


# --- Failed API key lookups per client ------------------------------------------------

# KEYS[1]: the client's counter. ARGV[1]: the window in seconds. The window
# starts at a client's first failure and is not extended by later ones, so a
# blocked client is let back in at most one window after it began.
# Returns {failures in the window, milliseconds until the window ends}.
API_KEY_FAILURE_LUA = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""

API_KEY_FAILURE_WINDOW_SECONDS = 60


@dataclass(frozen=True, kw_only=True)
class KeyFailuresBlocked:
    limit: int
    retry_after_seconds: int


def api_key_failures_key(client: str) -> str:
    return f"herald:keyfail:{client}"


def _failure_limit() -> int:
    """Failed lookups a client may make per window; 0 when the check is off.
    HERALD_RATE_LIMIT_ENABLED switches it off with the rest of the API's limits."""
    if not settings.HERALD_RATE_LIMIT_ENABLED:
        return 0
    return max(0, int(settings.HERALD_API_KEY_FAILURES_PER_MINUTE))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def client_address(meta: Mapping[str, object]) -> str:
    """The address a request came from, as the failed-key limit counts it.

    The TCP peer (REMOTE_ADDR), unless it is one of HERALD_TRUSTED_PROXIES: then
    the right-most X-Forwarded-For hop that no trusted proxy added. Hops left of
    that one were written by the client and may be forged, so they are not read;
    an X-Forwarded-For from an untrusted peer is not read at all. A few lines of
    ``ipaddress`` rather than django-ipware, whose best-effort ranking (public
    before private addresses, left-most first) is the wrong default for a limit.
    """
    peer = str(meta.get("REMOTE_ADDR") or "unknown")
    networks = _networks(tuple(settings.HERALD_TRUSTED_PROXIES))
    if not networks or not _is_trusted(peer, networks):
        return peer
    forwarded = str(meta.get("HTTP_X_FORWARDED_FOR") or "")
    client = peer
    for hop in reversed([hop.strip() for hop in forwarded.split(",") if hop.strip()]):
        client = hop
        if not _is_trusted(hop, networks):
            break
    return client


def api_key_failures_blocked(*, client: str) -> KeyFailuresBlocked | None:
    """Whether ``client`` (an IP address) used up its failed API key lookups for
    the window: the refusal to send, or None. Fails open while Redis is unavailable."""
    limit = _failure_limit()
    if not limit or not redis_guard.available():
        return None
    key = api_key_failures_key(client)
    try:
        pipe = limits_redis().pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        count, ttl_ms = pipe.execute()
    except redis.RedisError as error:
        redis_guard.failed(purpose="the failed API key rate limit", error=error)
        return None
    if count is None or int(count) < limit:
        return None
    return KeyFailuresBlocked(limit=limit, retry_after_seconds=max(1, math.ceil(ttl_ms / 1000)))


def api_key_failure_record(*, client: str) -> None:
    """Count one failed API key lookup (a missing, malformed or unknown key) of ``client``."""
    if not _failure_limit() or not redis_guard.available():
        return
    try:
        _script(API_KEY_FAILURE_LUA)(
            keys=[api_key_failures_key(client)],
            args=[API_KEY_FAILURE_WINDOW_SECONDS],
            client=limits_redis(),
        )
    except redis.RedisError as error:
        redis_guard.failed(purpose="the failed API key rate limit", error=error)


def key_failures_response(blocked: KeyFailuresBlocked) -> HttpResponse:
    retry_after = blocked.retry_after_seconds
    return problem_response(
        status=429,
        slug="too-many-failed-keys",
        title="Too many failed API keys",
        detail=(
            f"This address sent {blocked.limit} failed API key attempts within "
            f"{API_KEY_FAILURE_WINDOW_SECONDS} s; no key is checked from it for {retry_after} s."
        ),
        headers={"Retry-After": str(retry_after)},
        limit=blocked.limit,
        window_seconds=API_KEY_FAILURE_WINDOW_SECONDS,
    )
