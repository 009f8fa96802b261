from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("channels_delivery", "0008_callbacks_rate_limit_slow_lane"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="deliveryattempt",
            index=models.Index(fields=["provider_message_id"], name="attempt_provider_msg_id_idx"),
        ),
    ]
