"""/api/v1/subscribers: profiles, one at a time or in bulk, and erasure.

Writes need the ``subscribers:write`` scope; reads accept ``subscribers:write``
or ``messages:read``. The scope helpers here are shared by the topics and
preferences routers.
"""

from datetime import datetime
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict
from pydantic import ValidationError as PydanticValidationError

from herald.api import (
    FieldErrorOut,
    ProblemOut,
    ValidationProblemOut,
    json_pointer_of,
    require_any_scope,
    require_scope,
)
from herald.pagination import DEFAULT_LIMIT, MAX_LIMIT
from herald.problems import FieldError, field_errors_out, validation_problem
from rules_engine.models import Subscriber
from rules_engine.selectors.subscribers import subscriber_get, subscriber_list
from rules_engine.services.subscribers import (
    BULK_MAX_PROFILES,
    BulkUpsertResult,
    InvalidInput,
    SubscriberProfile,
    subscriber_bulk_upsert,
    subscriber_erase,
    subscriber_upsert,
)

router = Router(tags=["subscribers"])

WRITE_SCOPE = "subscribers:write"
READ_SCOPES = ("messages:read", WRITE_SCOPE)


# --- shared by the subscribers, preferences and topics routers -------------------


def require_read_scope(request: HttpRequest) -> None:
    require_any_scope(request, *READ_SCOPES)


def require_write_scope(request: HttpRequest) -> None:
    require_scope(request, WRITE_SCOPE)


def invalid_input_response(invalid: InvalidInput, *, prefix: str = "") -> HttpResponse:
    return validation_problem(invalid.errors, prefix=prefix)


def subscriber_or_404(external_id: str) -> Subscriber:
    subscriber = subscriber_get(external_id=external_id)
    if subscriber is None:
        raise Http404(f"No subscriber {external_id!r} in this tenant.")
    return subscriber


class PageQuery(Schema):
    cursor: str | None = Field(
        default=None, description="The next_cursor of the previous page; none for the first."
    )
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


# --- subscribers ---------------------------------------------------------------


