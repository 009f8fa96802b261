"""The home pages: a tenant's delivery overview and the staff's platform health,
both from the rollups."""

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message, MessageStatus, WebhookEndpoint
from channels_delivery.services.stats import stats_fold
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.conftest import TENANT_PASSWORD
from tests.dashboard.test_rules_admin import admin_client

pytestmark = pytest.mark.django_db


def kpi(html: str, title: str) -> str:
    found = re.search(rf'data-kpi="{re.escape(title)}">([^<]*)<', html)
    assert found, f"no KPI {title!r}"
    return found.group(1)


def seed(tenant: Tenant, *, delivered: int, failed: int, reason: str) -> None:
    now = timezone.now() - timedelta(minutes=5)
    with tenant_context(tenant):
        subscriber = Subscriber.objects.create(external_id=f"home-{tenant.slug}")
        for n in range(delivered + failed):
            event = Event.objects.create(event_type_key="order.shipped", created_at=now)
            ok = n < delivered
            Message.objects.create(
                event=event,
                subscriber=subscriber,
                channel=Channel.WEBHOOK if ok else Channel.SMS,
                status=MessageStatus.DELIVERED if ok else MessageStatus.FAILED,
                created_at=now,
                sent_at=now if ok else None,
                delivered_at=now + timedelta(milliseconds=300) if ok else None,
                failed_at=None if ok else now,
                error="" if ok else reason,
            )
        WebhookEndpoint.objects.create(
            url="https://hooks.example.com/broken", failing_since=now - timedelta(hours=3)
        )
        stats_fold()


def test_the_tenant_home_shows_its_figures_charts_and_failures(tenant_a: Tenant) -> None:
    client = admin_client("alpha")
    before = client.get("/admin/").content.decode()
    seed(tenant_a, delivered=4, failed=2, reason="gateway-1: HTTP 422: no route to this number")

    response = client.get("/admin/")

    assert response.status_code == 200
    html = response.content.decode()
    grew = int(kpi(html, "Delivered").replace(",", "")) - int(
        kpi(before, "Delivered").replace(",", "")
    )
    assert grew == 4
    assert int(kpi(html, "Failed").replace(",", "")) >= 2
    assert kpi(html, "p95 event to delivery").startswith("≤")
    by_channel = json.loads(response.context["charts"]["by_channel"])
    webhook = next(d for d in by_channel["datasets"] if d["label"] == "webhook")
    assert sum(webhook["data"]) >= 4
    assert 'class="chart"' in html
    assert "HTTP 422: no route to this number" in html
    assert "https://hooks.example.com/broken" in html
    assert "failing since" in html


def test_the_period_can_be_chosen_and_a_bad_one_falls_back(tenant_a: Tenant) -> None:
    client = admin_client("alpha")
    day = client.get("/admin/", {"period": "24h"})
    assert day.context["period"].key == "24h"
    assert len(json.loads(day.context["charts"]["outcomes"])["labels"]) in (24, 25)
    odd = client.get("/admin/", {"period": "forever"})
    assert odd.status_code == 200
    assert odd.context["period"].key == "7d"


def test_the_tenant_home_shows_only_its_own_figures(tenant_a: Tenant, tenant_b: Tenant) -> None:
    client = admin_client("alpha")
    before = client.get("/admin/").content.decode()
    seed(tenant_b, delivered=3, failed=1, reason="beta's own failure reason")
    html = client.get("/admin/").content.decode()
    assert kpi(html, "Delivered") == kpi(before, "Delivered")
    assert "beta's own failure reason" not in html


def test_the_home_page_costs_a_fixed_number_of_queries(
    tenant_a: Tenant, django_assert_max_num_queries: Any
) -> None:
    client = admin_client("alpha")
    seed(tenant_a, delivered=30, failed=12, reason="x")
    with django_assert_max_num_queries(25):
        assert client.get("/admin/").status_code == 200


def test_the_staff_home_shows_every_tenant_without_content(
    client: Client, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    User.objects.create_superuser(username="ops", password=TENANT_PASSWORD)
    assert client.login(username="ops", password=TENANT_PASSWORD)
    seed(tenant_a, delivered=5, failed=3, reason="alpha's secret failure reason")
    seed(tenant_b, delivered=2, failed=0, reason="")

    response = client.get("/admin/", HTTP_HOST="localhost")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Alpha (alpha)" in html
    assert "Beta (beta)" in html
    assert "Top failing tenants" in html
    assert "Queues" in html
    for queue in ("pipeline", "delivery", "delivery_slow"):
        assert f">{queue}<" in html or queue in html
    # Staff see figures, never a tenant's message content or errors.
    assert "alpha's secret failure reason" not in html
    assert "home-alpha" not in html
    failing = response.context["failing_tenants"]["rows"]
    assert failing[0][0] == "Alpha (alpha)"
