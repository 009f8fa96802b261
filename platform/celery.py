"""The Celery application, tenant-aware.

tenant-schemas-celery puts the sender's schema in every task's headers and
switches the worker's connection to it; ``herald.tasks.HeraldTask`` makes a
task without a tenant fail instead of running in the public schema.
"""

import os

from tenant_schemas_celery.app import CeleryApp

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")

app = CeleryApp("herald", task_cls="herald.tasks:HeraldTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(related_name="tasks")
app.autodiscover_tasks(["herald"], related_name="tasks")
