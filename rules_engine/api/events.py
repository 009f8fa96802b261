"""/api/v1/events: send events (one or a batch) and read them back."""

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Router, Schema, Status
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
)
from pydantic import ValidationError as PydanticValidationError

from herald.api import FieldErrorOut, ProblemOut, json_pointer_of, require_scope
from herald.limits import QuotaExceeded, quota_exceeded_response
from herald.problems import FieldError, field_errors_out, problem_response
from rules_engine.selectors.events import event_get
from rules_engine.services.event_types import RESERVED_EVENT_KEY_MESSAGE, RESERVED_EVENT_KEYS
from rules_engine.services.events import (
    EventDraft,
    EventRejected,
    event_ingest,
    event_ingest_many,
)

router = Router(tags=["events"])

E164 = r"^\+[1-9]\d{1,14}$"
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_SCHEDULE_AHEAD = timedelta(days=365)


# Request bodies are plain pydantic models: a ninja Schema validates each
# batch item a second time through its ORM-attribute path.
class InlineSubscriber(BaseModel):
    """A recipient given in full: created or updated when the event is processed."""

    model_config = ConfigDict(extra="forbid")

    id: ExternalId
    email: str | None = None
    phone: str | None = Field(default=None, pattern=E164)
    name: str | None = Field(default=None, max_length=200)
    locale: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)
    data: dict[str, Any] | None = None
    channels: dict[str, Any] | None = None

    @field_validator("email")
    @classmethod
    def email_is_valid(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                validate_email(value)
            except DjangoValidationError:
                raise ValueError(f"{value!r} is not an email address") from None
        return value


def _recipient_kind(value: Any) -> str:
    return "<subscriber>" if isinstance(value, dict | InlineSubscriber) else "<id>"


# A subscriber id or an inline profile, told apart by the JSON type, so that an
# invalid profile is reported at its own fields (/to/0/phone), not also as "not a
# string". Tags in <brackets> are left out of error pointers (herald.api).
Recipient = Annotated[
    Annotated[ExternalId, Tag("<id>")] | Annotated[InlineSubscriber, Tag("<subscriber>")],
    Discriminator(_recipient_kind),
]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The event type's key, e.g. order.shipped.",
    )
    to: list[Recipient] = Field(
        default_factory=list,
        max_length=1000,
        description="Recipients: subscriber ids, or inline profiles.",
    )
    topic: str | None = Field(default=None, max_length=200, description="Fan out to a topic.")
    payload: dict[str, Any] = Field(default_factory=dict)
    actor: Recipient | None = None
    send_at: AwareDatetime | None = Field(
        default=None, description="Deliver at this time instead of now (with a UTC offset)."
    )
    tenant_data: dict[str, Any] | None = None

    @field_validator("event")
    @classmethod
    def event_not_reserved(cls, value: str) -> str:
        if value in RESERVED_EVENT_KEYS:
            raise ValueError(RESERVED_EVENT_KEY_MESSAGE.format(key=value))
        return value

    @field_validator("send_at")
    @classmethod
    def send_at_in_utc(cls, value: datetime | None) -> datetime | None:
        """Stored in UTC (PostgreSQL refuses offsets beyond ±15:59), at most a year ahead."""
        if value is None:
            return None
        try:
            in_utc = value.astimezone(UTC)
        except OverflowError:
            raise ValueError("send_at is out of range") from None
        if in_utc - timezone.now() > MAX_SCHEDULE_AHEAD:
            raise ValueError("send_at may be at most 365 days ahead")
        return in_utc

    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Alternative to the Idempotency-Key header.",
    )


class EventAccepted(Schema):
    id: UUID
    status: str
    created_at: datetime


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(
        min_length=1,
        description="Up to 1,000 events, each shaped like the body of POST /events. Each is "
        "accepted or rejected on its own.",
    )


# Plain pydantic models, not ninja Schemas: a Schema reads its input through
# ninja's ORM-attribute getter, several times slower over a 1,000-item answer.
class BatchItemOut(BaseModel):
    index: int
    id: UUID | None = None
    status: str
    replayed: bool = False
    type: str | None = None
    errors: list[FieldErrorOut] = []


class BatchOut(BaseModel):
    accepted: int
    rejected: int
    results: list[BatchItemOut]


class MessageSummary(Schema):
    id: UUID
    channel: str
    status: str


class EventOut(Schema):
    id: UUID
    event: str
    status: str
    topic: str
    recipients: list[Any]
    payload: dict[str, Any]
    actor: Any
    tenant_data: dict[str, Any] | None
    send_at: datetime | None
    created_at: datetime
    processed_at: datetime | None
    outcome: dict[str, Any]
    messages: list[MessageSummary]


def _draft(event: EventIn, *, header_key: str | None) -> EventDraft:
    key = event.idempotency_key
    if header_key is not None and key is not None and header_key != key:
        raise EventRejected(
            slug="validation-failed",
            title="Validation failed",
            detail="The Idempotency-Key header and the body's idempotency_key differ.",
            errors=[FieldError(pointer="/idempotency_key", detail="differs from the header")],
        )
    return EventDraft(
        event=event.event,
        recipients=[r if isinstance(r, str) else r.model_dump(exclude_none=True) for r in event.to],
        topic=event.topic or "",
        payload=event.payload,
        actor=event.actor
        if event.actor is None or isinstance(event.actor, str)
        else event.actor.model_dump(exclude_none=True),
        tenant_data=event.tenant_data,
        send_at=event.send_at,
        idempotency_key=key or header_key,
    )


