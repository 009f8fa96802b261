"""GET /api/v1/stats: the tenant's own figures, from the rollup."""

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message, MessageStatus
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db


def hour_now() -> Any:
    return timezone.now().replace(minute=0, second=0, microsecond=0)


def seed(tenant: Tenant, *, events: int, delivered: int, failed: int) -> None:
    now = hour_now() + timedelta(minutes=1)
    with tenant_context(tenant):
        subscriber = Subscriber.objects.create(external_id="stats-api")
        made = Event.objects.bulk_create(
            [Event(event_type_key="order.shipped", created_at=now) for _ in range(events)]
        )
        for n in range(delivered):
            Message.objects.create(
                event=made[n],
                subscriber=subscriber,
                channel=Channel.IN_APP,
                status=MessageStatus.DELIVERED,
                created_at=now,
                sent_at=now,
                delivered_at=now + timedelta(milliseconds=120),
            )
        for n in range(failed):
            Message.objects.create(
                event=made[n],
                subscriber=subscriber,
                channel=Channel.SMS,
                status=MessageStatus.FAILED,
                created_at=now,
                failed_at=now,
            )


def test_the_figures_of_the_period(api_a: ApiClient, tenant_a: Tenant) -> None:
    before = api_a.get("/api/v1/stats").json()["totals"]["counts"]
    seed(tenant_a, events=5, delivered=3, failed=1)

    response = api_a.get("/api/v1/stats")

    assert response.status_code == 200, response.content
    body = response.json()
    counts = body["totals"]["counts"]
    assert counts["events"] - before["events"] == 5
    assert counts["delivered"] - before["delivered"] == 3
    assert counts["failed"] - before["failed"] == 1
    in_app = body["channels"]["in_app"]
    assert in_app["latency"]["buckets"]["250"] >= 3
    assert in_app["latency"]["p50_ms"] is not None
    assert "events" not in in_app["counts"]
    assert len(body["series"]) == 24 or len(body["series"]) == 25
    last = body["series"][-1]
    assert last["channels"]["in_app"]["delivered"] >= 3


def test_one_channel_and_days(api_a: ApiClient, tenant_a: Tenant) -> None:
    seed(tenant_a, events=2, delivered=2, failed=2)
    end = (timezone.now() + timedelta(hours=1)).isoformat()
    start = (timezone.now() - timedelta(days=6)).isoformat()
    response = api_a.get(
        "/api/v1/stats", {"channel": "sms", "grain": "day", "start": start, "end": end}
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body["channels"]) <= {"sms"}
    assert body["channels"]["sms"]["counts"]["failed"] >= 2
    assert body["channels"]["sms"]["rates"]["failure"] == 1.0
    assert 7 <= len(body["series"]) <= 8


@pytest.mark.parametrize(
    ("params", "pointer", "detail"),
    [
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "/start", "before end"),
        ({"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00Z"}, "/start", "time zone"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "/start", "at most 31"),
        (
            {"start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z", "grain": "day"},
            "/start",
            "at most 400",
        ),
        (
            {"start": "2026-01-01T00:00:00Z", "end": "9999-12-31T23:00:00-20:00"},
            "/end",
            "out of range",
        ),
    ],
)
def test_a_bad_period_is_named(
    api_a: ApiClient, params: dict[str, str], pointer: str, detail: str
) -> None:
    response = api_a.get("/api/v1/stats", params)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:herald:problem:validation-failed"
    assert problem["errors"][0]["pointer"] == pointer
    assert detail in problem["errors"][0]["detail"]


def test_any_iso_offset_is_taken_though_postgresql_has_narrower_ones(api_a: ApiClient) -> None:
    """Found by schemathesis: an offset of -20:06 is valid ISO 8601 and Python, and
    PostgreSQL refuses it; the period is read in UTC."""
    params = {"start": "2026-01-01T00:00:00-20:06", "end": "2026-01-03T00:00:00+00:00"}
    response = api_a.get("/api/v1/stats", params)
    assert response.status_code == 200, response.content
    assert response.json()["start"] == "2026-01-01T20:00:00Z"


def test_an_unknown_grain_is_refused(api_a: ApiClient) -> None:
    response = api_a.get("/api/v1/stats", {"grain": "week"})
    assert response.status_code == 422
    assert "grain" in response.content.decode()


def test_needs_the_messages_read_scope(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    client = api_client_for(tenant_a, scopes=["events:write"])
    response = client.get("/api/v1/stats")
    assert response.status_code == 403
    assert "messages:read" in response.json()["detail"]
    reader = api_client_for(tenant_a, scopes=["messages:read"])
    assert reader.get("/api/v1/stats").status_code == 200


def test_another_tenants_figures_are_not_included(
    api_a: ApiClient, api_b: ApiClient, tenant_a: Tenant
) -> None:
    before = api_b.get("/api/v1/stats").json()["totals"]["counts"]
    seed(tenant_a, events=4, delivered=2, failed=1)
    after = api_b.get("/api/v1/stats").json()["totals"]["counts"]
    assert after == before
