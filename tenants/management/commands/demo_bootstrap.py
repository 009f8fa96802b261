import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from tenants.demo import demo_ensure


class Command(BaseCommand):
    help = "Create (or reuse) the demo tenant, its admin, a staff user and an API key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        demo = demo_ensure()
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "tenant": demo.tenant.slug,
                        "admin_username": demo.admin_username,
                        "admin_password": demo.admin_password,
                        "staff_username": demo.staff_username,
                        "staff_password": demo.staff_password,
                        "api_key": demo.api_key,
                        "notes": demo.notes,
                    }
                )
            )
            return
        for note in demo.notes:
            self.stdout.write(f"- {note}")
