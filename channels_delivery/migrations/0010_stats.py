# ruff: noqa: S608 (SQL built from this file's constants only)
"""The analytics rollup: Message gets opened_at and clicked_at, and triggers on
Message and Event write every change of a counted column to StatsDelta.

The triggers are statement-level with transition tables, so a bulk update of a
thousand messages adds one aggregated INSERT, and an update that changes no
counted column (a claim, a retry) adds nothing. Deleting rows is not counted:
the rollup keeps what happened after retention removes the messages.

The SQL is frozen here (not imported from the app) as a migration must be.
"""

from django.db import migrations, models

# Metric name -> the Message column whose time puts a message in that hour.
COUNTED = {
    "created": "created_at",
    "sent": "sent_at",
    "delivered": "delivered_at",
    "failed": "failed_at",
    "opened": "opened_at",
    "clicked": "clicked_at",
    "read": "read_at",
}
# Upper bounds (ms) of the event-to-delivery latency histogram; the last bucket is "inf".
LATENCY_BOUNDS_MS = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 1800000)
COLUMNS = "id, channel, integration_id, event_id, " + ", ".join(COUNTED.values())


def _count(ctes: str) -> str:
    """INSERT into StatsDelta what the rows of CTE ``r`` (COLUMNS and a ``sign``,
    +1 for a row's new values and -1 for its old ones) add to each metric."""
    values = ", ".join(f"('{metric}', r.{column})" for metric, column in COUNTED.items())
    buckets = " ".join(
        f"WHEN l.ms <= {bound} THEN 'latency_le_{bound}'" for bound in LATENCY_BOUNDS_MS
    )
    return f"""
        WITH {ctes}
        INSERT INTO channels_delivery_statsdelta (hour, channel, provider, metric, amount)
        SELECT d.hour, d.channel, d.provider, d.metric, sum(d.sign)
        FROM (
            SELECT date_trunc('hour', v.at, 'UTC') AS hour, r.channel,
                   coalesce(i.provider, '') AS provider, v.metric, r.sign
            FROM r
            LEFT JOIN channels_delivery_integration i ON i.id = r.integration_id
            CROSS JOIN LATERAL (VALUES {values}) AS v (metric, at)
            WHERE v.at IS NOT NULL
            UNION ALL
            SELECT date_trunc('hour', r.delivered_at, 'UTC'), r.channel,
                   coalesce(i.provider, ''), CASE {buckets} ELSE 'latency_le_inf' END, r.sign
            FROM r
            JOIN rules_engine_event e ON e.id = r.event_id
            CROSS JOIN LATERAL (
                SELECT extract(epoch FROM r.delivered_at - e.created_at) * 1000 AS ms
            ) AS l
            LEFT JOIN channels_delivery_integration i ON i.id = r.integration_id
            WHERE r.delivered_at IS NOT NULL
        ) AS d
        GROUP BY d.hour, d.channel, d.provider, d.metric
        HAVING sum(d.sign) <> 0;"""


_CHANGED = " OR ".join(
    f"o.{column} IS DISTINCT FROM n.{column}"
    for column in ("channel", "integration_id", "event_id", *COUNTED.values())
)
INSERTED = f"r AS (SELECT {COLUMNS}, 1 AS sign FROM new_rows)"
# Only rows whose counted columns changed: a claim or a retry adds nothing.
UPDATED = (
    f"changed AS (SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE {_CHANGED}), "
    f"r AS (SELECT {COLUMNS}, 1 AS sign FROM new_rows WHERE id IN (SELECT id FROM changed) "
    f"UNION ALL SELECT {COLUMNS}, -1 FROM old_rows WHERE id IN (SELECT id FROM changed))"
)

FORWARD = f"""
CREATE FUNCTION herald_message_stats() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN {_count(INSERTED)}
    ELSE {_count(UPDATED)}
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER message_stats_insert AFTER INSERT ON channels_delivery_message
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_message_stats();
CREATE TRIGGER message_stats_update AFTER UPDATE ON channels_delivery_message
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald_message_stats();

CREATE FUNCTION herald_event_stats() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO channels_delivery_statsdelta (hour, channel, provider, metric, amount)
    SELECT date_trunc('hour', created_at, 'UTC'), '', '', 'events', count(*)
    FROM new_rows GROUP BY 1;
    RETURN NULL;
END $$;

CREATE TRIGGER event_stats_insert AFTER INSERT ON rules_engine_event
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_event_stats();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS event_stats_insert ON rules_engine_event;
DROP FUNCTION IF EXISTS herald_event_stats();
DROP TRIGGER IF EXISTS message_stats_update ON channels_delivery_message;
DROP TRIGGER IF EXISTS message_stats_insert ON channels_delivery_message;
DROP FUNCTION IF EXISTS herald_message_stats();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("channels_delivery", "0009_attempt_provider_message_id_index"),
        ("rules_engine", "0005_digest_batches"),
    ]

    operations = [
        migrations.CreateModel(
            name="StatsDelta",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("hour", models.DateTimeField()),
                ("channel", models.CharField(blank=True, max_length=20)),
                ("provider", models.CharField(blank=True, max_length=50)),
                ("metric", models.CharField(max_length=30)),
                ("amount", models.BigIntegerField()),
            ],
            options={
                "db_table": "channels_delivery_statsdelta",
            },
        ),
        migrations.AddField(
            model_name="message",
            name="clicked_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="message",
            name="opened_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="StatsHour",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("hour", models.DateTimeField()),
                ("channel", models.CharField(blank=True, max_length=20)),
                ("provider", models.CharField(blank=True, max_length=50)),
                ("metric", models.CharField(max_length=30)),
                ("value", models.BigIntegerField(default=0)),
            ],
            options={
                "db_table": "channels_delivery_statshour",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("hour", "channel", "provider", "metric"), name="statshour_key"
                    )
                ],
            },
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
