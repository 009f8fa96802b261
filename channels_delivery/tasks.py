"""Delivery tasks: thin adapters that load ids and call one service (STYLE.md 2).

All of them go to the "delivery" queue (CELERY_TASK_ROUTES, channels_delivery.*). A message id
that is not a UUID is logged and skipped, never retried.
"""

import logging
import uuid

from django.db import DatabaseError

from channels_delivery.services.delivery import message_deliver
from herald.celery import app

logger = logging.getLogger(__name__)

RETRY = {"autoretry_for": (DatabaseError,), "retry_backoff": 2, "max_retries": 8}


@app.task(name="channels_delivery.messages_deliver", **RETRY)
def messages_deliver(message_ids: list[str]) -> None:
    for raw in message_ids:
        try:
            message_id = uuid.UUID(str(raw))
        except ValueError:
            logger.error("messages_deliver got %r, which is not a message id; skipped", raw)
            continue
        message_deliver(message_id=message_id)


@app.task(name="channels_delivery.messages_sweep_all", requires_tenant=False)
def messages_sweep_all() -> None:
    """Beat: publish every tenant's due and stranded messages (services.dispatch)."""
    from django_tenants.utils import get_public_schema_name, tenant_context

    from channels_delivery.services.dispatch import messages_sweep
    from tenants.models import Tenant

    for tenant in Tenant.objects.exclude(schema_name=get_public_schema_name()).filter(
        is_active=True
    ):
        try:
            with tenant_context(tenant):
                swept = messages_sweep()
        except Exception:  # one tenant's failure must not hold up the others' messages
            logger.exception("sweeping the messages of %s failed", tenant.schema_name)
            continue
        if swept:
            logger.info("published %s due messages of %s", swept, tenant.schema_name)