def _header_key(request: HttpRequest) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= 255 or not re.fullmatch(r"[\x21-\x7e]+", key):
        raise EventRejected(
            slug="validation-failed",
            title="Validation failed",
            detail="The Idempotency-Key header must be 1 to 255 visible ASCII characters.",
            errors=[FieldError(pointer="/headers/Idempotency-Key", detail="invalid")],
        )
    return key


def rejection_response(rejection: EventRejected) -> HttpResponse:
    return problem_response(
        status=rejection.status,
        slug=rejection.slug,
        title=rejection.title,
        detail=rejection.detail,
        errors=field_errors_out(rejection.errors),
    )


@router.post(
    "",
    response={202: EventAccepted, 409: ProblemOut, 422: ProblemOut, 429: ProblemOut},
    summary="Send an event",
)
def event_send(request: HttpRequest, response: HttpResponse, body: EventIn) -> Any:
    """Accept one event for processing. With an `Idempotency-Key` header (or
    `idempotency_key` field), repeating the request within the idempotency
    window returns the original response with `Idempotent-Replayed: true`."""
    principal = require_scope(request, "events:write")
    try:
        draft = _draft(body, header_key=_header_key(request))
        receipt = event_ingest(
            tenant=principal.tenant,
            draft=draft,
            reservation=getattr(request, "quota_reservation", None),
        )
    except EventRejected as rejection:
        return rejection_response(rejection)
    except QuotaExceeded as exceeded:
        return quota_exceeded_response(exceeded)
    if receipt.replayed:
        response["Idempotent-Replayed"] = "true"
    return Status(
        202, {"id": receipt.id, "status": receipt.status, "created_at": receipt.created_at}
    )


def _item_errors(error: PydanticValidationError) -> list[FieldError]:
    return [
        FieldError(pointer=json_pointer_of(detail["loc"]), detail=detail["msg"])
        for detail in error.errors()
    ]


@router.post(
    "/batch", response={202: BatchOut, 422: ProblemOut, 429: ProblemOut}, summary="Send many events"
)
def event_send_batch(request: HttpRequest, body: BatchIn) -> Any:
    """Accept up to 1,000 events in one request. Each item is validated and
    stored on its own: valid items are accepted even when others are rejected,
    and every item's result names its index. Idempotency keys go in each item's
    `idempotency_key`."""
    principal = require_scope(request, "events:write")
    limit = settings.HERALD_MAX_BATCH_ITEMS
    if len(body.events) > limit:
        return problem_response(
            status=422,
            slug="batch-too-large",
            title="Batch too large",
            detail=f"A batch holds at most {limit} events; this one has {len(body.events)}.",
            max_items=limit,
        )
    drafts: list[tuple[int, EventDraft]] = []
    rejected: dict[int, EventRejected] = {}
    for index, item in enumerate(body.events):
        try:
            drafts.append((index, _draft(EventIn.model_validate(item), header_key=None)))
        except PydanticValidationError as error:
            errors = _item_errors(error)
            rejected[index] = EventRejected(
                slug="validation-failed", title="Validation failed", detail="", errors=errors
            )
    try:
        results = event_ingest_many(tenant=principal.tenant, drafts=drafts)
    except QuotaExceeded as exceeded:
        return quota_exceeded_response(exceeded)
    items: list[dict[str, Any]] = []
    for result in results:
        if result.receipt is not None:
            items.append(
                {
                    "index": result.index,
                    "id": result.receipt.id,
                    "status": result.receipt.status,
                    "replayed": result.receipt.replayed,
                }
            )
        elif result.rejection is not None:
            rejected[result.index] = result.rejection
    for index, rejection in rejected.items():
        items.append(
            {
                "index": index,
                "status": "rejected",
                "type": f"urn:herald:problem:{rejection.slug}",
                "errors": field_errors_out(rejection.errors),
            }
        )
    items.sort(key=lambda item: item["index"])
    return Status(
        202,
        {"accepted": len(items) - len(rejected), "rejected": len(rejected), "results": items},
    )


@router.get("/{event_id}", response={200: EventOut, 404: ProblemOut}, summary="Get an event")
def event_read(request: HttpRequest, event_id: str) -> Any:
    """An event: its status, what the pipeline decided, and its messages."""
    require_scope(request, "messages:read")
    event = event_get(event_id=event_id)
    if event is None:
        raise Http404(f"No event {event_id} in this tenant.")
    return {
        "id": event.id,
        "event": event.event_type_key,
        "status": event.status,
        "topic": event.topic,
        "recipients": event.recipients,
        "payload": event.payload,
        "actor": event.actor,
        "tenant_data": event.tenant_data,
        "send_at": event.send_at,
        "created_at": event.created_at,
        "processed_at": event.processed_at,
        "outcome": event.outcome,
        "messages": [
            {"id": m.id, "channel": m.channel, "status": m.status} for m in event.messages.all()
        ],
    }
