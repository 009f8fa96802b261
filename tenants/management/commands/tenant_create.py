from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.models import Plan
from tenants.services import ProvisioningError, tenant_create


class Command(BaseCommand):
    help = "Create a tenant: its schema, its domain <slug>.<HERALD_BASE_DOMAIN> and an admin user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--slug", required=True, help="lowercase letters, digits, hyphens")
        parser.add_argument("--name", required=True)
        parser.add_argument("--admin-email", required=True)
        parser.add_argument("--admin-password", help="default: a random password, printed once")
        parser.add_argument("--plan", help="plan name (default: Free)")

    def handle(self, *args: Any, **options: Any) -> None:
        plan = None
        if options["plan"]:
            plan = Plan.objects.filter(name=options["plan"]).first()
            if plan is None:
                names = ", ".join(Plan.objects.values_list("name", flat=True)) or "none yet"
                raise CommandError(f"no plan named {options['plan']!r} (plans: {names})")
        self.stdout.write(f"Creating tenant {options['slug']!r} (schema and migrations)…")
        try:
            created = tenant_create(
                slug=options["slug"],
                name=options["name"],
                admin_email=options["admin_email"],
                admin_password=options["admin_password"],
                plan=plan,
            )
        except ProvisioningError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(self.style.SUCCESS(f"Created tenant {created.tenant.slug}"))
        self.stdout.write(f"  dashboard: http://{created.domain.domain}/admin/")
        self.stdout.write(f"  admin user: {created.admin_username}")
        if created.generated_password:
            self.stdout.write(f"  password: {created.generated_password}  (shown once; not stored)")
