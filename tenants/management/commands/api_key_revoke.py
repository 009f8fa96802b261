from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.selectors import api_key_find, tenant_get_by_slug
from tenants.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key, by id or prefix. Every process refuses it within 5 seconds."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("key", help="key id or prefix (hk_test_…)")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_get_by_slug(slug=options["tenant"])
        if tenant is None:
            raise CommandError(f"no tenant with slug {options['tenant']!r}")
        api_key = api_key_find(tenant=tenant, identifier=options["key"])
        if api_key is None:
            raise CommandError(f"tenant {tenant.slug} has no key {options['key']!r}")
        was_revoked = api_key.revoked_at is not None
        api_key_revoke(api_key=api_key)
        if was_revoked:
            self.stdout.write(f"Key {api_key.prefix}… was already revoked.")
        else:
            self.stdout.write(self.style.SUCCESS(f"Revoked key {api_key.prefix}…"))
