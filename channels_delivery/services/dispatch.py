"""Handing messages to the delivery workers: the messages table is the outbox.

``messages_enqueue`` publishes message ids once the current transaction
commits (STYLE.md 3), one ``channels_delivery.messages_deliver`` task per 100,
with the tenant's schema in the headers. A short wait (a retry due within
HERALD_DELIVERY_COUNTDOWN_MAX_SECONDS) rides on a Celery countdown; a longer
one waits in the row.

What a publish can lose is still in the table: ``messages_sweep`` (beat, every
15 s) claims queued messages that are due (``send_after`` and
``next_attempt_at`` passed) and were not touched for
HERALD_DELIVERY_GRACE_SECONDS — a retry whose time came, a scheduled send, a
publish that was lost — and messages left ``sending`` longer than
HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS (their worker died), and publishes
them. Claims use ``FOR UPDATE SKIP LOCKED``; delivery claims each message
again, so one published twice is sent once.
"""

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from channels_delivery.models import Message, MessageStatus
from channels_delivery.retry import max_attempts
from channels_delivery.services.callbacks import message_callbacks_emit_many
from tenants.db import tenant_connection

logger = logging.getLogger(__name__)

PUBLISH_CHUNK = 100
CLAIM_LIMIT = 1000
SENDING_TIMED_OUT = "the delivery worker stopped while sending; trying again"
SENDING_GAVE_UP = "the delivery worker stopped while sending, on every attempt; given up"


# The slow lane: webhook deliveries owed to an endpoint that answers slowly or
# not at all, served by their own workers (`celery worker -Q delivery_slow`).
SLOW_LANE_QUEUE = "delivery_slow"


def publish_to_delivery(
    schema_name: str, chunk: list[str], countdown: float = 0.0, slow_lane: bool = False
) -> None:
    from channels_delivery.tasks import messages_deliver

    options: dict[str, object] = {"headers": {"_schema_name": schema_name}}
    if countdown > 0:
        options["countdown"] = countdown
    if slow_lane:
        options["queue"] = SLOW_LANE_QUEUE
        options["kwargs"] = {"slow_lane": True}
    messages_deliver.apply_async(args=[chunk], **options)


def _publish_safely(schema_name: str, chunk: list[str], countdown: float, slow_lane: bool) -> None:
    try:
        publish_to_delivery(schema_name, chunk, countdown, slow_lane)
    except Exception:
        # Still queued in the table: the sweeper publishes them after the grace period.
        logger.exception(
            "publishing %s messages of %s for delivery failed; the sweeper will "
            "publish them after %s s",
            len(chunk),
            schema_name,
            settings.HERALD_DELIVERY_GRACE_SECONDS,
        )


_gathering = threading.local()


@contextmanager
def messages_enqueue_gathered() -> Iterator[None]:
    """Publish the messages enqueued (and committed) inside the block together,
    when it ends: a pipeline task processes up to 100 events, each in its own
    transaction, and their messages then go out as one delivery task per 100
    rather than one per event. What a crash inside the block loses is still
    queued in the table: the sweeper publishes it after the grace period."""
    if getattr(_gathering, "pending", None) is not None:
        yield  # already gathering: the outer block publishes
        return
    pending: dict[tuple[str, float, bool], list[str]] = {}
    _gathering.pending = pending
    try:
        yield
    finally:
        _gathering.pending = None
        for (schema_name, countdown, slow_lane), ids in pending.items():
            for start in range(0, len(ids), PUBLISH_CHUNK):
                chunk = ids[start : start + PUBLISH_CHUNK]
                _publish_safely(schema_name, chunk, countdown, slow_lane)


def _publish_or_gather(
    schema_name: str, chunk: list[str], countdown: float, slow_lane: bool
) -> None:
    pending = getattr(_gathering, "pending", None)
    if pending is None:
        _publish_safely(schema_name, chunk, countdown, slow_lane)
    else:
        pending.setdefault((schema_name, countdown, slow_lane), []).extend(chunk)


