"""The `herald` command: Django's manage.py under an operator-friendly name."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
