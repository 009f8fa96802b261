"""Per-tenant limits: the API token bucket and the monthly event quota, on real Redis."""

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from django.utils import timezone as django_timezone
from django_tenants.utils import tenant_context

from herald import limits
from herald.limits import (
    QuotaExceeded,
    event_quota_consume,
    event_quota_key,
    month_bounds,
    quota_exceeded_response,
    rate_limit_key,
)
from herald.problems import PROBLEM_CONTENT_TYPE, problem_type
from rules_engine.models import Event
from tenants.db import tenant_connection
from tenants.models import Plan, Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(autouse=True)
def fresh_limits(
    tenant_a: Tenant, tenant_b: Tenant, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Only this test's keys are removed (the tenants' buckets and quota counters),
    and the fail-open state starts clean."""
    monkeypatch.setattr(limits, "redis_guard", limits._RedisGuard())
    month_start, _ = month_bounds(django_timezone.now())
    keys = [
        key
        for schema in (tenant_a.schema_name, tenant_b.schema_name)
        for key in (rate_limit_key(schema), event_quota_key(schema, month_start))
    ]
    client = limits.limits_redis()
    client.delete(*keys)
    yield
    client.delete(*keys)


@pytest.fixture(autouse=True)
def two_second_burst(settings: Any) -> None:
    settings.HERALD_RATE_LIMIT_BURST_SECONDS = 2.0


@pytest.fixture
def set_plan(db: None) -> Callable[..., Plan]:
    def set_plan(tenant: Tenant, **fields: int) -> Plan:
        plan = Plan.objects.create(name=f"test plan {tenant.slug} {time.monotonic_ns()}", **fields)
        tenant.plan = plan
        tenant.save(update_fields=["plan"])
        return plan

    return set_plan


def headers_of(response: Any) -> dict[str, str]:
    return {name: response[name] for name in RATE_LIMIT_HEADERS if response.has_header(name)}


# --- Request rate -----------------------------------------------------------------


@pytest.mark.rate_limited
def test_bucket_allows_its_capacity_then_refuses_with_429(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, set_plan: Callable[..., Plan]
) -> None:
    set_plan(tenant_a, api_requests_per_second=1)  # 1/s with a 2 s burst: capacity 2
    api = api_client_for(tenant_a)

    first = api.get("/api/v1/me")
    assert first.status_code == 200
    assert headers_of(first) == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": "1",
    }
    second = api.get("/api/v1/me")
    assert second.status_code == 200
    assert headers_of(second) == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "2",
    }

    refused = api.get("/api/v1/me")
    assert refused.status_code == 429
    assert refused["Content-Type"] == PROBLEM_CONTENT_TYPE
    body = refused.json()
    assert body["type"] == problem_type("rate-limited")
    assert body["status"] == 429
    assert body["title"]
    assert body["detail"]
    assert refused["Retry-After"] == "1"
    assert headers_of(refused) == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "1",
    }
    # A refused request never reaches the tenant's schema.
    assert tenant_connection.schema_name == "public"


@pytest.mark.rate_limited
def test_bucket_refills_over_time(
    api_client_for: Callable[..., ApiClient],
    tenant_a: Tenant,
    set_plan: Callable[..., Plan],
    settings: Any,
) -> None:
    settings.HERALD_RATE_LIMIT_BURST_SECONDS = 1.0
    set_plan(tenant_a, api_requests_per_second=3)  # capacity 3, a token every 1/3 s
    api = api_client_for(tenant_a)
    statuses = [api.get("/api/v1/me").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]

    time.sleep(0.4)
    refilled = api.get("/api/v1/me")
    assert refilled.status_code == 200
    assert refilled["RateLimit-Remaining"] == "0"

    refused = api.get("/api/v1/me")
    assert refused.status_code == 429
    time.sleep(int(refused["Retry-After"]))
    assert api.get("/api/v1/me").status_code == 200


@pytest.mark.rate_limited
def test_tenants_have_separate_buckets(
    api_client_for: Callable[..., ApiClient],
    tenant_a: Tenant,
    tenant_b: Tenant,
    set_plan: Callable[..., Plan],
) -> None:
    set_plan(tenant_a, api_requests_per_second=1)
    set_plan(tenant_b, api_requests_per_second=1)
    api_a, api_b = api_client_for(tenant_a), api_client_for(tenant_b)
    assert [api_a.get("/api/v1/me").status_code for _ in range(3)] == [200, 200, 429]
    # Another key of the same tenant shares its bucket...
    assert api_client_for(tenant_a).get("/api/v1/me").status_code == 429
    # ...while the other tenant's is untouched.
    response = api_b.get("/api/v1/me")
    assert response.status_code == 200
    assert response["RateLimit-Remaining"] == "1"


@pytest.mark.rate_limited
def test_tenant_without_a_plan_gets_the_default_rate(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, settings: Any
) -> None:
    tenant_a.plan = None
    tenant_a.save(update_fields=["plan"])
    settings.HERALD_RATE_LIMIT_DEFAULT_PER_SECOND = 3
    response = api_client_for(tenant_a).get("/api/v1/me")
    assert response.status_code == 200
    assert response["RateLimit-Limit"] == "6"


@pytest.mark.rate_limited
def test_bucket_key_expires_once_it_would_be_full(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, set_plan: Callable[..., Plan]
) -> None:
    set_plan(tenant_a, api_requests_per_second=1)
    assert api_client_for(tenant_a).get("/api/v1/me").status_code == 200
    ttl_ms = limits.limits_redis().pttl(rate_limit_key(tenant_a.schema_name))
    assert 0 < ttl_ms <= 2000  # refilled in 1 s, plus a second's grace


@pytest.mark.rate_limited
def test_public_api_paths_are_not_limited(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, set_plan: Callable[..., Plan]
) -> None:
    set_plan(tenant_a, api_requests_per_second=1)
    api = api_client_for(tenant_a)
    assert [api.get("/api/v1/me").status_code for _ in range(3)] == [200, 200, 429]
    for _ in range(3):
        response = api.get("/api/v1/openapi.json")
        assert response.status_code == 200
        assert headers_of(response) == {}


@pytest.mark.rate_limited
def test_disabled_limiter_is_read_at_call_time(
    api_client_for: Callable[..., ApiClient],
    tenant_a: Tenant,
    set_plan: Callable[..., Plan],
    settings: Any,
) -> None:
    set_plan(tenant_a, api_requests_per_second=1)
    api = api_client_for(tenant_a)
    settings.HERALD_RATE_LIMIT_ENABLED = False
    for _ in range(4):
        response = api.get("/api/v1/me")
        assert response.status_code == 200
        assert headers_of(response) == {}
    settings.HERALD_RATE_LIMIT_ENABLED = True
    assert [api.get("/api/v1/me").status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.rate_limited
def test_redis_down_fails_open_and_warns_once(
    api_client_for: Callable[..., ApiClient],
    tenant_a: Tenant,
    set_plan: Callable[..., Plan],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_plan(tenant_a, api_requests_per_second=1)
    api = api_client_for(tenant_a)
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    monkeypatch.setattr(limits, "_client", None)  # the next call connects to the closed port
    monkeypatch.setattr(limits, "REDIS_RETRY_SECONDS", 0.0)  # try Redis on every request

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="herald.limits"):
        for _ in range(5):
            response = api.get("/api/v1/me")
            assert response.status_code == 200
            assert headers_of(response) == {}
    # No retries with backoff: a dead Redis costs a request next to nothing.
    assert time.monotonic() - started < 2.0
    warnings = [r for r in caplog.records if r.name == "herald.limits"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "rate limit" in warnings[0].getMessage()


# --- Monthly event quota ------------------------------------------------------------


def make_events(tenant: Tenant, count: int, *, created_at: datetime | None = None) -> None:
    with tenant_context(tenant):
        Event.objects.bulk_create(
            Event(event_type_key="order.shipped", created_at=created_at or django_timezone.now())
            for _ in range(count)
        )


def events_this_month(tenant: Tenant) -> int:
    """Rows other tests may have committed count too, so expectations start from here."""
    month_start, _ = month_bounds(django_timezone.now())
    with tenant_context(tenant):
        return Event.objects.filter(created_at__gte=month_start).count()


def quota_counter(tenant: Tenant) -> int | None:
    month_start, _ = month_bounds(django_timezone.now())
    value = limits.limits_redis().get(event_quota_key(tenant.schema_name, month_start))
    return None if value is None else int(value)


def test_month_bounds_are_utc_months() -> None:
    assert month_bounds(datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2025, 12, 1, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    # 00:30 on 1 March at UTC+2 is still February in UTC.
    local = datetime(2024, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert month_bounds(local) == (
        datetime(2024, 2, 1, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
    )


def test_missing_counter_is_seeded_from_this_months_events(
    tenant_a: Tenant, set_plan: Callable[..., Plan]
) -> None:
    set_plan(tenant_a, events_per_month=1_000_000)
    month_start, resets_at = month_bounds(django_timezone.now())
    make_events(tenant_a, 3)
    before = events_this_month(tenant_a)
    make_events(tenant_a, 4, created_at=month_start - timedelta(seconds=1))  # last month
    assert quota_counter(tenant_a) is None

    with tenant_context(tenant_a):
        usage = event_quota_consume(tenant=tenant_a, count=2)
    assert (usage.limit, usage.used, usage.resets_at) == (1_000_000, before + 2, resets_at)
    assert quota_counter(tenant_a) == before + 2
    ttl = limits.limits_redis().ttl(event_quota_key(tenant_a.schema_name, month_start))
    expected_ttl = (resets_at + timedelta(days=3) - django_timezone.now()).total_seconds()
    assert abs(ttl - expected_ttl) < 5

    # Once seeded the counter is the truth: the database is not counted again.
    make_events(tenant_a, 10)
    with tenant_context(tenant_a):
        assert event_quota_consume(tenant=tenant_a, count=1).used == before + 3


def test_exceeding_the_quota_refuses_without_counting(
    tenant_a: Tenant, set_plan: Callable[..., Plan]
) -> None:
    _, resets_at = month_bounds(django_timezone.now())
    make_events(tenant_a, 3)
    used = events_this_month(tenant_a)
    limit = used + 2
    set_plan(tenant_a, events_per_month=limit)
    with tenant_context(tenant_a):
        with pytest.raises(QuotaExceeded) as refused:
            event_quota_consume(tenant=tenant_a, count=3)  # a batch is refused whole
        assert quota_counter(tenant_a) == used
        assert event_quota_consume(tenant=tenant_a, count=2).used == limit
        with pytest.raises(QuotaExceeded) as refused:
            event_quota_consume(tenant=tenant_a, count=1)
    assert quota_counter(tenant_a) == limit
    exc = refused.value
    assert (exc.limit, exc.used, exc.requested, exc.resets_at) == (limit, limit, 1, resets_at)

    response = quota_exceeded_response(exc)
    assert response.status_code == 429
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    body = json.loads(response.content)
    assert body["type"] == problem_type("quota-exceeded")
    assert body["type"] != problem_type("rate-limited")
    assert body["status"] == 429
    assert body["title"]
    assert body["detail"]
    assert body["limit"] == limit
    assert body["used"] == limit
    assert datetime.fromisoformat(body["resets_at"]) == resets_at
    retry_after = int(response["Retry-After"])
    until_reset = (resets_at - django_timezone.now()).total_seconds()
    assert retry_after >= 1
    assert abs(retry_after - until_reset) < 5


def test_tenant_without_a_plan_has_no_quota(tenant_a: Tenant) -> None:
    tenant_a.plan = None
    tenant_a.save(update_fields=["plan"])
    with tenant_context(tenant_a):
        usage = event_quota_consume(tenant=tenant_a, count=1_000_000)
    assert usage.limit is None
    assert usage.used == events_this_month(tenant_a) + 1_000_000


def test_quota_is_per_tenant(
    tenant_a: Tenant, tenant_b: Tenant, set_plan: Callable[..., Plan]
) -> None:
    used_a, used_b = events_this_month(tenant_a), events_this_month(tenant_b)
    set_plan(tenant_a, events_per_month=used_a + 2)
    set_plan(tenant_b, events_per_month=used_b + 2)
    with tenant_context(tenant_a):
        event_quota_consume(tenant=tenant_a, count=2)
        with pytest.raises(QuotaExceeded):
            event_quota_consume(tenant=tenant_a, count=1)
    with tenant_context(tenant_b):
        assert event_quota_consume(tenant=tenant_b, count=2).used == used_b + 2


def test_quota_fails_open_when_redis_is_down(
    tenant_a: Tenant,
    set_plan: Callable[..., Plan],
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_plan(tenant_a, events_per_month=1)
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    monkeypatch.setattr(limits, "_client", None)
    with caplog.at_level(logging.WARNING, logger="herald.limits"), tenant_context(tenant_a):
        usage = event_quota_consume(tenant=tenant_a, count=50)
    assert (usage.limit, usage.used) == (1, None)
    assert any("quota" in r.getMessage() for r in caplog.records if r.name == "herald.limits")