def messages_enqueue(
    *, message_ids: Iterable[uuid.UUID | str], countdown: float = 0.0, slow_lane: bool = False
) -> None:
    """Publish these messages for delivery once the current transaction commits
    (at once outside one), ``countdown`` seconds later, to the slow lane if asked."""
    ids = [str(message_id) for message_id in message_ids]
    if not ids:
        return
    schema_name = tenant_connection.schema_name
    for start in range(0, len(ids), PUBLISH_CHUNK):
        chunk = ids[start : start + PUBLISH_CHUNK]
        transaction.on_commit(
            lambda chunk=chunk: _publish_or_gather(schema_name, chunk, countdown, slow_lane),  # type: ignore[misc]
            robust=True,
        )


def messages_due(*, now: datetime) -> Q:
    """Queued messages whose time has come: no ``send_after`` or
    ``next_attempt_at`` in the future."""
    return (
        Q(status=MessageStatus.QUEUED)
        & (Q(send_after__isnull=True) | Q(send_after__lte=now))
        & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    )


def messages_sweepable(*, now: datetime) -> tuple[QuerySet[Message], QuerySet[Message]]:
    """What messages_sweep claims at ``now``: due messages nobody published within
    the grace period, and messages stuck in ``sending`` past its timeout. Beat
    asks these first, so a tenant with neither costs one query
    (tenants.sweeps)."""
    grace = timedelta(seconds=settings.HERALD_DELIVERY_GRACE_SECONDS)
    sending_timeout = timedelta(seconds=settings.HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS)
    due = Message.objects.filter(messages_due(now=now), updated_at__lt=now - grace)
    stuck = Message.objects.filter(
        status=MessageStatus.SENDING, updated_at__lt=now - sending_timeout
    )
    return due, stuck


def messages_sweep(*, now: datetime | None = None, limit: int = CLAIM_LIMIT) -> int:
    """Claim and publish up to ``limit`` due messages of the current schema that
    nobody published within the grace period, and as many stuck in ``sending``
    (failed instead once out of attempts); returns how many were published."""
    now = now or timezone.now()
    sweepable_due, sweepable_stuck = messages_sweepable(now=now)
    with transaction.atomic():
        due = list(
            sweepable_due.order_by("created_at")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        # Touched now, so the next sweep leaves them to the task it published.
        Message.objects.filter(pk__in=due).update(updated_at=now)
        stuck = list(
            sweepable_stuck.order_by("updated_at")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        # The guarded transitions sending -> failed | queued, in bulk: the WHERE
        # clauses are the check (services.delivery.TRANSITIONS allows both). Each
        # claim counted an attempt, so a message that kills its worker every
        # time runs out of them.
        stranded = Message.objects.filter(pk__in=stuck, status=MessageStatus.SENDING)
        out_of_attempts = list(
            stranded.filter(attempt_count__gte=max_attempts()).values_list("id", flat=True)
        )
        given_up = stranded.filter(pk__in=out_of_attempts).update(
            status=MessageStatus.FAILED,
            next_attempt_at=None,
            failed_at=now,
            error=SENDING_GAVE_UP,
            updated_at=now,
        )
        requeued = list(
            stranded.filter(attempt_count__lt=max_attempts()).values_list("id", flat=True)
        )
        stranded.filter(pk__in=requeued).update(
            status=MessageStatus.QUEUED,
            next_attempt_at=None,
            error=SENDING_TIMED_OUT,
            updated_at=now,
        )
        if stuck:
            logger.warning(
                "%s messages were stuck sending: %s queued again, %s failed",
                len(stuck),
                len(requeued),
                given_up,
            )
        message_callbacks_emit_many(message_ids=out_of_attempts, status=MessageStatus.FAILED)
        messages_enqueue(message_ids=[*due, *requeued])
    return len(due) + len(requeued)
