"""The monthly event quota on POST /events and POST /events/batch."""

from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import tenant_context

from herald.limits import event_quota_key, limits_redis, month_bounds
from rules_engine.models import Event
from tenants.authentication import api_key_cache
from tenants.models import Plan, Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def small_plan(tenant_a: Tenant) -> Plan:
    plan = Plan.objects.create(name="Tiny", events_per_month=3)
    Tenant.objects.filter(pk=tenant_a.pk).update(plan=plan)
    api_key_cache.clear()
    return plan


def counted(tenant: Tenant) -> int:
    month_start, _ = month_bounds(timezone.now())
    value = limits_redis().get(event_quota_key(tenant.schema_name, month_start))
    return int(value or 0)


def send(client: ApiClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/api/v1/events", body, content_type="application/json", headers=headers)


def test_events_beyond_the_quota_are_refused(
    api_a: ApiClient, tenant_a: Tenant, small_plan: Plan
) -> None:
    for n in range(3):
        assert send(api_a, {"event": "x", "payload": {"n": n}}).status_code == 202
    refused = send(api_a, {"event": "x"})
    assert refused.status_code == 429
    problem = refused.json()
    assert problem["type"] == "urn:herald:problem:quota-exceeded"
    assert (problem["limit"], problem["used"]) == (3, 3)
    assert int(refused["Retry-After"]) > 0
    with tenant_context(tenant_a):
        assert Event.objects.count() == 3


def test_replays_and_rejections_are_not_counted(
    api_a: ApiClient, tenant_a: Tenant, small_plan: Plan
) -> None:
    send(api_a, {"event": "x"}, **{"Idempotency-Key": "k1"})
    send(api_a, {"event": "x"}, **{"Idempotency-Key": "k1"})  # replay
    send(api_a, {"event": "x", "payload": {"other": 1}}, **{"Idempotency-Key": "k1"})  # 422
    send(api_a, {"event": "has space"})  # 422 before the quota
    assert counted(tenant_a) == 1
    assert send(api_a, {"event": "y"}).status_code == 202
    assert send(api_a, {"event": "z"}).status_code == 202
    assert counted(tenant_a) == 3


def test_a_batch_that_does_not_fit_is_refused_whole(
    api_a: ApiClient, tenant_a: Tenant, small_plan: Plan
) -> None:
    events = [{"event": "x", "payload": {"i": i}} for i in range(4)]
    response = api_a.post(
        "/api/v1/events/batch", {"events": events}, content_type="application/json"
    )
    assert response.status_code == 429
    assert response.json()["requested"] == 4
    with tenant_context(tenant_a):
        assert Event.objects.count() == 0
    assert counted(tenant_a) == 0


def test_a_batch_counts_only_what_it_stored(
    api_a: ApiClient, tenant_a: Tenant, small_plan: Plan
) -> None:
    events = [
        {"event": "x", "idempotency_key": "b"},
        {"event": "x", "idempotency_key": "b"},  # replay of the first
        {"bogus": True},  # invalid: never counted
    ]
    body = api_a.post(
        "/api/v1/events/batch", {"events": events}, content_type="application/json"
    ).json()
    assert body["accepted"] == 2
    assert counted(tenant_a) == 1


def test_the_quota_is_per_tenant(
    api_a: ApiClient, api_b: ApiClient, tenant_b: Tenant, small_plan: Plan
) -> None:
    for n in range(3):
        send(api_a, {"event": "x", "payload": {"n": n}})
    assert send(api_a, {"event": "x"}).status_code == 429
    assert send(api_b, {"event": "x"}).status_code == 202
