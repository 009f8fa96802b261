from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.selectors import api_key_list, tenant_get_by_slug


class Command(BaseCommand):
    help = "List a tenant's API keys (prefixes only; tokens are never stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="tenant slug")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_get_by_slug(slug=options["tenant"])
        if tenant is None:
            raise CommandError(f"no tenant with slug {options['tenant']!r}")
        for key in api_key_list(tenant=tenant):
            state = "revoked" if key.revoked_at else ("expired" if key.is_expired() else "active")
            used = key.last_used_at.isoformat() if key.last_used_at else "never"
            self.stdout.write(
                f"{key.pk:>6}  {key.prefix}…  {state:<8} {','.join(key.scopes):<40} "
                f"{key.name}  (last used {used})"
            )
