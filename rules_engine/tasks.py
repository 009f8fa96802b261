"""Pipeline tasks: thin adapters that load ids and call one service (STYLE.md 2)."""

import logging
import uuid

from django.db import DatabaseError
from django.utils import timezone

from herald.celery import app
from rules_engine.services.digests import FLUSH_LIMIT, digests_claimable, digests_flush_due
from rules_engine.services.pipeline import event_process as event_process_service
from tenants.models import Tenant
from tenants.sweeps import tenants_each

logger = logging.getLogger(__name__)

RETRY = {"autoretry_for": (DatabaseError,), "retry_backoff": 2, "max_retries": 8}


@app.task(name="rules_engine.event_process", **RETRY)
def event_process(event_id: str) -> None:
    event_process_service(event_id=uuid.UUID(event_id))


@app.task(name="rules_engine.event_process_many", **RETRY)
def event_process_many(event_ids: list[str]) -> None:
    from channels_delivery.services.dispatch import messages_enqueue_gathered

    # The events' messages go to delivery together, once all of them are processed.
    with messages_enqueue_gathered():
        for event_id in event_ids:
            event_process_service(event_id=uuid.UUID(event_id))


@app.task(name="rules_engine.events_sweep_all", requires_tenant=False)
def events_sweep_all() -> None:
    """Beat: sweep every tenant's events outbox (see services.sweeper)."""
    from rules_engine.services.sweeper import events_sweep, events_sweepable

    def sweep(tenant: Tenant) -> None:
        swept = events_sweep()
        if swept:
            logger.info("re-enqueued %s events of %s", swept, tenant.schema_name)

    tenants_each(
        work=sweep, what="sweeping the events", pending=lambda now: [events_sweepable(now=now)]
    )


# Claims per tenant per beat run while each comes back full (the backlog of a large
# fan-out drains at this many claims per 15 s; two overlapping runs are safe).
DIGEST_CLAIMS_PER_RUN = 10


@app.task(name="rules_engine.digests_flush_all", requires_tenant=False)
def digests_flush_all() -> None:
    """Beat: send every tenant's digests whose window has closed (see services.digests)."""

    def flush(tenant: Tenant) -> None:
        for _ in range(DIGEST_CLAIMS_PER_RUN):
            report = digests_flush_due(now=timezone.now())
            if report.sent:
                logger.info(
                    "sent %s digests (%s messages) of %s",
                    report.sent,
                    report.messages,
                    tenant.schema_name,
                )
            if report.claimed < FLUSH_LIMIT:
                break

    tenants_each(
        work=flush, what="sending the digests", pending=lambda now: digests_claimable(now=now)
    )
