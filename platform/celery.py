"""The Celery application, tenant-aware.

tenant-schemas-celery puts the sender's schema in every task's headers and
switches the worker's connection to it; ``herald.tasks.HeraldTask`` makes a
task without a tenant fail instead of running in the public schema.
"""

import os
from typing import Any

from celery.signals import task_postrun
from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")

app = CeleryApp("herald", task_cls="herald.tasks:HeraldTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(related_name="tasks")
app.autodiscover_tasks(["herald"], related_name="tasks")


@task_postrun.connect(dispatch_uid="herald-close-old-connections")
def _close_old_connections(**kwargs: Any) -> None:
    """Connections are kept across tasks (CELERY_DB_REUSE_MAX); like after a web
    request, one past DATABASE_CONN_MAX_AGE or left unusable is closed here."""
    from django.db import close_old_connections

    close_old_connections()
