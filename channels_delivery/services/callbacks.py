"""Status callbacks: Herald telling the tenant's own systems what became of its
messages and endpoints, through the tenant's webhook endpoints.

An endpoint subscribes by listing callback types (``CallbackType``:
``message.sent``, ``message.delivered``, ``message.failed``, ``message.read``,
``endpoint.disabled``) in its ``event_types``; an endpoint with an empty list
receives every *event* type but no callbacks, so nobody is flooded by surprise.

``callbacks_emit`` writes one ``StatusCallback`` row per subscribed endpoint in
the caller's transaction (the row is the outbox: a status change and its
callback commit together or not at all) and publishes the ids after commit.
``callback_deliver`` sends one, signed the Standard Webhooks way with the
callback's id as ``webhook-id``, through the ``webhook`` provider and the SSRF
guard, and applies the same retry policy as messages (channels_delivery.retry);
the delivery sweeper publishes retries that are due and callbacks whose publish
or worker was lost.

Which endpoints subscribe to what is read once per HERALD_CALLBACK_CACHE_SECONDS
per process and schema (a status change must not cost a query when nobody
listens); a change made in this process is seen at once.
"""

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from channels_delivery.catalogue import Channel
from channels_delivery.crypto import SecretsUnreadable
from channels_delivery.models import (
    CallbackStatus,
    CallbackType,
    Message,
    MessageStatus,
    StatusCallback,
    WebhookEndpoint,
)
from channels_delivery.providers.base import (
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_get,
)
from channels_delivery.retry import Action, decide, max_attempts
from channels_delivery.services.webhooks import endpoint_address, endpoint_delivery_record
from tenants.db import tenant_connection

logger = logging.getLogger(__name__)

# The message statuses that have a callback type.
MESSAGE_CALLBACKS: Mapping[str, str] = {
    MessageStatus.SENT: CallbackType.MESSAGE_SENT,
    MessageStatus.DELIVERED: CallbackType.MESSAGE_DELIVERED,
    MessageStatus.FAILED: CallbackType.MESSAGE_FAILED,
    # An email the ESP reports bounced failed too; data.status says "bounced".
    MessageStatus.BOUNCED: CallbackType.MESSAGE_FAILED,
    MessageStatus.READ: CallbackType.MESSAGE_READ,
}
CALLBACK_TYPES = frozenset(CallbackType.values)
PUBLISH_CHUNK = 100
ERROR_MAX = StatusCallback._meta.get_field("error").max_length or 500
CALLBACK_GAVE_UP = "the delivery worker stopped while sending, on every attempt; given up"

# schema -> (read at, monotonic; callback type -> subscribed endpoint ids)
_subscriptions: dict[str, tuple[float, dict[str, list[int]]]] = {}


def callback_subscriptions_forget(schema_name: str | None = None) -> None:
    """Read the subscriptions again on next use (all schemas when None)."""
    if schema_name is None:
        _subscriptions.clear()
    else:
        _subscriptions.pop(schema_name, None)


def _endpoint_changed(**kwargs: Any) -> None:
    callback_subscriptions_forget(tenant_connection.schema_name)


# Whoever saves an endpoint (a service, the admin), this process sees it at once.
post_save.connect(_endpoint_changed, sender=WebhookEndpoint, dispatch_uid="callbacks-save")
post_delete.connect(_endpoint_changed, sender=WebhookEndpoint, dispatch_uid="callbacks-delete")


def _subscribed(callback_type: str) -> list[int]:
    schema_name = tenant_connection.schema_name
    cached = _subscriptions.get(schema_name)
    now = time.monotonic()
    if cached is None or now - cached[0] > settings.HERALD_CALLBACK_CACHE_SECONDS:
        by_type: dict[str, list[int]] = {}
        rows = WebhookEndpoint.objects.filter(enabled=True).values_list("pk", "event_types")
        for pk, event_types in rows.order_by("created_at", "pk"):
            for listed in event_types or ():
                if listed in CALLBACK_TYPES:
                    by_type.setdefault(listed, []).append(pk)
        cached = _subscriptions[schema_name] = (now, by_type)
    return cached[1].get(callback_type, [])


