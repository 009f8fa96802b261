"""The two dashboards' home pages: the tenant's delivery at a glance, and the
platform's health for staff. Every figure comes from the rollups
(channels_delivery.stats), the lists from indexed queries with a LIMIT, so the
page costs the same for a tenant with a million messages as for one with ten.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.html import format_html
from django_tenants.utils import get_public_schema_name

from channels_delivery.models import Integration, Message, MessageStatus, WebhookEndpoint
from channels_delivery.stats import (
    Grain,
    Report,
    Totals,
    platform_by_provider,
    platform_by_tenant,
    platform_report,
    provider_failure_rates,
    stats_report,
)
from dashboard.health import queue_depths, worker_heartbeats
from tenants.models import Tenant


@dataclass(frozen=True)
class Period:
    key: str
    label: str
    span: timedelta
    grain: Grain


PERIODS = (
    Period("24h", "Last 24 hours", timedelta(hours=24), "hour"),
    Period("7d", "Last 7 days", timedelta(days=7), "day"),
    Period("30d", "Last 30 days", timedelta(days=30), "day"),
    Period("90d", "Last 90 days", timedelta(days=90), "day"),
)
DEFAULT_PERIOD = "7d"
LATEST_FAILURES = 10
NONE = "\u2013"  # an en dash: no figure
TROUBLE_FAILURE_RATE = 0.10  # an integration failing more than this is listed
# Chart colours per channel (Tailwind's 500s, readable on light and dark).
COLOURS = {
    "email": "#3b82f6",
    "sms": "#10b981",
    "webhook": "#f59e0b",
    "chat": "#8b5cf6",
    "in_app": "#ec4899",
    "push": "#06b6d4",
}


def period_of(request: HttpRequest) -> Period:
    wanted = request.GET.get("period", DEFAULT_PERIOD)
    return next((p for p in PERIODS if p.key == wanted), PERIODS[1])


def _percent(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f}%"


def _count(value: int) -> str:
    return number_format(value, force_grouping=True)


def _latency(ms: int | None, count: int) -> str:
    if count == 0:
        return NONE
    if ms is None:
        return "> 30 min"
    return f"≤ {ms} ms" if ms < 1000 else f"≤ {ms / 1000:g} s"


def kpis(totals: Totals) -> list[dict[str, str]]:
    c, rates, latency = totals.counts, totals.rates, totals.latency
    return [
        {"title": "Events", "value": _count(c["events"]), "footer": "received"},
        {
            "title": "Messages sent",
            "value": _count(c["sent"]),
            "footer": f"{_count(c['created'])} created",
        },
        {
            "title": "Delivered",
            "value": _count(c["delivered"]),
            "footer": f"{_percent(rates['delivery'])} of sent",
        },
        {
            "title": "Failed",
            "value": _count(c["failed"]),
            "footer": f"failure rate {_percent(rates['failure'])}",
        },
        {
            "title": "Engagement",
            "value": _percent(rates["open"]),
            "footer": (
                f"opened · clicked {_percent(rates['click'])} · read {_percent(rates['read'])}"
            ),
        },
        {
            "title": "p95 event to delivery",
            "value": _latency(latency.p95_ms, latency.count),
            "footer": f"p50 {_latency(latency.p50_ms, latency.count)}",
        },
    ]


def _bucket_label(moment: datetime, grain: Grain) -> str:
    return f"{moment:%H:00}" if grain == "hour" else f"{moment:%b %d}"


def charts(report: Report) -> dict[str, Any]:
    """Chart.js data (as unfold's chart components take it): per channel over time,
    and delivered against failed."""
    buckets = report.buckets
    labels = [_bucket_label(bucket, report.grain) for bucket in buckets]
    channels = sorted({channel for counts in report.series.values() for channel in counts})

    def per_bucket(metric: str, channel: str | None = None) -> list[int]:
        values = []
        for bucket in buckets:
            counts = report.series.get(bucket, {})
            if channel is None:
                values.append(sum(per.get(metric, 0) for per in counts.values()))
            else:
                values.append(counts.get(channel, {}).get(metric, 0))
        return values

    # Unfold's chart defaults hide the y axis unless a dataset asks for it.
    by_channel = {
        "labels": labels,
        "datasets": [
            {
                "label": channel,
                "data": per_bucket("sent", channel),
                "borderColor": COLOURS.get(channel, "#64748b"),
                "backgroundColor": COLOURS.get(channel, "#64748b"),
                "displayYAxis": index == 0,
            }
            for index, channel in enumerate(channels)
        ],
    }
    # Unfold overlaps bars (grouped: false) and Chart.js draws the first dataset
    # on top: failures first, so they show over the taller delivered bars.
    outcomes = {
        "labels": labels,
        "datasets": [
            {
                "label": "failed",
                "data": per_bucket("failed"),
                "backgroundColor": "#ef4444",
                "maxBarThickness": 14,
                "displayYAxis": True,
            },
            {
                "label": "delivered",
                "data": per_bucket("delivered"),
                "backgroundColor": "#10b981",
                "maxBarThickness": 14,
            },
        ],
    }
    return {
        "by_channel": json.dumps(by_channel),
        "outcomes": json.dumps(outcomes),
        "legend": [
            {"label": channel, "colour": COLOURS.get(channel, "#64748b")} for channel in channels
        ],
        "outcome_legend": [
            {"label": "delivered", "colour": "#10b981"},
            {"label": "failed", "colour": "#ef4444"},
        ],
    }


def _admin_link(view: str, *args: Any) -> str | None:
    try:
        return reverse(f"tenant_admin:{view}", args=args)
    except NoReverseMatch:
        return None


def latest_failures() -> dict[str, Any]:
    """The newest failed or bounced messages, from the (status, -created_at) index."""
    newest: list[Message] = []
    for status in (MessageStatus.FAILED, MessageStatus.BOUNCED):
        newest.extend(
            Message.objects.filter(status=status)
            .select_related("subscriber")
            .only(
                "id",
                "channel",
                "status",
                "error",
                "created_at",
                "failed_at",
                "subscriber__external_id",
                "event_id",
            )
            .order_by("-created_at")[:LATEST_FAILURES]
        )
    newest.sort(key=lambda message: message.created_at, reverse=True)
    rows = []
    for message in newest[:LATEST_FAILURES]:
        link = _admin_link("channels_delivery_message_change", message.pk)
        when = f"{timezone.localtime(message.failed_at or message.created_at):%b %d %H:%M}"
        rows.append(
            [
                format_html('<a class="text-primary-600" href="{}">{}</a>', link, when)
                if link
                else when,
                message.channel,
                message.subscriber.external_id if message.subscriber else "(erased)",
                message.error or message.status,
            ]
        )
    return {"headers": ["When", "Channel", "Subscriber", "Reason"], "rows": rows}


def in_trouble(report: Report) -> dict[str, Any]:
    """Webhook endpoints failing or disabled, integrations disabled or failing
    more than TROUBLE_FAILURE_RATE of what they sent in the period."""
    rows: list[list[str]] = []
    endpoints = WebhookEndpoint.objects.filter(Q(enabled=False) | Q(failing_since__isnull=False))
    for endpoint in endpoints.order_by("-failing_since")[:10]:
        if not endpoint.enabled:
            state = f"disabled: {endpoint.disabled_reason or 'by a user'}"
        else:
            state = f"failing since {timezone.localtime(endpoint.failing_since):%b %d %H:%M}"
        rows.append(["Webhook endpoint", endpoint.url, state])
    for integration in Integration.objects.filter(enabled=False).order_by("channel", "priority")[
        :10
    ]:
        rows.append(["Integration", f"{integration.name} ({integration.provider})", "disabled"])
    failing = _failing_providers(report)
    for integration in Integration.objects.filter(enabled=True).order_by("channel", "priority"):
        rate = failing.get((integration.channel, integration.provider))
        if rate is not None:
            rows.append(
                [
                    "Integration",
                    f"{integration.name} ({integration.provider})",
                    f"{_percent(rate)} of its {integration.channel} messages failed",
                ]
            )
    return {"headers": ["What", "Which", "State"], "rows": rows}


def _failing_providers(report: Report) -> dict[tuple[str, str], float]:
    return {
        key: rate
        for key, rate in provider_failure_rates(start=report.start, end=report.end).items()
        if rate > TROUBLE_FAILURE_RATE
    }


def tenant_home(request: HttpRequest) -> dict[str, Any]:
    period = period_of(request)
    now = timezone.now()
    report = stats_report(start=now - period.span, end=now, grain=period.grain)
    return {
        "periods": PERIODS,
        "period": period,
        "kpis": kpis(report.totals),
        "charts": charts(report),
        "has_messages": report.totals.counts["created"] > 0 or report.totals.counts["events"] > 0,
        "failures": latest_failures(),
        "trouble": in_trouble(report),
        "channels_table": {
            "headers": ["Channel", "Sent", "Delivered", "Failed", "Delivery rate", "p95 latency"],
            "rows": [
                [
                    channel,
                    _count(totals.counts["sent"]),
                    _count(totals.counts["delivered"]),
                    _count(totals.counts["failed"]),
                    _percent(totals.rates["delivery"]),
                    _latency(totals.latency.p95_ms, totals.latency.count),
                ]
                for channel, totals in report.by_channel.items()
            ],
        },
    }


def staff_home(request: HttpRequest) -> dict[str, Any]:
    period = period_of(request)
    now = timezone.now()
    start = now - period.span
    report = platform_report(start=start, end=now, grain=period.grain)
    tenants = {
        tenant.pk: tenant
        for tenant in Tenant.objects.exclude(schema_name=get_public_schema_name()).select_related(
            "plan"
        )
    }
    by_tenant = platform_by_tenant(start=start, end=now)

    def tenant_name(tenant_id: int) -> str:
        tenant = tenants.get(tenant_id)
        return f"{tenant.name} ({tenant.slug})" if tenant else f"#{tenant_id} (deleted)"

    busiest = sorted(by_tenant.items(), key=lambda item: -item[1].counts["sent"])[:10]
    failing = sorted(
        (item for item in by_tenant.items() if item[1].counts["failed"]),
        key=lambda item: -(item[1].rates["failure"] or 0),
    )[:10]
    providers = sorted(
        (
            item
            for item in platform_by_provider(start=start, end=now).items()
            if item[1].counts["failed"]
        ),
        key=lambda item: -item[1].counts["failed"],
    )[:10]
    beats = worker_heartbeats()
    return {
        "periods": PERIODS,
        "period": period,
        "kpis": kpis(report.totals),
        "charts": charts(report),
        "has_messages": report.totals.counts["created"] > 0 or report.totals.counts["events"] > 0,
        "tenant_counts": {
            "active": sum(1 for tenant in tenants.values() if tenant.is_active),
            "suspended": sum(1 for tenant in tenants.values() if not tenant.is_active),
        },
        "busiest": {
            "headers": ["Tenant", "Plan", "Events", "Sent", "Delivered", "Failed"],
            "rows": [
                [
                    tenant_name(tenant_id),
                    str(tenants[tenant_id].plan or NONE) if tenant_id in tenants else NONE,
                    _count(totals.counts["events"]),
                    _count(totals.counts["sent"]),
                    _count(totals.counts["delivered"]),
                    _count(totals.counts["failed"]),
                ]
                for tenant_id, totals in busiest
            ],
        },
        "failing_tenants": {
            "headers": ["Tenant", "Failed", "Failure rate"],
            "rows": [
                [
                    tenant_name(tenant_id),
                    _count(totals.counts["failed"]),
                    _percent(totals.rates["failure"]),
                ]
                for tenant_id, totals in failing
            ],
        },
        "failing_providers": {
            "headers": ["Tenant", "Channel", "Provider", "Failed", "Failure rate"],
            "rows": [
                [
                    tenant_name(tenant_id),
                    channel,
                    provider or "(built in)",
                    _count(totals.counts["failed"]),
                    _percent(totals.rates["failure"]),
                ]
                for (tenant_id, channel, provider), totals in providers
            ],
        },
        "queues": {
            "headers": ["Queue", "Waiting"],
            "rows": [
                [
                    depth.name,
                    "broker did not answer" if depth.waiting is None else _count(depth.waiting),
                ]
                for depth in queue_depths()
            ],
        },
        "workers": {
            "headers": ["Worker", "Last heartbeat"],
            "rows": [[beat.worker, f"{beat.age_seconds:.0f} s ago"] for beat in beats],
        },
        "sentry_url": settings.HERALD_SENTRY_URL,
    }
