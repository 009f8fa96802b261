# The tenant's VAPID key pair for web push (a singleton, like InboxSettings).

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("channels_delivery", "0006_message_delivery"),
    ]

    operations = [
        migrations.CreateModel(
            name="PushSettings",
            fields=[
                (
                    "id",
                    models.PositiveSmallIntegerField(
                        default=1, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("private_key", models.TextField(editable=False)),
                ("public_key", models.CharField(editable=False, max_length=100)),
                ("contact", models.CharField(max_length=255)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "verbose_name": "push settings",
                "verbose_name_plural": "push settings",
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("id", 1)), name="push_settings_singleton"
                    )
                ],
            },
        ),
    ]
