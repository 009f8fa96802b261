from django.apps import AppConfig


class ChannelsDeliveryConfig(AppConfig):
    name = "channels_delivery"
    verbose_name = "Channels delivery"
    default_auto_field = "django.db.models.BigAutoField"
