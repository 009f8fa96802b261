"""Accepting events: validation, idempotency, storage, and the hand-off to the pipeline.

An event is stored with one INSERT and handed to the pipeline after the
transaction commits, through the process's publisher, which publishes many
requests' events at once off the request path (rules_engine.services.dispatch;
the events table is the outbox, and the sweeper dispatches what a publish
lost). An idempotency key makes the INSERT ``ON CONFLICT DO
NOTHING`` on a unique index, so two concurrent requests with one key create
one row: the second waits for the first to commit, inserts nothing, and reads
the first's row to replay its response. Within the window (default 7 days) the
same key with a different body is refused; after it, the key is free again.
"""

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson
from django.conf import settings
from django.db import connection
from django.utils import timezone
from psycopg.types.json import Jsonb

from herald.limits import QuotaReservation, event_quota_consume, event_quota_refund
from herald.problems import FieldError, json_pointer
from rules_engine.event_types import EventTypeInfo, event_types_current
from rules_engine.models import Event, EventStatus
from rules_engine.services.dispatch import events_enqueue
from tenants.models import Tenant

MAX_ERRORS_PER_EVENT = 20


@dataclass(frozen=True, kw_only=True)
class EventDraft:
    """A syntactically valid event, as the API parsed it."""

    event: str
    recipients: list[Any] = field(default_factory=list)
    topic: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    actor: Any = None
    tenant_data: dict[str, Any] | None = None
    send_at: datetime | None = None
    idempotency_key: str | None = None

    def fingerprint(self) -> str:
        """A hash of everything but the key: what 'the same request' means."""
        content = asdict(self)
        content.pop("idempotency_key")
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class EventReceipt:
    id: uuid.UUID
    status: str
    created_at: datetime
    replayed: bool = False


class EventRejected(Exception):
    """The event is refused; the fields become a problem response."""

    def __init__(
        self,
        *,
        slug: str,
        title: str,
        detail: str,
        errors: Sequence[FieldError] = (),
        status: int = 422,
    ) -> None:
        super().__init__(detail)
        self.slug = slug
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.status = status


def event_errors(*, draft: EventDraft, strict: bool) -> list[FieldError]:
    """What is wrong with this event for this tenant (unknown type, payload schema)."""
    info: EventTypeInfo | None = event_types_current().get(draft.event)
    if info is None:
        if strict:
            return [
                FieldError(
                    pointer="/event",
                    detail=f"unknown event type {draft.event!r}; this tenant only accepts "
                    "declared event types (strict mode)",
                )
            ]
        return []
    if info.validator is None:
        return []
    errors = sorted(info.validator.iter_errors(draft.payload), key=lambda e: list(e.path))
    return [
        FieldError(pointer="/payload" + json_pointer(error.absolute_path), detail=error.message)
        for error in errors[:MAX_ERRORS_PER_EVENT]
    ]


def _rejection(errors: list[FieldError]) -> EventRejected:
    unknown_type = len(errors) == 1 and errors[0].pointer == "/event"
    return EventRejected(
        slug="unknown-event-type" if unknown_type else "validation-failed",
        title="Unknown event type" if unknown_type else "Validation failed",
        detail="; ".join(f"{error.pointer}: {error.detail}" for error in errors),
        errors=errors,
    )


def _key_reused(key: str) -> EventRejected:
    return EventRejected(
        slug="idempotency-key-reused",
        title="Idempotency key reused",
        detail=f"The idempotency key {key!r} was used for a different request within the "
        f"last {settings.HERALD_IDEMPOTENCY_WINDOW_DAYS} days.",
        errors=[FieldError(pointer="/idempotency_key", detail="used for a different request")],
    )


def _new_event(draft: EventDraft, *, now: datetime) -> Event:
    return Event(
        id=uuid.uuid4(),
        event_type_key=draft.event,
        recipients=draft.recipients,
        topic=draft.topic,
        payload=draft.payload,
        actor=draft.actor,
        tenant_data=draft.tenant_data,
        send_at=draft.send_at,
        idempotency_key=draft.idempotency_key,
        request_hash=draft.fingerprint() if draft.idempotency_key else "",
        created_at=now,
    )


_INSERT = """INSERT INTO {table} (
    id, event_type_key, recipients, topic, payload, actor, tenant_data, send_at, status,
    idempotency_key, request_hash, outcome, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, '{{}}'::jsonb, %s)
"""


