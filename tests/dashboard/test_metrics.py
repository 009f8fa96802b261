"""/metrics: Prometheus' text format from the public rollup and the broker,
behind a bearer token, never showing content."""

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context
from prometheus_client.parser import text_string_to_metric_families

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message, MessageStatus
from channels_delivery.services.stats import stats_fold
from dashboard.health import QUEUES, queue_depths, worker_heartbeats
from herald.safety import UnsafeSettings, refuse_unsafe_settings
from herald.tasks import worker_heartbeat
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-for-the-tests-0123456789"


@pytest.fixture
def token(settings: Any) -> str:
    settings.HERALD_METRICS_TOKEN = TOKEN
    return TOKEN


def scrape(host: str = "localhost", token: str = TOKEN) -> Any:
    return Client().get("/metrics", HTTP_HOST=host, HTTP_AUTHORIZATION=f"Bearer {token}")


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def seed_delivered(tenant: Tenant, count: int) -> None:
    now = timezone.now()
    with tenant_context(tenant):
        subscriber = Subscriber.objects.create(external_id="m", email="secret-ann@example.com")
        for _ in range(count):
            event = Event.objects.create(
                event_type_key="order.shipped", payload={"secret": "the order content"}
            )
            Message.objects.create(
                event=event,
                subscriber=subscriber,
                channel=Channel.IN_APP,
                status=MessageStatus.DELIVERED,
                content={"title": "the message content"},
                sent_at=now,
                delivered_at=event.created_at + timedelta(milliseconds=70),
            )
        stats_fold()


def test_the_figures_of_every_tenant(token: str, tenant_a: Tenant, tenant_b: Tenant) -> None:
    for tenant in (tenant_a, tenant_b):  # what other tests committed is the baseline
        with tenant_context(tenant):
            stats_fold()
    before = samples(scrape().content)
    seed_delivered(tenant_a, 3)
    seed_delivered(tenant_b, 1)

    response = scrape()

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    after = samples(response.content)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("herald_events_total", tenant="alpha") == 3
    assert grew("herald_events_total", tenant="beta") == 1
    delivered = {"channel": "in_app", "provider": "", "state": "delivered"}
    assert grew("herald_messages_total", tenant="alpha", **delivered) == 3
    assert grew("herald_messages_total", tenant="beta", **delivered) == 1
    assert (
        grew("herald_delivery_latency_seconds_bucket", tenant="alpha", channel="in_app", le="0.1")
        == 3
    )
    assert (
        grew("herald_delivery_latency_seconds_bucket", tenant="alpha", channel="in_app", le="0.05")
        == 0
    )
    assert (
        grew("herald_delivery_latency_seconds_bucket", tenant="alpha", channel="in_app", le="+Inf")
        == 3
    )
    assert after[("herald_tenants", (("state", "active"),))] >= 2
    for queue in QUEUES:
        assert ("herald_queue_messages", (("queue", queue),)) in after
    body = response.content.decode()
    for content in ("secret-ann@example.com", "the order content", "the message content"):
        assert content not in body


def test_queue_depths_and_heartbeats_come_from_the_broker_and_redis() -> None:
    worker_heartbeat()
    beats = worker_heartbeats()
    assert beats
    assert beats[0].age_seconds < 5
    depths = {depth.name: depth.waiting for depth in queue_depths()}
    assert set(depths) == set(QUEUES)
    assert all(isinstance(waiting, int) and waiting >= 0 for waiting in depths.values())


@pytest.mark.parametrize("host", ["localhost", "alpha.localhost", "10.0.0.7"])
def test_answered_on_any_host(token: str, host: str) -> None:
    assert scrape(host=host).status_code == 200


def test_a_wrong_or_missing_token_is_refused(token: str) -> None:
    wrong = scrape(token="not-the-token")
    assert wrong.status_code == 401
    assert wrong["WWW-Authenticate"].startswith("Bearer")
    assert b"herald_" not in wrong.content
    missing = Client().get("/metrics")
    assert missing.status_code == 401


def test_off_without_a_token(settings: Any) -> None:
    settings.HERALD_METRICS_TOKEN = ""
    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 404
    assert b"HERALD_METRICS_TOKEN" in response.content


def test_production_refuses_a_short_token() -> None:
    with pytest.raises(UnsafeSettings) as refused:
        refuse_unsafe_settings(
            herald_env="production",
            debug=False,
            secret_key="x" * 20 + "abcdefghijklmnopqrstuvwxyz0123456789",
            allowed_hosts=["herald.example.com"],
            encryption_keys=["u" * 43 + "="],
            api_key_cache_seconds=3,
            metrics_token="short",
        )
    assert any("HERALD_METRICS_TOKEN" in problem for problem in refused.value.problems)
