"""What Herald answers, as frozen dataclasses, and what requests take, as TypedDicts.

Answers are parsed once, at the edge: times become aware ``datetime`` objects,
ids stay strings (as Herald sends them). Enumerations (a message's status, a
channel) stay plain strings in answers, so a value added by a newer Herald does
not break an older client; the ``Literal`` aliases document the known ones and
type what requests send.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, NotRequired, Required, Self, TypedDict, TypeVar

from herald_client.errors import FieldError

T = TypeVar("T")

Channel = Literal["email", "sms", "webhook", "chat", "in_app", "push"]
MessageStatus = Literal[
    "queued",
    "sending",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "read",
    "failed",
    "bounced",
    "cancelled",
]


# --- requests ---------------------------------------------------------------------


class InlineSubscriber(TypedDict, total=False):
    """A recipient given with its profile: saved (merged) when the event is processed."""

    id: Required[str]
    email: str
    phone: str
    name: str
    locale: str
    timezone: str
    data: dict[str, Any]
    channels: dict[str, Any]


Recipient = str | InlineSubscriber


class EventInput(TypedDict):
    """One event of ``events.send_batch``, shaped like the body of ``POST /events``."""

    event: str
    to: NotRequired[list[Recipient]]
    topic: NotRequired[str]
    payload: NotRequired[dict[str, Any]]
    actor: NotRequired[Recipient]
    send_at: NotRequired[datetime | str]
    tenant_data: NotRequired[dict[str, Any]]
    idempotency_key: NotRequired[str]


class SubscriberInput(TypedDict, total=False):
    """One profile of ``subscribers.bulk_upsert``."""

    external_id: Required[str]
    email: str | None
    phone: str | None
    name: str | None
    locale: str | None
    timezone: str | None
    data: dict[str, Any] | None
    channels: dict[str, Any] | None


class PreferenceInput(TypedDict):
    """One choice: a channel on or off, for everything, a category or an event type."""

    channel: Channel
    enabled: bool
    event_type: NotRequired[str | None]
    category: NotRequired[str | None]


# --- parsing helpers ----------------------------------------------------------------


def parse_datetime(value: str) -> datetime:
    return datetime.fromisoformat(value)


def parse_optional_datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _field_errors(values: Any) -> tuple[FieldError, ...]:
    return tuple(
        FieldError(pointer=item["pointer"], detail=item["detail"]) for item in values or ()
    )


# --- answers ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Page(Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``cursor`` for the next (None: the last)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class EventAccepted:
    id: str
    status: str
    created_at: datetime
    replayed: bool = False
    """True when an earlier request with the same idempotency key made the event."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, replayed: bool = False) -> Self:
        return cls(
            id=data["id"],
            status=data["status"],
            created_at=parse_datetime(data["created_at"]),
            replayed=replayed,
        )


@dataclass(frozen=True, kw_only=True)
class BatchItemResult:
    """One item of a batch: ``status`` is ``accepted`` (with ``id``) or ``rejected``
    (with the problem ``type`` and ``errors``)."""

    index: int
    status: str
    id: str | None = None
    replayed: bool = False
    type: str | None = None
    errors: tuple[FieldError, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            index=data["index"],
            status=data["status"],
            id=data.get("id"),
            replayed=data.get("replayed", False),
            type=data.get("type"),
            errors=_field_errors(data.get("errors")),
        )


@dataclass(frozen=True, kw_only=True)
class BatchResult:
    accepted: int
    rejected: int
    results: list[BatchItemResult]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            accepted=data["accepted"],
            rejected=data["rejected"],
            results=[BatchItemResult.from_json(item) for item in data["results"]],
        )


@dataclass(frozen=True, kw_only=True)
class MessageSummary:
    id: str
    channel: str
    status: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(id=data["id"], channel=data["channel"], status=data["status"])


@dataclass(frozen=True, kw_only=True)
class Event:
    """An event and what the pipeline made of it (``outcome``, ``messages``)."""

    id: str
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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            id=data["id"],
            event=data["event"],
            status=data["status"],
            topic=data["topic"],
            recipients=data["recipients"],
            payload=data["payload"],
            actor=data["actor"],
            tenant_data=data["tenant_data"],
            send_at=parse_optional_datetime(data["send_at"]),
            created_at=parse_datetime(data["created_at"]),
            processed_at=parse_optional_datetime(data["processed_at"]),
            outcome=data["outcome"],
            messages=[MessageSummary.from_json(item) for item in data["messages"]],
        )


@dataclass(frozen=True, kw_only=True)
class Subscriber:
    external_id: str
    email: str
    phone: str
    name: str
    locale: str
    timezone: str
    data: dict[str, Any]
    channels: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(**_subscriber_fields(data))


def _subscriber_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "external_id": data["external_id"],
        "email": data["email"],
        "phone": data["phone"],
        "name": data["name"],
        "locale": data["locale"],
        "timezone": data["timezone"],
        "data": data["data"],
        "channels": data["channels"],
        "created_at": parse_datetime(data["created_at"]),
        "updated_at": parse_datetime(data["updated_at"]),
    }


