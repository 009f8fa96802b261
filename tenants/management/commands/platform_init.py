from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from tenants.services import plan_get_default, public_tenant_ensure


class Command(BaseCommand):
    help = (
        "Register the public schema and the hostnames of the staff dashboard "
        "(HERALD_BASE_DOMAIN and any --domain). Idempotent: run it after every migrate."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--domain", action="append", default=[], help="another staff hostname (repeatable)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        domains = [settings.HERALD_BASE_DOMAIN, *options["domain"]]
        public_tenant_ensure(domains=domains)
        plan_get_default()
        self.stdout.write(f"Staff dashboard hostnames: {', '.join(dict.fromkeys(domains))}")
