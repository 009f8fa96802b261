from django.apps import AppConfig
from django.core import checks
from django.utils.module_loading import autodiscover_modules


class HeraldConfig(AppConfig):
    name = "herald_client.django"
    label = "herald_client"
    verbose_name = "Herald"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from herald_client.django import mapping
        from herald_client.django.conf import settings_check

        checks.register(settings_check)
        # Every installed app's herald_events module defines its ModelEvents.
        autodiscover_modules("herald_events")
        mapping.connect_all()