def _stamp(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def message_callback_data(message: Message) -> dict[str, Any]:
    """What a ``message.*`` callback says about the message."""
    subscriber = message.subscriber if message.subscriber_id else None
    return {
        "message_id": str(message.id),
        "event_id": str(message.event_id),
        "subscriber_id": subscriber.external_id if subscriber else None,
        "channel": message.channel,
        "status": message.status,
        "attempt_count": message.attempt_count,
        "error": message.error,
        "sent_at": _stamp(message.sent_at),
        "delivered_at": _stamp(message.delivered_at),
        "failed_at": _stamp(message.failed_at),
        "read_at": _stamp(message.read_at),
    }


def callbacks_emit(
    *,
    callback_type: str,
    data: Mapping[str, Any] | None = None,
    message: Message | None = None,
    exclude_endpoint_id: int | None = None,
    now: datetime | None = None,
) -> list[StatusCallback]:
    """Queue a ``callback_type`` callback to every enabled endpoint subscribed to
    it, in the current transaction; published once it commits. ``data`` is the
    payload's ``data`` (a message's by default). Returns the rows written."""
    if callback_type not in CALLBACK_TYPES:
        raise ValueError(
            f"{callback_type!r} is not a callback type; one of {sorted(CALLBACK_TYPES)}"
        )
    endpoint_ids = [pk for pk in _subscribed(callback_type) if pk != exclude_endpoint_id]
    if not endpoint_ids:
        return []
    now = now or timezone.now()
    if data is None:
        if message is None:
            raise ValueError("a callback needs its data or the message it is about")
        data = message_callback_data(message)
    rows = []
    for endpoint_id in endpoint_ids:
        callback_id = uuid.uuid4()
        payload = {
            "id": str(callback_id),
            "type": callback_type,
            "timestamp": _stamp(now),
            "data": dict(data),
        }
        rows.append(
            StatusCallback(
                id=callback_id,
                endpoint_id=endpoint_id,
                type=callback_type,
                message_id=message.id if message is not None else None,
                payload=payload,
                created_at=now,
            )
        )
    StatusCallback.objects.bulk_create(rows)
    callbacks_enqueue(callback_ids=[row.id for row in rows])
    return rows


def message_callbacks_emit(
    *, message: Message, status: str, now: datetime | None = None
) -> list[StatusCallback]:
    """The callback for a message that has just reached ``status``, if that status
    has one and anybody listens."""
    callback_type = MESSAGE_CALLBACKS.get(status)
    if callback_type is None or not _subscribed(callback_type):
        return []
    return callbacks_emit(callback_type=callback_type, message=message, now=now)


def message_callbacks_emit_many(*, message_ids: Iterable[uuid.UUID], status: str) -> int:
    """The callbacks for messages moved to ``status`` in bulk (the sweeper, the
    pipeline); one query for the messages, only when somebody listens."""
    callback_type = MESSAGE_CALLBACKS.get(status)
    ids = list(message_ids)
    if callback_type is None or not ids or not _subscribed(callback_type):
        return 0
    emitted = 0
    for message in Message.objects.filter(pk__in=ids).select_related("subscriber"):
        emitted += len(callbacks_emit(callback_type=callback_type, message=message))
    return emitted


# --- publishing -------------------------------------------------------------------


def publish_callbacks(schema_name: str, chunk: list[str], countdown: float = 0.0) -> None:
    from channels_delivery.tasks import callbacks_deliver

    options: dict[str, Any] = {"headers": {"_schema_name": schema_name}}
    if countdown > 0:
        options["countdown"] = countdown
    callbacks_deliver.apply_async(args=[chunk], **options)


def _publish_safely(schema_name: str, chunk: list[str], countdown: float) -> None:
    try:
        publish_callbacks(schema_name, chunk, countdown)
    except Exception:
        logger.exception(
            "publishing %s callbacks of %s failed; the sweeper will publish them",
            len(chunk),
            schema_name,
        )


def callbacks_enqueue(*, callback_ids: Iterable[uuid.UUID | str], countdown: float = 0.0) -> None:
    """Publish these callbacks once the current transaction commits."""
    ids = [str(callback_id) for callback_id in callback_ids]
    schema_name = tenant_connection.schema_name
    for start in range(0, len(ids), PUBLISH_CHUNK):
        chunk = ids[start : start + PUBLISH_CHUNK]
        transaction.on_commit(
            lambda chunk=chunk: _publish_safely(schema_name, chunk, countdown),  # type: ignore[misc]
            robust=True,
        )


# --- delivering -------------------------------------------------------------------


def _claim(*, callback_id: uuid.UUID, now: datetime) -> StatusCallback | None:
    with transaction.atomic():
        callback = (
            StatusCallback.objects.select_for_update(skip_locked=True)
            .filter(pk=callback_id, status=CallbackStatus.QUEUED)
            .first()
        )
        if callback is None or (callback.next_attempt_at and callback.next_attempt_at > now):
            return None
        callback.status = CallbackStatus.SENDING
        callback.attempt_count += 1
        callback.save(update_fields=["status", "attempt_count", "updated_at"])
    return callback


def callback_deliver(*, callback_id: uuid.UUID, now: datetime | None = None) -> str:
    """Send one queued, due callback; returns its status afterwards ("" when it was
    not ours to send: unknown, not due, or taken by another worker)."""
    now = now or timezone.now()
    callback = _claim(callback_id=callback_id, now=now)
    if callback is None:
        return ""
    endpoint = WebhookEndpoint.objects.filter(pk=callback.endpoint_id).first()
    clock = time.monotonic()
    if endpoint is None or not endpoint.enabled:
        result = ProviderResult(
            kind=ResultKind.PERMANENT, error="the endpoint was disabled before the callback went"
        )
    else:
        try:
            address = endpoint_address(endpoint=endpoint, now=now)
        except SecretsUnreadable as unreadable:
            result = ProviderResult(
                kind=ResultKind.CONFIG_ERROR,
                error=f"the endpoint's signing secrets can not be read ({unreadable})",
            )
        else:
            rendered = RenderedMessage(
                message_id=str(callback.id),
                channel=Channel.WEBHOOK,
                content={"body": callback.payload},
                address=address,
                idempotency_key=str(callback.id),
            )
            try:
                result = provider_get(channel=Channel.WEBHOOK, key="webhook").send(rendered, {})
            except Exception as crash:  # a provider must return a result; retried like an outage
                logger.exception("the webhook provider raised sending callback %s", callback.id)
                result = ProviderResult(
                    kind=ResultKind.RETRYABLE, error=f"{type(crash).__name__}: {crash}"
                )
        endpoint_delivery_record(
            endpoint_id=endpoint.pk,
            result=result,
            now=now,
            elapsed_seconds=time.monotonic() - clock,
        )
    return _record(callback_id=callback.id, result=result, now=now)


def _record(*, callback_id: uuid.UUID, result: ProviderResult, now: datetime) -> str:
    with transaction.atomic():
        callback = StatusCallback.objects.select_for_update().get(pk=callback_id)
        if callback.status != CallbackStatus.SENDING:
            return str(callback.status)  # the sweeper took it back meanwhile
        decision = decide(
            kind=result.kind,
            attempt_count=callback.attempt_count,
            retryable_in_a_row=0,
            has_next_integration=False,
            retry_after_seconds=result.retry_after_seconds,
            error=result.error,
        )
        callback.response_status = result.response_status
        callback.error = (decision.reason or result.error)[:ERROR_MAX]
        fields = ["status", "response_status", "error", "next_attempt_at", "updated_at"]
        if decision.action is Action.SENT:
            callback.status, callback.sent_at, callback.next_attempt_at = (
                CallbackStatus.SENT,
                now,
                None,
            )
            callback.error = ""
            fields.append("sent_at")
        elif decision.action is Action.RETRY:
            callback.status = CallbackStatus.QUEUED
            callback.next_attempt_at = now + timedelta(seconds=decision.delay_seconds)
            if decision.delay_seconds < settings.HERALD_DELIVERY_COUNTDOWN_MAX_SECONDS:
                callbacks_enqueue(callback_ids=[callback.id], countdown=decision.delay_seconds)
        else:
            callback.status, callback.failed_at, callback.next_attempt_at = (
                CallbackStatus.FAILED,
                now,
                None,
            )
            fields.append("failed_at")
        callback.save(update_fields=fields)
    return str(callback.status)


def callbacks_sweepable(
    *, now: datetime
) -> tuple[QuerySet[StatusCallback], QuerySet[StatusCallback]]:
    """What callbacks_sweep claims at ``now``: due callbacks nobody published
    within the grace period, and callbacks stuck in ``sending``."""
    grace = timedelta(seconds=settings.HERALD_DELIVERY_GRACE_SECONDS)
    sending_timeout = timedelta(seconds=settings.HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS)
    queued = StatusCallback.objects.filter(
        status=CallbackStatus.QUEUED, updated_at__lt=now - grace
    ).exclude(next_attempt_at__gt=now)
    stuck = StatusCallback.objects.filter(
        status=CallbackStatus.SENDING, updated_at__lt=now - sending_timeout
    )
    return queued, stuck


def callbacks_sweep(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Publish the current schema's due callbacks nobody published within the grace
    period and those stuck sending (failed once out of attempts); returns how many
    were published."""
    now = now or timezone.now()
    queued, sweepable_stuck = callbacks_sweepable(now=now)
    with transaction.atomic():
        due = list(
            queued.order_by("created_at")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        StatusCallback.objects.filter(pk__in=due).update(updated_at=now)
        stuck = list(
            sweepable_stuck.order_by("updated_at")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        stranded = StatusCallback.objects.filter(pk__in=stuck, status=CallbackStatus.SENDING)
        stranded.filter(attempt_count__gte=max_attempts()).update(
            status=CallbackStatus.FAILED,
            failed_at=now,
            error=CALLBACK_GAVE_UP,
            updated_at=now,
        )
        requeued = list(
            stranded.filter(attempt_count__lt=max_attempts()).values_list("id", flat=True)
        )
        stranded.filter(pk__in=requeued).update(status=CallbackStatus.QUEUED, updated_at=now)
        callbacks_enqueue(callback_ids=[*due, *requeued])
    return len(due) + len(requeued)


def callbacks_replay_failed(*, since: datetime, endpoint_id: int | None = None) -> int:
    """Queue again every callback that failed at or after ``since`` (to one
    endpoint, or to all), with a fresh retry schedule; returns how many."""
    with transaction.atomic():
        failed = StatusCallback.objects.filter(status=CallbackStatus.FAILED, failed_at__gte=since)
        if endpoint_id is not None:
            failed = failed.filter(endpoint_id=endpoint_id)
        ids = list(failed.select_for_update(skip_locked=True).values_list("id", flat=True))
        StatusCallback.objects.filter(pk__in=ids).update(
            status=CallbackStatus.QUEUED,
            attempt_count=0,
            next_attempt_at=None,
            failed_at=None,
            error="replayed",
            updated_at=timezone.now(),
        )
        callbacks_enqueue(callback_ids=ids)
    return len(ids)
