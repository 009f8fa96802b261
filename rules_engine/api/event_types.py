"""/api/v1/event-types: the kinds of event a tenant sends, declared ahead.

Writes of configuration (event types, rules, templates, layouts) need the
``admin`` scope; reads accept ``messages:read`` too. The scope helpers here are
shared by the rules and templates routers.
"""

from datetime import datetime
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict

from herald.api import ProblemOut, ValidationProblemOut, require_any_scope, require_scope
from herald.problems import FieldError, problem_response, validation_problem
from rules_engine.api.subscribers import PageQuery
from rules_engine.models import EventType
from rules_engine.selectors.event_types import event_type_get, event_type_list
from rules_engine.services.event_types import (
    EventTypeInUse,
    EventTypeInvalid,
    event_type_delete,
    event_type_save,
)
from tenants.models import ApiScope

router = Router(tags=["event types"])

CONFIG_WRITE_SCOPE = ApiScope.ADMIN.value
CONFIG_READ_SCOPES = (ApiScope.MESSAGES_READ.value, ApiScope.ADMIN.value)


# --- shared by the event types, rules and templates routers ----------------------


def require_config_read(request: HttpRequest) -> None:
    require_any_scope(request, *CONFIG_READ_SCOPES)


def require_config_write(request: HttpRequest) -> str:
    """Check the scope; returns who is writing, for the versions' ``created_by``."""
    principal = require_scope(request, CONFIG_WRITE_SCOPE)
    return f"api:{principal.prefix}"


def not_nullable(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` for a PATCH field that may be left out but not sent
    as null: the document drops the null option, and the service refuses a null
    with an error at the field (a union would add the member's name to it)."""
    options = [option for option in schema.pop("anyOf", []) if option.get("type") != "null"]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    schema.pop("default", None)


def in_use_response(detail: str, *, used_by: list[str]) -> HttpResponse:
    return problem_response(
        status=409, slug="in-use", title="In use", detail=detail, used_by=used_by
    )


# --- event types ---------------------------------------------------------------


class EventTypeIn(Schema):
    """A full declaration: fields left out are cleared."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=5000)
    category: str = Field(
        default="", max_length=100, description="Preferences can opt out of a whole category."
    )
    payload_schema: dict[str, Any] | None = Field(
        default=None,
        description="A JSON Schema (draft 2020-12) every payload of this type must match.",
    )
    sample_payload: dict[str, Any] = Field(
        default_factory=dict, description="An example payload, for previews and tests."
    )
    is_critical: bool = Field(
        default=False, description="Critical events reach subscribers who opted out."
    )


class EventTypeOut(Schema):
    key: str
    name: str
    description: str
    category: str
    payload_schema: dict[str, Any] | None
    schema_version: int = Field(description="Bumped whenever payload_schema changes.")
    sample_payload: dict[str, Any]
    is_critical: bool
    created_at: datetime
    updated_at: datetime


class EventTypePageOut(Schema):
    items: list[EventTypeOut]
    next_cursor: str | None


def _event_type_out(event_type: EventType) -> dict[str, Any]:
    return {
        "key": event_type.key,
        "name": event_type.name,
        "description": event_type.description,
        "category": event_type.category,
        "payload_schema": event_type.payload_schema,
        "schema_version": event_type.schema_version,
        "sample_payload": event_type.sample_payload,
        "is_critical": event_type.is_critical,
        "created_at": event_type.created_at,
        "updated_at": event_type.updated_at,
    }


def _event_type_or_404(key: str) -> EventType:
    event_type = event_type_get(key=key)
    if event_type is None:
        raise Http404(f"No event type {key!r} in this tenant.")
    return event_type


@router.get(
    "",
    response={200: EventTypePageOut, 400: ProblemOut, 422: ValidationProblemOut},
    summary="List event types",
)
def event_types_list(
    request: HttpRequest, page: Query[PageQuery], category: str | None = None
) -> Any:
    """Event types by key, a page at a time; `category` filters."""
    require_config_read(request)
    found = event_type_list(category=category, cursor=page.cursor, limit=page.limit)
    return {"items": [_event_type_out(t) for t in found.items], "next_cursor": found.next_cursor}


@router.put(
    "/{key}",
    response={200: EventTypeOut, 422: ValidationProblemOut},
    summary="Declare or replace an event type",
)
def event_types_upsert(request: HttpRequest, key: str, body: EventTypeIn) -> Any:
    """Create the event type, or replace its declaration (fields left out are
    cleared). A changed payload schema applies to events sent from then on."""
    require_config_write(request)
    try:
        event_type = event_type_save(
            key=key,
            name=body.name,
            description=body.description,
            category=body.category,
            payload_schema=body.payload_schema,
            sample_payload=body.sample_payload,
            is_critical=body.is_critical,
        )
    except EventTypeInvalid as invalid:
        return validation_problem([FieldError(pointer=f"/{invalid.field}", detail=invalid.message)])
    return _event_type_out(event_type)


@router.get("/{key}", response={200: EventTypeOut, 404: ProblemOut}, summary="Get an event type")
def event_types_read(request: HttpRequest, key: str) -> Any:
    require_config_read(request)
    return _event_type_out(_event_type_or_404(key))


@router.delete(
    "/{key}",
    response={204: None, 404: ProblemOut, 409: ProblemOut},
    summary="Delete an event type",
)
def event_types_delete(request: HttpRequest, key: str) -> Any:
    """Delete the declaration; refused (409 in-use) while any rule, enabled or
    not, is for this event type. Events already stored stay."""
    require_config_write(request)
    try:
        event_type_delete(event_type=_event_type_or_404(key))
    except EventTypeInUse as in_use:
        return in_use_response(str(in_use), used_by=[f"rule:{pk}" for pk in in_use.rule_ids])
    return Status(204, None)
