"""Events the sweeper hands to the pipeline are claimed: status ``queued`` and
``dispatched_at``, so that a slow queue is not flooded with the same events
every sweep (rules_engine.services.dispatch)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("rules_engine", "0002_subscriber_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="event",
            name="status",
            field=models.CharField(
                choices=[
                    ("accepted", "Accepted"),
                    ("queued", "Queued for the pipeline"),
                    ("processing", "Processing"),
                    ("processed", "Processed"),
                    ("no_match", "No rule matched"),
                    ("failed", "Failed"),
                ],
                default="accepted",
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="event",
            name="dispatched_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RemoveIndex(model_name="event", name="event_pending_idx"),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(
                condition=models.Q(("status__in", ["accepted", "queued", "processing"])),
                fields=["status", "created_at"],
                name="event_pending_idx",
            ),
        ),
    ]
