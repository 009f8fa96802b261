"""Every tenant schema's roles follow its migrations.

django-tenants sends ``schema_migrated`` once per schema after ``migrate_schemas``
(and tenant creation) migrated it, whether or not anything was applied, so
existing tenants get the roles (and new permissions in them) on the next migrate.
"""

from typing import Any

from django.dispatch import receiver
from django_tenants.signals import schema_migrated
from django_tenants.utils import get_public_schema_name, schema_context

from dashboard.roles import roles_ensure


@receiver(schema_migrated, dispatch_uid="dashboard.roles_after_migrate")
def roles_after_migrate(sender: Any, *, schema_name: str, **kwargs: Any) -> None:
    if schema_name == get_public_schema_name():
        return
    with schema_context(schema_name):
        roles_ensure()