@dataclass(frozen=True, kw_only=True)
class SubscriberUpserted(Subscriber):
    created: bool
    """True when the subscriber was new, False when an existing profile was replaced."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(**_subscriber_fields(data), created=data["created"])


@dataclass(frozen=True, kw_only=True)
class BulkItemResult:
    index: int
    external_id: str | None
    status: str
    """``created``, ``updated`` or ``invalid``."""
    errors: tuple[FieldError, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            index=data["index"],
            external_id=data["external_id"],
            status=data["status"],
            errors=_field_errors(data.get("errors")),
        )


@dataclass(frozen=True, kw_only=True)
class BulkResult:
    created: int
    updated: int
    invalid: int
    results: list[BulkItemResult]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            created=data["created"],
            updated=data["updated"],
            invalid=data["invalid"],
            results=[BulkItemResult.from_json(item) for item in data["results"]],
        )


@dataclass(frozen=True, kw_only=True)
class Preference:
    """One choice in effect; ``source`` says whose: ``subscriber`` or ``default`` (the tenant's)."""

    channel: str
    enabled: bool
    event_type: str | None
    category: str | None
    source: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            channel=data["channel"],
            enabled=data["enabled"],
            event_type=data["event_type"],
            category=data["category"],
            source=data["source"],
        )

    @classmethod
    def list_from_json(cls, data: Mapping[str, Any]) -> list[Self]:
        return [cls.from_json(item) for item in data["preferences"]]


@dataclass(frozen=True, kw_only=True)
class Topic:
    key: str
    name: str
    created_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            key=data["key"], name=data["name"], created_at=parse_datetime(data["created_at"])
        )


@dataclass(frozen=True, kw_only=True)
class MembersAdded:
    added: list[str]
    already_members: list[str]
    missing: list[str]
    """External ids with no subscriber: not added, and not created."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            added=data["added"], already_members=data["already_members"], missing=data["missing"]
        )


@dataclass(frozen=True, kw_only=True)
class MembersRemoved:
    removed: list[str]
    not_members: list[str]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(removed=data["removed"], not_members=data["not_members"])


@dataclass(frozen=True, kw_only=True)
class Message:
    id: str
    event_id: str
    subscriber_id: str | None
    """The subscriber's external id; None once the subscriber was erased."""
    channel: str
    status: str
    content: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(**_message_fields(data))


def _message_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": data["id"],
        "event_id": data["event_id"],
        "subscriber_id": data["subscriber_id"],
        "channel": data["channel"],
        "status": data["status"],
        "content": data["content"],
        "created_at": parse_datetime(data["created_at"]),
        "updated_at": parse_datetime(data["updated_at"]),
    }


@dataclass(frozen=True, kw_only=True)
class DeliveryAttempt:
    provider: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    response_status: int | None
    response_excerpt: str
    error: str
    latency_ms: int | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            provider=data["provider"],
            started_at=parse_datetime(data["started_at"]),
            finished_at=parse_optional_datetime(data["finished_at"]),
            outcome=data["outcome"],
            response_status=data["response_status"],
            response_excerpt=data["response_excerpt"],
            error=data["error"],
            latency_ms=data["latency_ms"],
        )


@dataclass(frozen=True, kw_only=True)
class MessageDetail(Message):
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    """Every delivery attempt, oldest first."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            **_message_fields(data),
            attempts=[DeliveryAttempt.from_json(item) for item in data["attempts"]],
        )


@dataclass(frozen=True, kw_only=True)
class InboxItem:
    id: str
    title: str
    body: str
    action_url: str | None
    created_at: datetime
    seen_at: datetime | None
    read_at: datetime | None
    archived_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            id=data["id"],
            title=data["title"],
            body=data["body"],
            action_url=data["action_url"],
            created_at=parse_datetime(data["created_at"]),
            seen_at=parse_optional_datetime(data["seen_at"]),
            read_at=parse_optional_datetime(data["read_at"]),
            archived_at=parse_optional_datetime(data["archived_at"]),
        )


@dataclass(frozen=True, kw_only=True)
class InboxPage(Page[InboxItem]):
    unread_count: int
    """Unread, unarchived messages: the badge."""


@dataclass(frozen=True, kw_only=True)
class InboxSecret:
    """The tenant's inbox secret, for computing subscriber hashes on the tenant's server."""

    secret: str
    algorithm: str
    created_at: datetime
    rotated_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            secret=data["secret"],
            algorithm=data.get("algorithm", "HMAC-SHA256"),
            created_at=parse_datetime(data["created_at"]),
            rotated_at=parse_datetime(data["rotated_at"]),
        )


@dataclass(frozen=True, kw_only=True)
class Me:
    """The tenant and the key a request authenticated as."""

    tenant_slug: str
    tenant_name: str
    key_name: str
    key_prefix: str
    scopes: list[str]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            tenant_slug=data["tenant"]["slug"],
            tenant_name=data["tenant"]["name"],
            key_name=data["api_key"]["name"],
            key_prefix=data["api_key"]["prefix"],
            scopes=data["api_key"]["scopes"],
        )
