"""What Herald answers, as frozen dataclasses, and what requests take, as TypedDicts.

Answers are parsed once, at the edge: times become aware ``datetime`` objects,
ids stay strings (as Herald sends them). Enumerations (a message's status, a
channel) stay plain strings in answers, so a value added by a newer Herald does
not break an older client; the ``Literal`` aliases document the known ones and
type what requests send.
"""

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from datetime import datetime
from typing import (
    Any,
    ClassVar,
    Generic,
    Literal,
    NamedTuple,
    NotRequired,
    Required,
    Self,
    TypedDict,
    TypeGuard,
    TypeVar,
    get_args,
    get_origin,
    get_type_hints,
)

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


# --- decoding answers ---------------------------------------------------------------


def parse_datetime(value: str) -> datetime:
    return datetime.fromisoformat(value)


def parse_optional_datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _field_errors(values: Any) -> tuple[FieldError, ...]:
    return tuple(
        FieldError(pointer=item["pointer"], detail=item["detail"]) for item in values or ()
    )


class _Answer:
    """An answer model: a frozen dataclass decoded from Herald's JSON by the types of its
    fields, so a field is declared once and parsed by no hand-written code."""

    # Every subclass is a dataclass; this tells mypy so, for ``fields()``.
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            **{
                name: data[name] if convert is None else convert(data[name])
                for name, convert, required in _decoding_plan(cls)
                if required or name in data
            }
        )


class _FieldDecoding(NamedTuple):
    name: str
    convert: Callable[[Any], Any] | None
    """None: the JSON value is the field's value."""
    required: bool
    """False when the field has a default, which an absent key leaves in place."""


_decoding_plans: dict[type[_Answer], tuple[_FieldDecoding, ...]] = {}


def _decoding_plan(cls: type[_Answer]) -> tuple[_FieldDecoding, ...]:
    """Worked out once per class: resolving type hints costs more than decoding a page."""
    plan = _decoding_plans.get(cls)
    if plan is None:
        hints = get_type_hints(cls)
        plan = _decoding_plans[cls] = tuple(
            _FieldDecoding(
                name=each.name,
                convert=_converter(hints[each.name]),
                required=each.default is MISSING and each.default_factory is MISSING,
            )
            for each in fields(cls)
        )
    return plan


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    if hint is datetime:
        return parse_datetime
    if hint == datetime | None:
        return parse_optional_datetime
    if hint == tuple[FieldError, ...]:
        return _field_errors
    if get_origin(hint) is list and _is_answer(item := get_args(hint)[0]):
        return lambda values: [item.from_json(value) for value in values]
    if _is_answer(hint):
        return hint.from_json
    return None


def _is_answer(hint: Any) -> TypeGuard[type[_Answer]]:
    return isinstance(hint, type) and issubclass(hint, _Answer)


# --- answers ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Page(Generic[T]):
    """One page of a list; pass ``next_cursor`` as ``cursor`` for the next (None: the last)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class EventAccepted(_Answer):
    id: str
    status: str
    created_at: datetime
    replayed: bool = False
    """True when an earlier request with the same idempotency key made the event."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, replayed: bool = False) -> Self:
        # Not in the body: the Idempotent-Replayed header of the answer says it.
        return super().from_json({**data, "replayed": replayed})


@dataclass(frozen=True, kw_only=True)
class BatchItemResult(_Answer):
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


@dataclass(frozen=True, kw_only=True)
class BatchResult(_Answer):
    accepted: int
    rejected: int
    results: list[BatchItemResult]


@dataclass(frozen=True, kw_only=True)
class MessageSummary(_Answer):
    id: str
    channel: str
    status: str


@dataclass(frozen=True, kw_only=True)
class Event(_Answer):
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


@dataclass(frozen=True, kw_only=True)
class Subscriber(_Answer):
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


@dataclass(frozen=True, kw_only=True)
class SubscriberUpserted(Subscriber):
    created: bool
    """True when the subscriber was new, False when an existing profile was replaced."""


@dataclass(frozen=True, kw_only=True)
class BulkItemResult(_Answer):
    index: int
    external_id: str | None
    status: str
    """``created``, ``updated`` or ``invalid``."""
    errors: tuple[FieldError, ...] = ()


@dataclass(frozen=True, kw_only=True)
class BulkResult(_Answer):
    created: int
    updated: int
    invalid: int
    results: list[BulkItemResult]


@dataclass(frozen=True, kw_only=True)
class Preference(_Answer):
    """One choice in effect; ``source`` says whose: ``subscriber`` or ``default`` (the tenant's)."""

    channel: str
    enabled: bool
    event_type: str | None
    category: str | None
    source: str

    @classmethod
    def list_from_json(cls, data: Mapping[str, Any]) -> list[Self]:
        return [cls.from_json(item) for item in data["preferences"]]


@dataclass(frozen=True, kw_only=True)
class Topic(_Answer):
    key: str
    name: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class MembersAdded(_Answer):
    added: list[str]
    already_members: list[str]
    missing: list[str]
    """External ids with no subscriber: not added, and not created."""


@dataclass(frozen=True, kw_only=True)
class MembersRemoved(_Answer):
    removed: list[str]
    not_members: list[str]


@dataclass(frozen=True, kw_only=True)
class Message(_Answer):
    id: str
    event_id: str
    subscriber_id: str | None
    """The subscriber's external id; None once the subscriber was erased."""
    channel: str
    status: str
    content: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class DeliveryAttempt(_Answer):
    provider: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    response_status: int | None
    response_excerpt: str
    error: str
    latency_ms: int | None


@dataclass(frozen=True, kw_only=True)
class MessageDetail(Message):
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    """Every delivery attempt, oldest first."""


@dataclass(frozen=True, kw_only=True)
class InboxItem(_Answer):
    id: str
    title: str
    body: str
    action_url: str | None
    created_at: datetime
    seen_at: datetime | None
    read_at: datetime | None
    archived_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class InboxPage(Page[InboxItem]):
    unread_count: int
    """Unread, unarchived messages: the badge."""


@dataclass(frozen=True, kw_only=True)
class InboxSecret(_Answer):
    """The tenant's inbox secret, for computing subscriber hashes on the tenant's server."""

    secret: str
    algorithm: str
    created_at: datetime
    rotated_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        # Herald's schema makes ``algorithm`` optional (HMAC-SHA256 when left out); the
        # field stays required, so a secret built by hand says what it is for.
        return super().from_json({"algorithm": "HMAC-SHA256", **data})


@dataclass(frozen=True, kw_only=True)
class Me(_Answer):
    """The tenant and the key a request authenticated as."""

    tenant_slug: str
    tenant_name: str
    key_name: str
    key_prefix: str
    scopes: list[str]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        # Herald nests the tenant and the key in objects of their own, which this model
        # flattens: no field maps to one key of the JSON.
        return cls(
            tenant_slug=data["tenant"]["slug"],
            tenant_name=data["tenant"]["name"],
            key_name=data["api_key"]["name"],
            key_prefix=data["api_key"]["prefix"],
            scopes=data["api_key"]["scopes"],
        )
