"""``GET /metrics``: the platform in Prometheus' text format, for operators.

Answered on any hostname before the tenant lookup (tenants.middleware), with
``Authorization: Bearer $HERALD_METRICS_TOKEN``; without a token configured
the endpoint is off. Every figure comes from the public rollup (services.stats
keeps it) and the broker, so a scrape costs a few small queries whatever the
number of tenants or messages. Labels carry tenant slugs, channels and provider
names, never content.
"""

import hmac
from collections import defaultdict
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_tenants.utils import get_public_schema_name
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from channels_delivery.stats import LATENCY_BOUNDS_MS, LATENCY_METRICS, MESSAGE_COUNTERS
from dashboard.health import queue_depths, worker_heartbeats
from dashboard.models import TenantStatsTotal
from tenants.models import Tenant

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HeraldCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        slugs = dict(
            Tenant.objects.exclude(schema_name=get_public_schema_name()).values_list("pk", "slug")
        )
        active = Tenant.objects.exclude(schema_name=get_public_schema_name()).filter(is_active=True)
        tenants = GaugeMetricFamily("herald_tenants", "Tenants by state.", labels=["state"])
        active_count = active.count()
        tenants.add_metric(["active"], active_count)
        tenants.add_metric(["suspended"], len(slugs) - active_count)
        yield tenants

        events = CounterMetricFamily("herald_events", "Events received.", labels=["tenant"])
        messages = CounterMetricFamily(
            "herald_messages",
            "Messages that reached each state (failed includes bounces).",
            labels=["tenant", "channel", "provider", "state"],
        )
        histograms: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for row in TenantStatsTotal.objects.order_by("tenant_id", "channel", "provider", "metric"):
            slug = slugs.get(row.tenant_id)
            if slug is None:
                continue
            if row.metric == "events":
                events.add_metric([slug], row.value)
            elif row.metric in MESSAGE_COUNTERS:
                messages.add_metric([slug, row.channel, row.provider, row.metric], row.value)
            elif row.metric in LATENCY_METRICS:
                bucket = histograms[(slug, row.channel)]
                bucket[row.metric] = bucket.get(row.metric, 0) + row.value
        yield events
        yield messages

        latency = HistogramMetricFamily(
            "herald_delivery_latency_seconds",
            "From an event's arrival to a message's delivery.",
            labels=["tenant", "channel"],
        )
        for (slug, channel), counts in sorted(histograms.items()):
            running, buckets = 0, []
            for bound, metric in zip(LATENCY_BOUNDS_MS, LATENCY_METRICS, strict=False):
                running += counts.get(metric, 0)
                buckets.append((f"{bound / 1000:g}", running))
            running += counts.get(LATENCY_METRICS[-1], 0)
            buckets.append(("+Inf", running))
            latency.add_metric([slug, channel], buckets, sum_value=None)
        yield latency

        queues = GaugeMetricFamily(
            "herald_queue_messages", "Tasks waiting in each broker queue.", labels=["queue"]
        )
        for depth in queue_depths():
            if depth.waiting is not None:
                queues.add_metric([depth.name], depth.waiting)
        yield queues

        heartbeats = GaugeMetricFamily(
            "herald_worker_heartbeat_age_seconds",
            "Seconds since each worker last ran the heartbeat task.",
            labels=["worker"],
        )
        for beat in worker_heartbeats():
            heartbeats.add_metric([beat.worker], round(beat.age_seconds, 3))
        yield heartbeats


def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.HERALD_METRICS_TOKEN
    if not token:
        return HttpResponse(
            "/metrics is off: set HERALD_METRICS_TOKEN to turn it on.\n",
            status=404,
            content_type="text/plain",
        )
    given = request.headers.get("Authorization", "")
    scheme, _, credential = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        credential.strip().encode(), token.encode()
    ):
        return HttpResponse(
            "Send Authorization: Bearer <HERALD_METRICS_TOKEN>.\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="herald-metrics"'},
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HeraldCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE)
