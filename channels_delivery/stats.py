"""Delivery analytics, read from the hourly rollup (never from the messages).

What is counted, and how, is fixed by the triggers of migration 0010: a
message counts under ``sent`` in the hour of its ``sent_at``, under
``delivered`` in the hour of its ``delivered_at``, and so on; ``events`` (with
no channel) counts events received; ``latency_le_<ms>`` is the histogram of the
time from an event's arrival to a message's delivery. Until a worker folds them
(services.stats), recent changes wait in StatsDelta: reads add both, so a
figure is exact the moment the writing transaction commits.

The tenant's figures come from its own schema; ``platform_*`` read the public
copy, for staff, which is as fresh as each tenant's last fold.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from django.db import connection

COUNTERS = ("events", "created", "sent", "delivered", "failed", "opened", "clicked", "read")
MESSAGE_COUNTERS = COUNTERS[1:]
# Must match migration 0010's buckets (the last one is open-ended).
LATENCY_BOUNDS_MS: tuple[int, ...] = (
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    1800000,
)
LATENCY_PREFIX = "latency_le_"
LATENCY_METRICS = (*(f"{LATENCY_PREFIX}{bound}" for bound in LATENCY_BOUNDS_MS), "latency_le_inf")
Grain = Literal["hour", "day"]
GRAINS: tuple[Grain, ...] = ("hour", "day")


def hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def hour_ceiling(moment: datetime) -> datetime:
    floor = hour_floor(moment)
    return floor if floor == moment else floor + timedelta(hours=1)


@dataclass(frozen=True)
class Latency:
    """Percentiles from the histogram: the upper bound (ms) of the bucket each
    falls in, None past the last bound or with nothing delivered."""

    count: int
    p50_ms: int | None
    p95_ms: int | None
    p99_ms: int | None
    buckets: dict[str, int]


def latency_from(histogram: Mapping[str, int]) -> Latency:
    buckets = {metric: int(histogram.get(metric, 0)) for metric in LATENCY_METRICS}
    total = sum(buckets.values())

    def percentile(share: float) -> int | None:
        if total == 0:
            return None
        running = 0
        for bound, metric in zip(LATENCY_BOUNDS_MS, LATENCY_METRICS, strict=False):
            running += buckets[metric]
            if running >= share * total:
                return bound
        return None

    return Latency(
        count=total,
        p50_ms=percentile(0.50),
        p95_ms=percentile(0.95),
        p99_ms=percentile(0.99),
        buckets=buckets,
    )


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True)
class Totals:
    counts: dict[str, int]
    latency: Latency

    @property
    def rates(self) -> dict[str, float | None]:
        """Shares of the messages sent (for delivered, opened, clicked, read) and
        of those finished (for failed)."""
        c = self.counts
        return {
            "delivery": _rate(c["delivered"], c["sent"]),
            "failure": _rate(c["failed"], c["sent"] + c["failed"]),
            "open": _rate(c["opened"], c["sent"]),
            "click": _rate(c["clicked"], c["sent"]),
            "read": _rate(c["read"], c["sent"]),
        }


@dataclass(frozen=True)
class Report:
    start: datetime
    end: datetime
    grain: Grain
    totals: Totals
    by_channel: dict[str, Totals]
    # bucket start -> channel -> counter -> value (message counters only)
    series: dict[datetime, dict[str, dict[str, int]]] = field(default_factory=dict)

    @property
    def buckets(self) -> list[datetime]:
        """Every bucket of the period, empty ones too (a chart needs them)."""
        step = timedelta(hours=1) if self.grain == "hour" else timedelta(days=1)
        first = self.start if self.grain == "hour" else self.start.replace(hour=0)
        return [first + step * i for i in range(int((self.end - first) / step + 0.9999))]


def _totals(rows: Iterable[tuple[str, int]]) -> Totals:
    counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
    histogram: dict[str, int] = {}
    for metric, value in rows:
        if metric.startswith(LATENCY_PREFIX):
            histogram[metric] = histogram.get(metric, 0) + value
        elif metric in counts:
            counts[metric] += value
    return Totals(counts=counts, latency=latency_from(histogram))


def _report(
    rows: list[tuple[datetime, str, str, int]], *, start: datetime, end: datetime, grain: Grain
) -> Report:
    per_channel: dict[str, list[tuple[str, int]]] = defaultdict(list)
    series: dict[datetime, dict[str, dict[str, int]]] = defaultdict(dict)
    for bucket, channel, metric, value in rows:
        if channel:
            per_channel[channel].append((metric, value))
        if channel and metric in MESSAGE_COUNTERS:
            counters = series[bucket].setdefault(channel, dict.fromkeys(MESSAGE_COUNTERS, 0))
            counters[metric] += value
    return Report(
        start=start,
        end=end,
        grain=grain,
        totals=_totals((metric, value) for _, _, metric, value in rows),
        by_channel={channel: _totals(pairs) for channel, pairs in sorted(per_channel.items())},
        series=dict(series),
    )


def stats_report(
    *, start: datetime, end: datetime, grain: Grain = "hour", channel: str | None = None
) -> Report:
    """The current tenant's figures for [start, end), widened to whole hours."""
    start, end = hour_floor(start), hour_ceiling(end)
    channel_filter = "AND (channel = %(channel)s OR channel = '')" if channel else ""
    sql = f"""
        SELECT date_trunc(%(grain)s, hour, 'UTC') AS bucket, channel, metric, sum(value)::bigint
        FROM (
            SELECT hour, channel, metric, value FROM channels_delivery_statshour
            WHERE hour >= %(start)s AND hour < %(end)s {channel_filter}
            UNION ALL
            SELECT hour, channel, metric, amount FROM channels_delivery_statsdelta
            WHERE hour >= %(start)s AND hour < %(end)s {channel_filter}
        ) AS counted
        GROUP BY 1, 2, 3
    """  # noqa: S608 (the filter is one of two constants; values are parameters)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"grain": grain, "start": start, "end": end, "channel": channel})
        rows = cursor.fetchall()
    return _report(rows, start=start, end=end, grain=grain)


