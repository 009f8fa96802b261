"""The analytics rollup is exact: after a mixed workload driven through the real
services (deliveries over sockets, failures, failover, engagement, inbox read
and unread, replays, bulk moves) it equals counts of the underlying rows, before
the fold (reads add the deltas) and after it, in the tenant schema and in the
public copy staff see."""

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message, MessageStatus, StatsDelta, StatsHour
from channels_delivery.services.delivery import message_deliver, message_transition
from channels_delivery.services.inbox import inbox_message_read, inbox_message_unread
from channels_delivery.services.integrations import integration_create
from channels_delivery.services.stats import stats_fold
from channels_delivery.services.webhooks import webhook_messages_replay_failed
from channels_delivery.stats import LATENCY_BOUNDS_MS, latency_from, stats_report
from dashboard.models import TenantStatsHour, TenantStatsTotal
from rules_engine.models import Event, Subscriber
from tenants.db import tenant_connection
from tenants.models import Tenant
from tests.channels_delivery.conftest import Published
from tests.channels_delivery.sinks import HttpSink

pytestmark = pytest.mark.django_db

COUNTED = {
    "created": "created_at",
    "sent": "sent_at",
    "delivered": "delivered_at",
    "failed": "failed_at",
    "opened": "opened_at",
    "clicked": "clicked_at",
    "read": "read_at",
}
Key = tuple[datetime, str, str, str]  # hour, channel, provider, metric


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@pytest.fixture
def in_alpha(tenant_a: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant_a):
        yield tenant_a


def hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def latency_metric(milliseconds: float) -> str:
    for bound in LATENCY_BOUNDS_MS:
        if milliseconds <= bound:
            return f"latency_le_{bound}"
    return "latency_le_inf"


def counted_from_rows() -> Counter[Key]:
    """What the rollup must say, computed the slow way from every row."""
    expected: Counter[Key] = Counter()
    for message in Message.objects.select_related("event", "integration"):
        provider = message.integration.provider if message.integration else ""
        for metric, column in COUNTED.items():
            moment = getattr(message, column)
            if moment is not None:
                expected[(hour(moment), message.channel, provider, metric)] += 1
        if message.delivered_at is not None:
            elapsed = (message.delivered_at - message.event.created_at).total_seconds() * 1000
            key = (hour(message.delivered_at), message.channel, provider, latency_metric(elapsed))
            expected[key] += 1
    for created_at in Event.objects.values_list("created_at", flat=True):
        expected[(hour(created_at), "", "", "events")] += 1
    return expected


def rollup() -> Counter[Key]:
    """StatsHour plus the deltas not folded yet."""
    found: Counter[Key] = Counter()
    for row in StatsHour.objects.all():
        found[(row.hour, row.channel, row.provider, row.metric)] += row.value
    for delta in StatsDelta.objects.all():
        found[(delta.hour, delta.channel, delta.provider, delta.metric)] += delta.amount
    return found


def difference(after: Counter[Key], before: Counter[Key]) -> dict[Key, int]:
    """after - before, keeping negative and dropping zero entries."""
    keys = set(after) | set(before)
    return {key: after[key] - before[key] for key in keys if after[key] != before[key]}


def mixed_workload(sms: HttpSink, base: datetime) -> None:
    ann = Subscriber.objects.create(
        external_id="stats-ann", email="ann@example.com", phone="+447700900123"
    )
    bo = Subscriber.objects.create(external_id="stats-bo", phone="+447700900124")
    primary = integration_create(
        channel="sms",
        provider="http_gateway",
        name="primary",
        priority=0,
        config={"url": f"{sms.url}/primary", "timeout": 2},
    )
    # Events in three different hours; one statement for many and one for one.
    events = Event.objects.bulk_create(
        [
            Event(
                event_type_key="order.shipped",
                payload={"n": n},
                created_at=base + timedelta(hours=n % 3),
            )
            for n in range(12)
        ]
    )
    lone = Event.objects.create(event_type_key="order.shipped", created_at=base)
    events.append(lone)

    def message(channel: str, event: Event, subscriber: Subscriber, **fields: Any) -> Message:
        return Message.objects.create(
            event=event,
            subscriber=subscriber,
            channel=channel,
            content={"text": "Order shipped", "title": "Shipped", "subject": "Shipped"},
            created_at=event.created_at,
            **fields,
        )

    # SMS over a real socket: accepted, refused for good, and retried then accepted.
    sms_messages = [message(Channel.SMS, events[n], ann if n % 2 else bo) for n in range(6)]
    for n, sms_message in enumerate(sms_messages):
        if n == 2:
            sms.reply(422, "no route to this number")
        elif n == 4:
            sms.reply(503, "busy")
        message_deliver(
            message_id=sms_message.id, now=sms_message.created_at + timedelta(seconds=n)
        )
    message_deliver(
        message_id=sms_messages[4].id, now=sms_messages[4].created_at + timedelta(minutes=70)
    )
    assert Message.objects.filter(pk=sms_messages[0].pk, integration=primary).exists()

    # In-app: delivered when sent; read, one unread again, one read through a status move.
    inbox = [message(Channel.IN_APP, events[n], ann) for n in range(6, 10)]
    for n, inbox_message in enumerate(inbox):
        message_deliver(
            message_id=inbox_message.id,
            now=inbox_message.created_at + timedelta(milliseconds=40 * 10**n),
        )
    for inbox_message in Message.objects.filter(pk__in=[m.pk for m in inbox[:3]]):
        inbox_message_read(message=inbox_message)
    inbox_message_unread(message=Message.objects.get(pk=inbox[1].pk))

    # Email moved by its tracking: delivered, opened, clicked, bounced.
    emails = [
        message(
            Channel.EMAIL, events[n], ann, status=MessageStatus.SENT, sent_at=events[n].created_at
        )
        for n in range(10, 13)
    ]
    later = base + timedelta(hours=2, minutes=5)
    message_transition(message_id=emails[0].id, to=MessageStatus.DELIVERED, now=later)
    message_transition(message_id=emails[0].id, to=MessageStatus.OPENED, now=later)
    message_transition(
        message_id=emails[0].id, to=MessageStatus.CLICKED, now=later + timedelta(hours=1)
    )
    message_transition(message_id=emails[1].id, to=MessageStatus.DELIVERED, now=later)
    message_transition(message_id=emails[1].id, to=MessageStatus.BOUNCED, now=later)
    # A bulk move in one statement, as the batch delivery does.
    Message.objects.filter(pk=emails[2].pk).update(
        status=MessageStatus.DELIVERED, delivered_at=base + timedelta(days=1)
    )

    # Webhooks that failed, half of them replayed (failed_at goes back to NULL).
    hooks = [
        message(
            Channel.WEBHOOK,
            events[n],
            bo,
            status=MessageStatus.FAILED,
            failed_at=base + timedelta(minutes=n),
        )
        for n in range(4)
    ]
    replay_from = hooks[2].failed_at
    assert replay_from is not None
    assert webhook_messages_replay_failed(since=replay_from) == 2
    # A claim changes no counted column: it adds no delta.
    Message.objects.filter(pk=hooks[0].pk).update(status=MessageStatus.QUEUED)