class SubscriberIn(Schema):
    """A full profile: fields left out are cleared."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, description="Validated as an email address.")
    phone: str | None = Field(default=None, description="E.164, e.g. +14155550100.")
    name: str | None = Field(default=None, max_length=200)
    locale: str | None = Field(default=None, description="BCP 47 language tag, e.g. en-US.")
    timezone: str | None = Field(default=None, description="IANA time zone, e.g. Europe/Paris.")
    data: dict[str, Any] | None = Field(
        default=None, description="Anything templates and rules may use."
    )
    channels: dict[str, Any] | None = Field(
        default=None,
        description="Addresses that are not email or phone, by channel: push "
        "subscriptions, chat webhooks. Each value is an object or a list.",
    )

    def profile(self, *, external_id: str) -> SubscriberProfile:
        return SubscriberProfile(
            external_id=external_id,
            email=self.email or "",
            phone=self.phone or "",
            name=self.name or "",
            locale=self.locale or "",
            timezone=self.timezone or "",
            data=self.data or {},
            channels=self.channels or {},
        )


class SubscriberBulkItemIn(SubscriberIn):
    external_id: str


class SubscriberBulkIn(Schema):
    model_config = ConfigDict(extra="forbid")

    subscribers: list[dict[str, Any]] = Field(
        description=f"Up to {BULK_MAX_PROFILES} profiles, each shaped like the body of "
        "PUT /subscribers/{external_id} plus its external_id. Each is saved or refused "
        "on its own.",
        json_schema_extra={"maxItems": BULK_MAX_PROFILES},
    )


class SubscriberOut(Schema):
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


class SubscriberUpsertOut(SubscriberOut):
    created: bool


class SubscriberPageOut(Schema):
    items: list[SubscriberOut]
    next_cursor: str | None


class BulkItemOut(Schema):
    index: int
    external_id: str | None
    status: str = Field(description="created, updated or invalid")
    errors: list[FieldErrorOut] = []


class BulkOut(Schema):
    created: int
    updated: int
    invalid: int
    results: list[BulkItemOut]


def subscriber_out(subscriber: Subscriber) -> dict[str, Any]:
    return {
        "external_id": subscriber.external_id,
        "email": subscriber.email,
        "phone": subscriber.phone,
        "name": subscriber.name,
        "locale": subscriber.locale,
        "timezone": subscriber.timezone,
        "data": subscriber.data,
        "channels": subscriber.channels,
        "created_at": subscriber.created_at,
        "updated_at": subscriber.updated_at,
    }


def _bulk_too_large(count: int) -> InvalidInput:
    return InvalidInput(
        [
            FieldError(
                pointer="/subscribers",
                detail=f"at most {BULK_MAX_PROFILES} profiles per request; got {count}",
            )
        ]
    )


# Registered before /{external_id}, which would otherwise take "bulk" as an id
# (and why "bulk" is a reserved external id).
@router.post(
    "/bulk",
    response={200: BulkOut, 422: ValidationProblemOut},
    summary="Create or replace many subscribers",
)
def subscribers_bulk_upsert(request: HttpRequest, body: SubscriberBulkIn) -> Any:
    """Upsert up to 1,000 profiles in one request. Each is validated on its own:
    valid profiles are saved even when others are refused, and every result
    names its index. An external id repeated in one request is refused at its
    second occurrence. More than 1,000 profiles: 422 and nothing is saved."""
    require_write_scope(request)
    if len(body.subscribers) > BULK_MAX_PROFILES:
        return invalid_input_response(_bulk_too_large(len(body.subscribers)))
    profiles: list[SubscriberProfile] = []
    refused: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(body.subscribers):
        try:
            parsed = SubscriberBulkItemIn.model_validate(item)
        except PydanticValidationError as error:
            external_id = item.get("external_id")
            refused[index] = {
                "index": index,
                "external_id": external_id if isinstance(external_id, str) else None,
                "status": "invalid",
                "errors": [
                    {
                        "pointer": json_pointer_of(detail["loc"]),
                        "detail": detail["msg"],
                    }
                    for detail in error.errors()
                ],
            }
            continue
        profiles.append(parsed.profile(external_id=parsed.external_id))
    positions = [index for index in range(len(body.subscribers)) if index not in refused]
    results = [
        _bulk_item_out(result, index=positions[result.index])
        for result in subscriber_bulk_upsert(profiles=profiles)
    ]
    items = sorted([*results, *refused.values()], key=lambda item: int(item["index"]))
    statuses = [item["status"] for item in items]
    return {
        "created": statuses.count("created"),
        "updated": statuses.count("updated"),
        "invalid": statuses.count("invalid"),
        "results": items,
    }


def _bulk_item_out(result: BulkUpsertResult, *, index: int) -> dict[str, Any]:
    status = ("created" if result.created else "updated") if result.ok else "invalid"
    return {
        "index": index,
        "external_id": result.external_id,
        "status": status,
        "errors": field_errors_out(result.errors),
    }


@router.get(
    "",
    response={200: SubscriberPageOut, 400: ProblemOut},
    summary="List subscribers",
)
def subscribers_list(
    request: HttpRequest,
    page: Query[PageQuery],
    email: str | None = None,
) -> Any:
    """Subscribers, oldest first, a page at a time; `email` filters by address
    (case-insensitive)."""
    require_read_scope(request)
    found = subscriber_list(email=email, cursor=page.cursor, limit=page.limit)
    return {
        "items": [subscriber_out(subscriber) for subscriber in found.items],
        "next_cursor": found.next_cursor,
    }


@router.put(
    "/{external_id}",
    response={200: SubscriberUpsertOut, 422: ValidationProblemOut},
    summary="Create or replace a subscriber",
)
def subscribers_upsert(request: HttpRequest, external_id: str, body: SubscriberIn) -> Any:
    """Create the subscriber with this external id, or replace its profile
    (fields left out are cleared). `created` tells which happened."""
    require_write_scope(request)
    try:
        upserted = subscriber_upsert(profile=body.profile(external_id=external_id))
    except InvalidInput as invalid:
        return invalid_input_response(invalid)
    return {**subscriber_out(upserted.subscriber), "created": upserted.created}


@router.get(
    "/{external_id}",
    response={200: SubscriberOut, 404: ProblemOut},
    summary="Get a subscriber",
)
def subscribers_read(request: HttpRequest, external_id: str) -> Any:
    require_read_scope(request)
    return subscriber_out(subscriber_or_404(external_id))


@router.delete(
    "/{external_id}",
    response={204: None, 404: ProblemOut},
    summary="Erase a subscriber",
)
def subscribers_erase(request: HttpRequest, external_id: str) -> Any:
    """Erase the subscriber: its profile, topic memberships and preferences are
    deleted, and its messages keep their status and times for the counts but
    lose their content."""
    require_write_scope(request)
    subscriber_erase(subscriber=subscriber_or_404(external_id))
    return Status(204, None)
