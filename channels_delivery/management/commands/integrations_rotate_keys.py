from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import get_public_schema_name, tenant_context

from channels_delivery.crypto import secrets_rotate
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Re-encrypt every tenant's integration secrets with the first key of "
        "HERALD_ENCRYPTION_KEYS; run it before removing an old key from the list."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        rotated = unreadable = 0
        # Suspended tenants too: their secrets must survive the old key's removal.
        tenants = Tenant.objects.exclude(schema_name=get_public_schema_name()).order_by("slug")
        for tenant in tenants:
            with tenant_context(tenant):
                counts = secrets_rotate()
            rotated += counts.rotated
            unreadable += counts.unreadable
            line = f"{tenant.slug}: {counts.rotated} rotated"
            if counts.unreadable:
                line += f", {counts.unreadable} UNREADABLE (no configured key decrypts them)"
            self.stdout.write(line)
        self.stdout.write(f"total: {rotated} rotated, {unreadable} unreadable")
        if unreadable:
            # Exit non-zero so a rotation script stops before the old key is removed.
            raise CommandError(
                f"{unreadable} integrations have secrets no configured key decrypts; "
                "do not remove any key until they are re-entered"
            )
