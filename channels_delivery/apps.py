import importlib
import pkgutil

from django.apps import AppConfig


class ChannelsDeliveryConfig(AppConfig):
    name = "channels_delivery"
    verbose_name = "Channels delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Every provider module registers itself on import (STYLE.md 5); walking
        # the package means a new module needs no line here.
        from channels_delivery import providers

        for module in pkgutil.iter_modules(providers.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{providers.__name__}.{module.name}")