def _event_insert(event: Event) -> None:
    """``event.save(force_insert=True)`` without the model machinery around it
    (signals, field preparation): the hot path of POST /events."""
    sql = _INSERT.format(table=connection.ops.quote_name(Event._meta.db_table))
    with connection.cursor() as cursor:
        params: list[Any] = [
            event.id,
            event.event_type_key,
            Jsonb(event.recipients),
            event.topic,
            Jsonb(event.payload),
            None if event.actor is None else Jsonb(event.actor),
            None if event.tenant_data is None else Jsonb(event.tenant_data),
            event.send_at,
            EventStatus.ACCEPTED.value,
            event.idempotency_key,
            event.request_hash,
            event.created_at,
        ]
        cursor.execute(sql, params)


def _is_due(event: Event, now: datetime) -> bool:
    return event.send_at is None or event.send_at <= now


def _window_start(now: datetime) -> datetime:
    return now - timedelta(days=settings.HERALD_IDEMPOTENCY_WINDOW_DAYS)


def event_ingest(
    *, tenant: Tenant, draft: EventDraft, reservation: QuotaReservation | None = None
) -> EventReceipt:
    """Store one event (or find the one this idempotency key already made).

    Counts against the tenant's monthly quota (raises herald.limits.QuotaExceeded),
    through ``reservation`` when the request's limits check made one; a replay
    is given back.
    """
    errors = event_errors(draft=draft, strict=tenant.strict_event_types)
    if errors:
        if reservation is not None:
            reservation.release()
        raise _rejection(errors)
    if reservation is not None:
        reservation.take()
    else:
        event_quota_consume(tenant=tenant, count=1)
    try:
        receipt = _event_store(draft)
    except EventRejected:
        event_quota_refund(tenant=tenant, count=1)
        raise
    if receipt.replayed:
        event_quota_refund(tenant=tenant, count=1)
    return receipt


def _event_store(draft: EventDraft) -> EventReceipt:
    now = timezone.now()
    event = _new_event(draft, now=now)
    if draft.idempotency_key is None:
        _event_insert(event)
        if _is_due(event, now):
            events_enqueue([event.id])
        return EventReceipt(id=event.id, status=EventStatus.ACCEPTED, created_at=now)

    key = draft.idempotency_key
    for _ in range(2):  # a second pass only after freeing an expired key
        Event.objects.bulk_create([event], ignore_conflicts=True)
        existing = (
            Event.objects.filter(idempotency_key=key)
            .values("id", "request_hash", "created_at")
            .first()
        )
        if existing is None:  # the holder of the key was deleted meanwhile
            continue
        if existing["id"] == event.id:
            if _is_due(event, now):
                events_enqueue([event.id])
            return EventReceipt(id=event.id, status=EventStatus.ACCEPTED, created_at=now)
        if existing["created_at"] < _window_start(now):
            Event.objects.filter(pk=existing["id"], idempotency_key=key).update(
                idempotency_key=None
            )
            continue
        if existing["request_hash"] != event.request_hash:
            raise _key_reused(key)
        return EventReceipt(
            id=existing["id"],
            status=EventStatus.ACCEPTED,
            created_at=existing["created_at"],
            replayed=True,
        )
    raise EventRejected(
        slug="conflict",
        title="Conflict",
        detail=f"The idempotency key {key!r} is being used concurrently; retry.",
        status=409,
    )


_BATCH_INSERT = """INSERT INTO {table} (
    id, event_type_key, recipients, topic, payload, actor, tenant_data, send_at, status,
    idempotency_key, request_hash, outcome, created_at)
SELECT r.id, r.event_type_key, r.recipients, r.topic, r.payload, r.actor, r.tenant_data,
       r.send_at, %s, r.idempotency_key, r.request_hash, '{{}}'::jsonb, %s
FROM jsonb_to_recordset(%s::jsonb) AS r(
    id uuid, event_type_key text, recipients jsonb, topic text, payload jsonb, actor jsonb,
    tenant_data jsonb, send_at timestamptz, idempotency_key text, request_hash text)
ON CONFLICT DO NOTHING
"""


class _NewRow(NamedTuple):
    """A batch item on its way into the table (no model instance: they cost more
    to build than the INSERT costs to run)."""

    position: int  # the item's index in the batch
    id: uuid.UUID
    draft: EventDraft
    request_hash: str


