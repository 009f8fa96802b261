import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("channels_delivery", "0004_integration"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="seen_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="message",
            name="read_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="message",
            name="archived_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                fields=["subscriber", "channel", "archived_at", "-created_at"],
                name="message_inbox_idx",
            ),
        ),
        migrations.CreateModel(
            name="InboxSettings",
            fields=[
                (
                    "id",
                    models.PositiveSmallIntegerField(
                        default=1, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("secret", models.TextField(editable=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("rotated_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "verbose_name": "inbox settings",
                "verbose_name_plural": "inbox settings",
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("id", 1)), name="inbox_settings_singleton"
                    )
                ],
            },
        ),
    ]