@dataclass(frozen=True)
class TenantFigures:
    tenant_id: int
    totals: Totals


def platform_report(*, start: datetime, end: datetime, grain: Grain = "day") -> Report:
    """Every tenant's figures together, from the public rollup (staff)."""
    from dashboard.models import TenantStatsHour

    start, end = hour_floor(start), hour_ceiling(end)
    sql = f"""
        SELECT date_trunc(%(grain)s, hour, 'UTC'), channel, metric, sum(value)::bigint
        FROM {TenantStatsHour._meta.db_table}
        WHERE hour >= %(start)s AND hour < %(end)s
        GROUP BY 1, 2, 3
    """  # noqa: S608 (a model's table name)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"grain": grain, "start": start, "end": end})
        rows = cursor.fetchall()
    return _report(rows, start=start, end=end, grain=grain)


def platform_by_tenant(*, start: datetime, end: datetime) -> dict[int, Totals]:
    """Each tenant's totals for the period (staff: top failing tenants)."""
    from dashboard.models import TenantStatsHour

    start, end = hour_floor(start), hour_ceiling(end)
    sql = f"""
        SELECT tenant_id, metric, sum(value)::bigint FROM {TenantStatsHour._meta.db_table}
        WHERE hour >= %(start)s AND hour < %(end)s
        GROUP BY 1, 2
    """  # noqa: S608 (a model's table name)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"start": start, "end": end})
        rows = cursor.fetchall()
    per_tenant: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for tenant_id, metric, value in rows:
        per_tenant[tenant_id].append((metric, value))
    return {tenant_id: _totals(pairs) for tenant_id, pairs in per_tenant.items()}


def platform_by_provider(*, start: datetime, end: datetime) -> dict[tuple[int, str, str], Totals]:
    """Totals per tenant, channel and provider (staff: top failing integrations)."""
    from dashboard.models import TenantStatsHour

    start, end = hour_floor(start), hour_ceiling(end)
    sql = f"""
        SELECT tenant_id, channel, provider, metric, sum(value)::bigint
        FROM {TenantStatsHour._meta.db_table}
        WHERE hour >= %(start)s AND hour < %(end)s AND channel <> ''
        GROUP BY 1, 2, 3, 4
    """  # noqa: S608 (a model's table name)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"start": start, "end": end})
        rows = cursor.fetchall()
    grouped: dict[tuple[int, str, str], list[tuple[str, int]]] = defaultdict(list)
    for tenant_id, channel, provider, metric, value in rows:
        grouped[(tenant_id, channel, provider)].append((metric, value))
    return {key: _totals(pairs) for key, pairs in grouped.items()}


def provider_failure_rates(*, start: datetime, end: datetime) -> dict[tuple[str, str], float]:
    """The current tenant's failure rate per (channel, provider) in the period,
    for providers that sent or failed anything."""
    start, end = hour_floor(start), hour_ceiling(end)
    sql = """
        SELECT channel, provider, metric, sum(value)::bigint
        FROM (
            SELECT channel, provider, metric, value FROM channels_delivery_statshour
            WHERE hour >= %(start)s AND hour < %(end)s AND metric IN ('sent', 'failed')
            UNION ALL
            SELECT channel, provider, metric, amount FROM channels_delivery_statsdelta
            WHERE hour >= %(start)s AND hour < %(end)s AND metric IN ('sent', 'failed')
        ) AS counted
        WHERE provider <> ''
        GROUP BY 1, 2, 3
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"start": start, "end": end})
        rows = cursor.fetchall()
    grouped: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for channel, provider, metric, value in rows:
        grouped[(channel, provider)].append((metric, value))
    rates = {}
    for key, pairs in grouped.items():
        rate = _totals(pairs).rates["failure"]
        if rate is not None:
            rates[key] = rate
    return rates