def _events_insert_ignoring_conflicts(new_rows: Sequence[_NewRow], *, now: datetime) -> None:
    """One INSERT for the whole batch, its rows passed as one JSON document.

    Django's bulk_create sends a PostgreSQL array per column, which psycopg
    escapes value by value in Python: several times slower for 1,000 rows.
    """
    if not new_rows:
        return
    rows = [
        {
            "id": str(row.id),
            "event_type_key": row.draft.event,
            "recipients": row.draft.recipients,
            "topic": row.draft.topic,
            "payload": row.draft.payload,
            "actor": row.draft.actor,
            "tenant_data": row.draft.tenant_data,
            "send_at": row.draft.send_at.isoformat() if row.draft.send_at else None,
            "idempotency_key": row.draft.idempotency_key,
            "request_hash": row.request_hash,
        }
        for row in new_rows
    ]
    sql = _BATCH_INSERT.format(table=connection.ops.quote_name(Event._meta.db_table))
    with connection.cursor() as cursor:
        cursor.execute(sql, [EventStatus.ACCEPTED, now, _json_text(rows)])


def _json_text(value: Any) -> str:
    """JSON text of parsed request data: orjson, several times faster than the
    standard library, which takes over for integers beyond 64 bits (orjson
    refuses them; JSON and jsonb allow them)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


@dataclass(frozen=True, kw_only=True)
class BatchItemResult:
    index: int
    receipt: EventReceipt | None = None
    rejection: EventRejected | None = None


def event_ingest_many(
    *, tenant: Tenant, drafts: Sequence[tuple[int, EventDraft]]
) -> list[BatchItemResult]:
    """Store many events with one INSERT; each item succeeds or fails on its own.

    The valid items count against the monthly quota together: if they do not
    all fit, herald.limits.QuotaExceeded is raised and nothing is stored.
    Replays and refused items are given back.
    """
    results: dict[int, BatchItemResult] = {}
    now = timezone.now()
    new_rows: list[_NewRow] = []
    for index, draft in drafts:
        errors = event_errors(draft=draft, strict=tenant.strict_event_types)
        if errors:
            results[index] = BatchItemResult(index=index, rejection=_rejection(errors))
        else:
            request_hash = draft.fingerprint() if draft.idempotency_key else ""
            new_rows.append(_NewRow(index, uuid.uuid4(), draft, request_hash))
    event_quota_consume(tenant=tenant, count=len(new_rows))
    not_stored = 0

    _events_insert_ignoring_conflicts(new_rows, now=now)
    due: list[uuid.UUID] = []
    keys = {row.draft.idempotency_key for row in new_rows if row.draft.idempotency_key}
    holders = {
        row["idempotency_key"]: row
        for row in Event.objects.filter(idempotency_key__in=keys).values(
            "id", "idempotency_key", "request_hash", "created_at"
        )
    }
    for index, row_id, draft, request_hash in new_rows:
        key = draft.idempotency_key
        holder = holders.get(key) if key else None
        if key is None or (holder is not None and holder["id"] == row_id):
            receipt = EventReceipt(id=row_id, status=EventStatus.ACCEPTED, created_at=now)
            if draft.send_at is None or draft.send_at <= now:
                due.append(row_id)
            results[index] = BatchItemResult(index=index, receipt=receipt)
        elif holder is None or holder["created_at"] < _window_start(now):
            # Rare: the key's holder expired or vanished; take the careful path.
            try:
                receipt = _event_store(draft)
                not_stored += receipt.replayed
                results[index] = BatchItemResult(index=index, receipt=receipt)
            except EventRejected as rejection:
                not_stored += 1
                results[index] = BatchItemResult(index=index, rejection=rejection)
        elif holder["request_hash"] != request_hash:
            not_stored += 1
            results[index] = BatchItemResult(index=index, rejection=_key_reused(key))
        else:
            not_stored += 1
            replay = EventReceipt(
                id=holder["id"],
                status=EventStatus.ACCEPTED,
                created_at=holder["created_at"],
                replayed=True,
            )
            results[index] = BatchItemResult(index=index, receipt=replay)
    event_quota_refund(tenant=tenant, count=not_stored)
    events_enqueue(due)
    return [results[index] for index in sorted(results)]
