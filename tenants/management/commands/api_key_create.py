from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tenants.models import ApiScope
from tenants.selectors import tenant_get_by_slug
from tenants.services import ProvisioningError, api_key_create


class Command(BaseCommand):
    help = "Issue an API key for a tenant. The token is printed once and never stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scope",
            action="append",
            choices=ApiScope.values,
            help="repeat for several scopes (default: events:write)",
        )
        parser.add_argument("--expires-in-days", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_get_by_slug(slug=options["tenant"])
        if tenant is None:
            raise CommandError(f"no tenant with slug {options['tenant']!r}")
        expires_at = None
        if options["expires_in_days"] is not None:
            expires_at = timezone.now() + timedelta(days=options["expires_in_days"])
        try:
            created = api_key_create(
                tenant=tenant,
                name=options["name"],
                scopes=options["scope"] or [ApiScope.EVENTS_WRITE],
                expires_at=expires_at,
            )
        except ProvisioningError as error:
            raise CommandError(str(error)) from None
        key = created.api_key
        self.stdout.write(self.style.SUCCESS(f"Created key {key.name!r} (id {key.pk})"))
        self.stdout.write(f"  scopes: {', '.join(key.scopes)}")
        self.stdout.write(f"  token: {created.token}")
        self.stdout.write("  Store it now: Herald keeps only its hash and can not show it again.")
