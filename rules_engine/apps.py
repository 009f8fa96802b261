from django.apps import AppConfig


class RulesEngineConfig(AppConfig):
    name = "rules_engine"
    verbose_name = "Rules engine"
    default_auto_field = "django.db.models.BigAutoField"
