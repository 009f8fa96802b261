"""``manage.py herald_outbox``: what waits for Herald, and sending it.

herald_outbox list [--rejected]     the waiting events, oldest first
herald_outbox flush [--all]         send what is due now (--all: even if not due)
herald_outbox run [--interval 5]    flush every few seconds until stopped
herald_outbox retry ID… | --rejected    make events due again (after a fix)
"""

import signal
import threading
from argparse import ArgumentParser
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from herald_client.django.models import OutboxEvent
from herald_client.django.outbox import FlushResult, herald, outbox_flush, outbox_retry


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


class Command(BaseCommand):
    help = "List, send or retry the events waiting for Herald in the outbox."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="the outbox's database")
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="the waiting events, oldest first")
        listing.add_argument("--rejected", action="store_true", help="only those Herald refused")
        listing.add_argument("--limit", type=int, default=50)
        flush = actions.add_parser("flush", help="send the events that are due")
        flush.add_argument("--all", action="store_true", help="also those waiting for a retry")
        run = actions.add_parser("run", help="flush every --interval seconds until stopped")
        run.add_argument("--interval", type=float, default=5.0)
        retry = actions.add_parser("retry", help="make events due now")
        retry.add_argument("ids", nargs="*", help="outbox ids (see list)")
        retry.add_argument("--rejected", action="store_true", help="every refused event")

    def handle(self, *args: Any, **options: Any) -> None:
        using: str = options["database"]
        action: str = options["action"]
        if action in {"flush", "run"}:
            try:
                herald()
            except ValueError as error:  # no API key
                raise CommandError(str(error)) from error
        if action == "list":
            self.list(using, rejected=options["rejected"], limit=options["limit"])
        elif action == "flush":
            self.report(outbox_flush(using=using, everything=options["all"]))
        elif action == "run":
            self.run(using, interval=options["interval"])
        else:
            if not options["ids"] and not options["rejected"]:
                raise CommandError("name the outbox ids to retry, or --rejected")
            count = outbox_retry(options["ids"], using=using, rejected=options["rejected"])
            self.stdout.write(f"{count} event(s) due now")

    def list(self, using: str, *, rejected: bool, limit: int) -> None:
        rows = OutboxEvent.objects.using(using).all()
        if rejected:
            rows = rows.exclude(rejected_at=None)
        total = rows.count()
        now = timezone.now()
        refused = " (refused by Herald)" if rejected else ""
        self.stdout.write(f"{total} event(s) waiting{refused}")
        for row in rows.order_by("created_at")[:limit]:
            if row.rejected_at is not None:
                state = "REJECTED"
            elif row.next_attempt_at <= now:
                state = "due"
            else:
                state = f"next in {_age((row.next_attempt_at - now).total_seconds())}"
            age = _age((now - row.created_at).total_seconds())
            line = f"{row.id}  {row.event:<30} age {age:>4}  tries {row.attempts:<3} {state}"
            self.stdout.write(line)
            for line in row.last_error.splitlines()[:4]:  # the error and its first fields
                self.stdout.write(f"    {line}")
        if total > limit:
            self.stdout.write(f"… and {total - limit} more")

    def report(self, result: FlushResult) -> None:
        self.stdout.write(
            f"sent {result.sent}, retrying later {result.retrying}, rejected {result.rejected}"
        )
        for error in result.errors[:10]:
            self.stderr.write(f"  {error.splitlines()[0]}")

    def run(self, using: str, *, interval: float) -> None:
        if interval <= 0:
            raise CommandError("--interval must be more than 0 seconds")
        stop = threading.Event()

        def stopping(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        self.stdout.write(f"sending the outbox to Herald every {interval:g} s; Ctrl-C stops")
        while not stop.is_set():
            try:
                result = outbox_flush(using=using)
            except Exception as error:  # the database restarting: try again next round
                self.stderr.write(f"flushing the outbox failed: {error!r}")
            else:
                if result.sent or result.retrying or result.rejected:
                    self.report(result)
            stop.wait(interval)
