"""/api/v1/stats: the tenant's delivery figures for a period, from the rollup
(channels_delivery.stats), so a year of messages costs what a day does."""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Router, Schema
from pydantic import Field

from channels_delivery.catalogue import Channel
from channels_delivery.stats import (
    COUNTERS,
    LATENCY_PREFIX,
    MESSAGE_COUNTERS,
    Grain,
    Totals,
    stats_report,
)
from herald.api import ProblemOut, require_scope
from herald.problems import FieldError, validation_problem
from tenants.models import ApiScope

router = Router(tags=["stats"])

DEFAULT_PERIOD = timedelta(hours=24)
# At most this many buckets in one answer: a month of hours, a bit over a year of days.
MAX_BUCKETS = 24 * 31
MAX_SPAN: dict[str, timedelta] = {"hour": timedelta(hours=MAX_BUCKETS), "day": timedelta(days=400)}


class LatencyOut(Schema):
    count: int = Field(description="Messages delivered in the period.")
    p50_ms: int | None = Field(
        description="Event received to delivered: the upper bound (ms) of the histogram bucket "
        "the median falls in; null when nothing was delivered or past the last bound."
    )
    p95_ms: int | None
    p99_ms: int | None
    buckets: dict[str, int] = Field(
        description="Deliveries per bucket, keyed by its upper bound in ms (`inf` for the last)."
    )


class TotalsOut(Schema):
    counts: dict[str, int] = Field(
        description="events received; messages created, sent, delivered, failed (bounces "
        "included), opened, clicked and read, each counted in the hour it happened."
    )
    rates: dict[str, float | None] = Field(
        description="delivery, open, click and read as shares of sent; failure as a share of "
        "sent plus failed; null when there is nothing to divide by."
    )
    latency: LatencyOut


class BucketOut(Schema):
    start: datetime
    channels: dict[str, dict[str, int]] = Field(
        description="Per channel: created, sent, delivered, failed, opened, clicked, read."
    )


class StatsOut(Schema):
    start: datetime
    end: datetime
    grain: str
    totals: TotalsOut
    channels: dict[str, TotalsOut]
    series: list[BucketOut] = Field(description="Every bucket of the period, empty ones included.")


def _totals_out(totals: Totals, *, events: bool = True) -> dict[str, Any]:
    latency = totals.latency
    return {
        "counts": {
            name: totals.counts[name] for name in (COUNTERS if events else MESSAGE_COUNTERS)
        },
        "rates": totals.rates,
        "latency": {
            "count": latency.count,
            "p50_ms": latency.p50_ms,
            "p95_ms": latency.p95_ms,
            "p99_ms": latency.p99_ms,
            "buckets": {
                metric.removeprefix(LATENCY_PREFIX): value
                for metric, value in latency.buckets.items()
            },
        },
    }


@router.get(
    "",
    response={200: StatsOut, 403: ProblemOut, 422: ProblemOut},
    summary="Delivery statistics",
)
def stats_read(
    request: HttpRequest,
    start: Annotated[
        datetime | None, Field(description="Period start (ISO 8601); default `end` - 24 h.")
    ] = None,
    end: Annotated[datetime | None, Field(description="Period end; default now.")] = None,
    grain: Annotated[Grain, Field(description="Bucket size of `series`.")] = "hour",
    channel: Annotated[Channel | None, Field(description="Only this channel.")] = None,
) -> dict[str, Any] | HttpResponse:
    """Counts, rates and event-to-delivery latency for the period (widened to whole
    UTC hours), in total, per channel, and per hour or day. Exact: the figures are
    the messages' own timestamps, counted as they change."""
    require_scope(request, ApiScope.MESSAGES_READ)
    end = end or timezone.now()
    start = start or end - DEFAULT_PERIOD
    errors = []
    moments = {"start": start, "end": end}
    for name, moment in moments.items():
        if timezone.is_naive(moment):
            errors.append(FieldError(pointer=f"/{name}", detail="give a time zone, e.g. Z"))
            continue
        try:  # PostgreSQL refuses offsets beyond ±15:59, which ISO 8601 allows
            moments[name] = moment.astimezone(UTC)
        except OverflowError:
            errors.append(FieldError(pointer=f"/{name}", detail="is out of range"))
    start, end = moments["start"], moments["end"]
    if not errors and start >= end:
        errors.append(FieldError(pointer="/start", detail="must be before end"))
    if not errors and end - start > MAX_SPAN[grain]:
        errors.append(
            FieldError(
                pointer="/start",
                detail=f"a {grain} series covers at most {MAX_SPAN[grain].days} days; "
                f"ask for a shorter period or grain=day",
            )
        )
    if errors:
        return validation_problem(errors)
    report = stats_report(start=start, end=end, grain=grain, channel=channel)
    return {
        "start": report.start,
        "end": report.end,
        "grain": report.grain,
        "totals": _totals_out(report.totals),
        "channels": {
            name: _totals_out(totals, events=False) for name, totals in report.by_channel.items()
        },
        "series": [
            {"start": bucket, "channels": report.series.get(bucket, {})}
            for bucket in report.buckets
        ],
    }
