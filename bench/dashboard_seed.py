"""Seeds the dashboard benchmark's tenant (bench/dashboard.py runs this).

    DATABASE_URL=... .venv/bin/python bench/dashboard_seed.py --messages 1000000 [--reseed]

A tenant ``big`` with a thousand subscribers and ``--messages`` messages, four
per event, spread evenly over the last 30 days in time order (so each
statement's analytics deltas cover a few hours), in a realistic mix of
channels and statuses; delivery attempts for one message in a hundred; the
rollup folded and the tables analysed. Messages already there are kept: a
second run only tops up. Prints ``BENCH_PROGRESS`` lines while it works and one
``BENCH_SETUP {json}`` line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

TENANT = "big"
PASSWORD = "bench-dashboard-password-0123"  # noqa: S105 - a local benchmark's own user
STAFF = "bench-staff"
EVENTS_PER_STATEMENT = 2500  # four messages each: 10,000 messages per INSERT
CHANNELS = ["email"] * 4 + ["in_app"] * 3 + ["webhook"] * 2 + ["sms"]


def _message_fields(rng: random.Random, channel: str, at: Any) -> tuple[str, dict[str, Any]]:
    """A status and its timestamps, as delivery would have left them."""
    roll = rng.random()
    if roll < 0.02:
        return "queued", {}
    if roll < 0.07:
        return "failed", {
            "failed_at": at + timedelta(seconds=30),
            "error": "HTTP 503: upstream unavailable",
        }
    if roll < 0.09 and channel == "email":
        return "bounced", {
            "sent_at": at,
            "failed_at": at + timedelta(minutes=2),
            "error": "550 mailbox unavailable",
        }
    latency = timedelta(milliseconds=rng.lognormvariate(4.5, 0.8))
    fields: dict[str, Any] = {"sent_at": at + latency, "delivered_at": at + latency}
    if channel == "email" and roll > 0.7:
        return "opened", {**fields, "opened_at": at + timedelta(minutes=9)}
    if channel == "in_app" and roll > 0.6:
        return "read", {**fields, "read_at": at + timedelta(minutes=5)}
    return "delivered", fields


def seed(*, messages: int, reseed: bool) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django_tenants.utils import tenant_context

    from channels_delivery.models import DeliveryAttempt, Message, StatsHour
    from channels_delivery.services.stats import stats_fold
    from rules_engine.models import Event, Subscriber
    from tenants.models import Tenant
    from tenants.services import public_tenant_ensure, tenant_create

    public_tenant_ensure(domains=["localhost"])
    if not User.objects.filter(username=STAFF).exists():
        User.objects.create_superuser(username=STAFF, password=PASSWORD)
    tenant = Tenant.objects.filter(slug=TENANT).first()
    if tenant is not None and reseed:
        tenant.delete(force_drop=True)
        tenant = None
    if tenant is None:
        tenant = tenant_create(
            slug=TENANT,
            name="Big Co",
            admin_email="admin@big.example.com",
            admin_password=PASSWORD,
        ).tenant
    with tenant_context(tenant):
        have = Message.objects.count()
        if have < messages:
            _top_up(have=have, wanted=messages)
        stats_fold()
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        return {
            "messages": Message.objects.count(),
            "events": Event.objects.count(),
            "attempts": DeliveryAttempt.objects.count(),
            "rollup_rows": StatsHour.objects.count(),
            "attempted_message": str(
                DeliveryAttempt.objects.order_by("-started_at")
                .values_list("message_id", flat=True)
                .first()
            ),
            "subscriber": Subscriber.objects.order_by("pk").values_list("pk", flat=True).first(),
        }


def _top_up(*, have: int, wanted: int) -> None:
    from django.db import transaction
    from django.utils import timezone

    from channels_delivery.models import DeliveryAttempt, Integration, Message
    from rules_engine.models import Event, Subscriber

    rng = random.Random(7)  # noqa: S311 - a reproducible mix, not a secret
    if Subscriber.objects.count() < 1000:
        Subscriber.objects.bulk_create(
            [
                Subscriber(
                    external_id=f"user-{n}",
                    email=f"user{n}@big.example.com",
                    phone=f"+4477009{n:05d}",
                    name=f"User {n}",
                )
                for n in range(Subscriber.objects.count(), 1000)
            ]
        )
    subscribers = list(Subscriber.objects.all()[:1000])
    sms = Integration.objects.filter(channel="sms").first() or Integration.objects.create(
        channel="sms", provider="http_gateway", name="gateway", config={}
    )
    now = timezone.now()
    start = now - timedelta(days=30)
    todo = wanted - have
    events_needed = (todo + 3) // 4
    step = (now - start) / max(events_needed, 1)
    made = 0
    for first in range(0, events_needed, EVENTS_PER_STATEMENT):
        count = min(EVENTS_PER_STATEMENT, events_needed - first)
        with transaction.atomic():
            events = Event.objects.bulk_create(
                [
                    Event(
                        event_type_key="order.shipped",
                        payload={"order": f"A-{first + n}"},
                        status="processed",
                        created_at=start + step * (first + n),
                        processed_at=start + step * (first + n),
                    )
                    for n in range(count)
                ]
            )
            batch = []
            for event in events:
                for _ in range(min(4, todo - made)):
                    made += 1
                    channel = rng.choice(CHANNELS)
                    status, fields = _message_fields(rng, channel, event.created_at)
                    batch.append(
                        Message(
                            event=event,
                            subscriber=rng.choice(subscribers),
                            channel=channel,
                            status=status,
                            content={"subject": "Order shipped", "text": "On its way"},
                            attempt_count=0 if status == "queued" else 1,
                            integration=sms if channel == "sms" else None,
                            created_at=event.created_at,
                            **fields,
                        )
                    )
            Message.objects.bulk_create(batch)
            DeliveryAttempt.objects.bulk_create(
                [
                    DeliveryAttempt(
                        message=message,
                        provider="smtp" if message.channel == "email" else message.channel,
                        started_at=message.created_at,
                        finished_at=message.created_at,
                        outcome="retryable" if message.error else "accepted",
                        response_status=503 if message.error else 200,
                        response_excerpt="ok",
                        latency_ms=80,
                    )
                    for message in batch[::100]
                    if message.status != "queued"
                ]
            )
        if (first // EVENTS_PER_STATEMENT) % 10 == 0:
            print(f"BENCH_PROGRESS {have + made:,}/{wanted:,} messages", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--reseed", action="store_true")
    arguments = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")
    import django

    django.setup()
    result = seed(messages=arguments.messages, reseed=arguments.reseed)
    print("BENCH_SETUP " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
