"""Pipeline tasks: thin adapters that load ids and call one service (STYLE.md 2)."""

import logging
import uuid

from django.db import DatabaseError

from herald.celery import app
from rules_engine.services.pipeline import event_process as event_process_service

logger = logging.getLogger(__name__)

RETRY = {"autoretry_for": (DatabaseError,), "retry_backoff": 2, "max_retries": 8}


@app.task(name="rules_engine.event_process", **RETRY)
def event_process(event_id: str) -> None:
    event_process_service(event_id=uuid.UUID(event_id))


@app.task(name="rules_engine.event_process_many", **RETRY)
def event_process_many(event_ids: list[str]) -> None:
    for event_id in event_ids:
        event_process_service(event_id=uuid.UUID(event_id))


@app.task(name="rules_engine.events_sweep_all", requires_tenant=False)
def events_sweep_all() -> None:
    """Beat: sweep every tenant's events outbox (see services.sweeper)."""
    from django_tenants.utils import get_public_schema_name, tenant_context

    from rules_engine.services.sweeper import events_sweep
    from tenants.models import Tenant

    for tenant in Tenant.objects.exclude(schema_name=get_public_schema_name()).filter(
        is_active=True
    ):
        with tenant_context(tenant):
            swept = events_sweep()
        if swept:
            logger.info("re-enqueued %s events of %s", swept, tenant.schema_name)
