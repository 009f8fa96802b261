"""Delivery tasks: thin adapters that load ids and call one service (STYLE.md 2).

All of them go to the "delivery" queue (CELERY_TASK_ROUTES, channels_delivery.*). A message id
that is not a UUID is logged and skipped, never retried.
"""

import logging
import uuid

from django.db import DatabaseError

from channels_delivery.services.callbacks import callback_deliver
from channels_delivery.services.delivery import messages_deliver_many
from herald.celery import app
from tenants.models import Tenant
from tenants.sweeps import tenants_each

logger = logging.getLogger(__name__)

RETRY = {"autoretry_for": (DatabaseError,), "retry_backoff": 2, "max_retries": 8}


def _uuids(raw_ids: list[str], *, what: str) -> list[uuid.UUID]:
    ids = []
    for raw in raw_ids:
        try:
            ids.append(uuid.UUID(str(raw)))
        except ValueError:
            logger.error("got %r, which is not a %s id; skipped", raw, what)
    return ids


@app.task(name="channels_delivery.messages_deliver", **RETRY)
def messages_deliver(message_ids: list[str], slow_lane: bool = False) -> None:
    """``slow_lane``: published to the delivery_slow queue (services.dispatch)."""
    ids = _uuids(message_ids, what="message")
    if ids:
        messages_deliver_many(message_ids=ids, slow_lane=slow_lane)


@app.task(name="channels_delivery.callbacks_deliver", **RETRY)
def callbacks_deliver(callback_ids: list[str]) -> None:
    for callback_id in _uuids(callback_ids, what="status callback"):
        callback_deliver(callback_id=callback_id)


@app.task(name="channels_delivery.messages_sweep_all", requires_tenant=False)
def messages_sweep_all() -> None:
    """Beat: publish every tenant's due and stranded messages (services.dispatch)
    and status callbacks (services.callbacks)."""
    from channels_delivery.services.callbacks import callbacks_sweep, callbacks_sweepable
    from channels_delivery.services.dispatch import messages_sweep, messages_sweepable

    def sweep(tenant: Tenant) -> None:
        swept = messages_sweep() + callbacks_sweep()
        if swept:
            logger.info("published %s due messages and callbacks of %s", swept, tenant.schema_name)

    tenants_each(
        work=sweep,
        what="sweeping the messages",
        pending=lambda now: [*messages_sweepable(now=now), *callbacks_sweepable(now=now)],
    )


@app.task(name="channels_delivery.stats_fold_all", requires_tenant=False)
def stats_fold_all() -> None:
    """Beat: fold every tenant's analytics deltas and publish them for staff
    (services.stats). A suspended tenant's late changes are folded too."""
    from channels_delivery.services.stats import stats_fold, stats_foldable

    tenants_each(
        work=lambda tenant: stats_fold(),
        what="folding the analytics",
        pending=lambda now: [stats_foldable()],
        include_suspended=True,
    )