def test_the_rollup_equals_counts_of_the_rows_after_a_mixed_workload(
    in_alpha: Tenant, sink: HttpSink, delivered: Published
) -> None:
    stats_fold()  # whatever other tests committed is the baseline
    rows_before, rollup_before = counted_from_rows(), rollup()
    base = hour(timezone.now()) - timedelta(hours=5)
    report_before = stats_report(start=base, end=base + timedelta(days=2), grain="day")

    mixed_workload(sink, base)

    expected = difference(counted_from_rows(), rows_before)
    assert expected, "the workload counted nothing"
    assert {key[3] for key in expected} >= {
        "events",
        "created",
        "sent",
        "delivered",
        "failed",
        "opened",
        "clicked",
        "read",
    }
    assert any(key[3].startswith("latency_le_") for key in expected)
    # Exact before any fold: reads add the pending deltas.
    assert difference(rollup(), rollup_before) == expected
    assert StatsDelta.objects.exists()

    folded = stats_fold()
    assert folded.keys > 0
    assert not StatsDelta.objects.exists()
    assert difference(rollup(), rollup_before) == expected
    # Folding again changes nothing.
    assert stats_fold().keys == 0
    assert difference(rollup(), rollup_before) == expected

    # The public copy staff read is the tenant's rollup, row for row.
    tenant_rows = {
        (row.hour, row.channel, row.provider, row.metric): row.value
        for row in StatsHour.objects.all()
    }
    public_rows = {
        (row.hour, row.channel, row.provider, row.metric): row.value
        for row in TenantStatsHour.objects.filter(tenant=in_alpha)
    }
    for key in expected:
        assert public_rows.get(key, 0) == tenant_rows.get(key, 0), key
    totals: Counter[tuple[str, str, str]] = Counter()
    for (_, channel, provider, metric), value in expected.items():
        totals[(channel, provider, metric)] += value
    for (channel, provider, metric), value in totals.items():
        row = TenantStatsTotal.objects.get(
            tenant=in_alpha, channel=channel, provider=provider, metric=metric
        )
        assert row.value >= value

    # The report a dashboard reads grew by exactly the workload's rows too.
    report = stats_report(start=base, end=base + timedelta(days=2), grain="day")
    in_period: Counter[str] = Counter()
    for (moment, _, _, metric), value in expected.items():
        if base <= moment < base + timedelta(days=2):
            in_period[metric] += value
    for metric in ("events", "created", "sent", "delivered", "failed", "opened", "clicked", "read"):
        grown = report.totals.counts[metric] - report_before.totals.counts[metric]
        assert grown == in_period[metric], metric
    for bucket, count in report.totals.latency.buckets.items():
        assert count - report_before.totals.latency.buckets[bucket] == in_period[bucket], bucket


def test_another_tenants_workload_is_not_in_this_tenants_figures(
    tenant_a: Tenant, tenant_b: Tenant
) -> None:
    start = hour(timezone.now())
    with tenant_context(tenant_b):
        before_b = stats_report(start=start, end=start + timedelta(hours=1)).totals.counts["events"]
    with tenant_context(tenant_a):
        before_a = stats_report(start=start, end=start + timedelta(hours=1)).totals.counts["events"]
        Event.objects.bulk_create([Event(event_type_key="x") for _ in range(3)])
        assert (
            stats_report(start=start, end=start + timedelta(hours=1)).totals.counts["events"]
            == before_a + 3
        )
        stats_fold()
    with tenant_context(tenant_b):
        assert (
            stats_report(start=start, end=start + timedelta(hours=1)).totals.counts["events"]
            == before_b
        )
        stats_fold()
    assert tenant_connection.schema_name == "public"
    alpha_public = TenantStatsHour.objects.filter(tenant=tenant_a, hour=start, metric="events")
    assert alpha_public.get().value >= 3


def test_latency_percentiles_come_from_the_histogram() -> None:
    latency = latency_from({"latency_le_50": 90, "latency_le_250": 5, "latency_le_inf": 5})
    assert (latency.count, latency.p50_ms, latency.p95_ms, latency.p99_ms) == (100, 50, 250, None)
    assert latency_from({}).p50_ms is None
