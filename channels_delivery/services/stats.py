"""Folding a tenant's analytics deltas into its hourly rollup, and copying the
result to the public schema for platform staff (channels_delivery.stats reads).

Triggers append every counted change to StatsDelta (migration 0010); the fold
moves all committed deltas into StatsHour in one statement (DELETE … RETURNING
into an upsert), so each delta is counted exactly once however many folds run.
A transaction-scoped advisory lock lets one fold per tenant run at a time,
which keeps the absolute values copied to the public rollup in commit order.
Beat runs ``stats_fold_all`` every few seconds; reads add the unfolded deltas,
so the tenant's own figures never wait for it.
"""

import zlib
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import QuerySet

from channels_delivery.models import StatsDelta
from dashboard.models import TenantStatsHour, TenantStatsTotal
from tenants.db import tenant_connection

FOLD_SQL = """
    WITH moved AS (
        DELETE FROM channels_delivery_statsdelta
        RETURNING hour, channel, provider, metric, amount
    ), summed AS (
        SELECT hour, channel, provider, metric, sum(amount)::bigint AS amount
        FROM moved GROUP BY hour, channel, provider, metric
    ), folded AS (
        INSERT INTO channels_delivery_statshour AS s (hour, channel, provider, metric, value)
        SELECT hour, channel, provider, metric, amount FROM summed
        ORDER BY hour, channel, provider, metric
        ON CONFLICT (hour, channel, provider, metric) DO UPDATE SET value = s.value + EXCLUDED.value
        RETURNING s.hour, s.channel, s.provider, s.metric, s.value
    )
    SELECT f.hour, f.channel, f.provider, f.metric, f.value, summed.amount
    FROM folded f JOIN summed USING (hour, channel, provider, metric)
"""

TOTALS_SQL = f"""
    INSERT INTO {TenantStatsTotal._meta.db_table} AS t (tenant_id, channel, provider, metric, value)
    SELECT %s, channel, provider, metric, sum(amount)::bigint
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])
        AS d (channel, provider, metric, amount)
    GROUP BY channel, provider, metric
    ORDER BY channel, provider, metric
    ON CONFLICT (tenant_id, channel, provider, metric)
        DO UPDATE SET value = t.value + EXCLUDED.value
"""  # noqa: S608 (a model's table name)


def _lock_key(schema_name: str) -> int:
    return zlib.crc32(f"herald:stats-fold:{schema_name}".encode()) - 2**31


@dataclass(frozen=True)
class Folded:
    keys: int  # (hour, channel, provider, metric) rows changed
    skipped: bool = False  # another fold of this tenant was running


def stats_foldable() -> QuerySet[StatsDelta]:
    """What stats_fold folds: the deltas written since the last fold (beat asks
    this first, tenants.sweeps)."""
    return StatsDelta.objects.all()


def stats_fold() -> Folded:
    """Fold the current tenant's deltas and publish the changed hours."""
    tenant = tenant_connection.tenant
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_lock_key(tenant.schema_name)])
        if not cursor.fetchone()[0]:
            return Folded(keys=0, skipped=True)
        cursor.execute(FOLD_SQL)
        rows = cursor.fetchall()
        if not rows:
            return Folded(keys=0)
        TenantStatsHour.objects.bulk_create(
            [
                TenantStatsHour(
                    tenant_id=tenant.pk,
                    hour=hour,
                    channel=channel,
                    provider=provider,
                    metric=metric,
                    value=value,
                )
                for hour, channel, provider, metric, value, _ in sorted(rows)
            ],
            update_conflicts=True,
            unique_fields=["tenant", "hour", "channel", "provider", "metric"],
            update_fields=["value"],
        )
        cursor.execute(
            TOTALS_SQL,
            [
                tenant.pk,
                [row[1] for row in rows],
                [row[2] for row in rows],
                [row[3] for row in rows],
                [row[5] for row in rows],
            ],
        )
    return Folded(keys=len(rows))
