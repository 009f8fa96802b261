from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Keeps every tenant schema's roles in step with the code on migrate.
        from dashboard import signals  # noqa: F401
