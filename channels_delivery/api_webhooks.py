"""/api/v1/webhook-endpoints: the tenant's URLs that receive signed webhooks.

Everything here needs the ``admin`` scope. Each endpoint signs with a
``whsec_`` secret (Standard Webhooks). The secret is answered on create and on
rotation, and an admin may read the current one again at
``GET /webhook-endpoints/{id}/secret`` (as Svix does); no other answer carries
it. A rotation keeps the previous secret signing next to the new one for a
while (HERALD_WEBHOOK_SECRET_OVERLAP_HOURS), so receivers switch without
missing a delivery. A URL is checked against the SSRF guard when saved.
``POST /webhook-endpoints/{id}/replay`` sends again what failed there since a
time, once the receiver is fixed.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Field, Query, Router, Schema, Status
from pydantic import AwareDatetime, ConfigDict

from channels_delivery.models import WebhookEndpoint
from channels_delivery.providers.base import ConfigInvalid
from channels_delivery.services.webhooks import (
    DESCRIPTION_MAX_LENGTH,
    EVENT_TYPES_MAX,
    SECRET_PREFIX,
    URL_MAX_LENGTH,
    endpoint_create,
    endpoint_delete,
    endpoint_disable,
    endpoint_get,
    endpoint_secret,
    endpoint_secret_rotate,
    endpoint_update,
    endpoints_list,
    webhook_messages_replay_failed,
)
from herald.api import ProblemOut, ValidationProblemOut, principal_of, require_scope
from herald.problems import FieldError, json_pointer, problem_response, validation_problem
from rules_engine.api.event_types import not_nullable
from rules_engine.api.subscribers import PageQuery
from tenants.models import ApiScope

router = Router(tags=["webhook endpoints"])

URL_DESCRIPTION = (
    "An http(s) URL on a public address: loopback, private, link-local and "
    "metadata addresses are refused (after DNS resolution, and again on every delivery)."
)
EVENT_TYPES_DESCRIPTION = (
    f"Event type keys, and status callback types (message.sent, message.delivered, "
    f"message.failed, message.read, endpoint.disabled), this endpoint receives; "
    f"empty: every event type. At most {EVENT_TYPES_MAX}."
)
# How far back a replay may reach: attempts and callbacks older than this are
# not worth sending again, and the bound keeps one request's work in proportion.
REPLAY_MAX_DAYS = 30
SECRET_DESCRIPTION = (
    f"A signing secret of your own: {SECRET_PREFIX!r} followed by the standard base64 of "
    "24 to 64 random bytes. Left out: Herald generates one."
)


def require_admin(request: HttpRequest) -> None:
    require_scope(request, ApiScope.ADMIN)


def config_invalid_response(invalid: ConfigInvalid) -> HttpResponse:
    return validation_problem(
        [
            FieldError(pointer=json_pointer([field]), detail=message)
            for field, message in invalid.errors.items()
        ]
    )


def _endpoint_or_404(endpoint_id: int) -> WebhookEndpoint:
    endpoint = endpoint_get(endpoint_id=endpoint_id)
    if endpoint is None:
        raise Http404(f"No webhook endpoint {endpoint_id} in this tenant.")
    return endpoint


# --- schemas ------------------------------------------------------------------------


class EndpointIn(Schema):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=URL_MAX_LENGTH, description=URL_DESCRIPTION)
    description: str = Field(default="", max_length=DESCRIPTION_MAX_LENGTH)
    event_types: list[str] = Field(default_factory=list, description=EVENT_TYPES_DESCRIPTION)
    enabled: bool = True
    secret: str | None = Field(default=None, description=SECRET_DESCRIPTION)


class EndpointPatchIn(Schema):
    """Fields to change; those left out stay. Enabling a disabled endpoint clears
    why it was disabled and its failure streak."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        max_length=URL_MAX_LENGTH,
        description=URL_DESCRIPTION,
        json_schema_extra=not_nullable,
    )
    description: str | None = Field(
        default=None, max_length=DESCRIPTION_MAX_LENGTH, json_schema_extra=not_nullable
    )
    event_types: list[str] | None = Field(
        default=None, description=EVENT_TYPES_DESCRIPTION, json_schema_extra=not_nullable
    )
    enabled: bool | None = Field(default=None, json_schema_extra=not_nullable)


class RotateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    secret: str | None = Field(default=None, description=SECRET_DESCRIPTION)


class ReplayIn(Schema):
    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime = Field(
        description=f"Replay what failed at or after this time: ISO 8601 with a UTC offset, "
        f"at most {REPLAY_MAX_DAYS} days ago and not in the future."
    )


class ReplayedOut(Schema):
    replayed: int = Field(
        description="How many failed webhook messages were queued again (failed status "
        "callbacks to the endpoint are queued again too, and not counted here)."
    )


class EndpointOut(Schema):
    id: int
    url: str
    description: str
    event_types: list[str] = Field(description="Empty: every event type.")
    enabled: bool
    disabled_reason: str = Field(
        description="Why the endpoint was disabled (by Herald or through the API); "
        "empty while enabled."
    )
    failing_since: datetime | None = Field(
        description="When deliveries started failing with no success since; null while "
        "healthy. An endpoint failing for HERALD_WEBHOOK_DISABLE_AFTER_DAYS is disabled."
    )
    slow_until: datetime | None = Field(
        description="Until then its deliveries run in the slow lane, because it answered "
        "slowly or not at all; null: not slow."
    )
    created_at: datetime
    updated_at: datetime


class EndpointCreatedOut(EndpointOut):
    secret: str = Field(
        description="The signing secret; GET /webhook-endpoints/{id}/secret reads it again."
    )


class EndpointPageOut(Schema):
    items: list[EndpointOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class EndpointListQuery(PageQuery):
    enabled: bool | None = Field(default=None, description="Only enabled, or disabled, ones.")


class SecretOut(Schema):
    secret: str = Field(description="The current signing secret (whsec_…).")


def _endpoint_out(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.pk,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": endpoint.failing_since,
        "slow_until": endpoint.slow_until,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


# --- operations -----------------------------------------------------------------------


@router.get(
    "",
    response={200: EndpointPageOut, 400: ProblemOut, 422: ValidationProblemOut},
    summary="List webhook endpoints",
)
def endpoints_page(request: HttpRequest, query: Query[EndpointListQuery]) -> Any:
    """Endpoints, oldest first, a page at a time, with their health; `enabled` filters."""
    require_admin(request)
    found = endpoints_list(enabled=query.enabled, cursor=query.cursor, limit=query.limit)
    return {
        "items": [_endpoint_out(endpoint) for endpoint in found.items],
        "next_cursor": found.next_cursor,
    }


@router.post(
    "",
    response={201: EndpointCreatedOut, 422: ValidationProblemOut},
    summary="Create a webhook endpoint",
)
def endpoints_create(request: HttpRequest, body: EndpointIn) -> Any:
    """Create an endpoint with a new signing secret (or `secret`, one of your
    own), answered here once; `GET /webhook-endpoints/{id}/secret` reads it again.
    An unsafe URL is refused with the guard's reason at /url."""
    require_admin(request)
    try:
        endpoint = endpoint_create(
            url=body.url,
            description=body.description,
            event_types=body.event_types,
            secret=body.secret,
            enabled=body.enabled,
        )
    except ConfigInvalid as invalid:
        return config_invalid_response(invalid)
    return Status(201, {**_endpoint_out(endpoint), "secret": endpoint_secret(endpoint=endpoint)})


@router.get(
    "/{endpoint_id}",
    response={200: EndpointOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Get a webhook endpoint",
)
def endpoints_read(request: HttpRequest, endpoint_id: int) -> Any:
    """The endpoint and its health; not its secret."""
    require_admin(request)
    return _endpoint_out(_endpoint_or_404(endpoint_id))


@router.patch(
    "/{endpoint_id}",
    response={200: EndpointOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Change a webhook endpoint",
)
def endpoints_update(request: HttpRequest, endpoint_id: int, body: EndpointPatchIn) -> Any:
    """Change some fields; those left out stay. Disabling records who did it as
    the reason (and tells the endpoints that subscribe to `endpoint.disabled`);
    enabling clears the reason and the failure streak."""
    require_admin(request)
    endpoint = _endpoint_or_404(endpoint_id)
    sent = body.model_dump(exclude_unset=True)
    nulls = [
        FieldError(pointer=f"/{field}", detail="may not be null")
        for field, value in sent.items()
        if value is None
    ]
    if nulls:
        return validation_problem(nulls)
    disabling = body.enabled is False and endpoint.enabled
    try:
        with transaction.atomic():
            endpoint_update(
                endpoint=endpoint,
                url=body.url,
                description=body.description,
                event_types=body.event_types,
                enabled=None if disabling else body.enabled,
            )
            if disabling:
                key = principal_of(request).prefix
                endpoint_disable(endpoint=endpoint, reason=f"disabled through the API (key {key}…)")
    except ConfigInvalid as invalid:
        return config_invalid_response(invalid)
    return _endpoint_out(endpoint)


@router.delete(
    "/{endpoint_id}",
    response={204: None, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Delete a webhook endpoint",
)
def endpoints_delete(request: HttpRequest, endpoint_id: int) -> Any:
    """Delete the endpoint; nothing more is sent to it. Messages already sent to
    it keep their attempts."""
    require_admin(request)
    endpoint_delete(endpoint=_endpoint_or_404(endpoint_id))
    return Status(204, None)


@router.post(
    "/{endpoint_id}/rotate-secret",
    response={200: SecretOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Rotate a webhook endpoint's secret",
)
def endpoints_secret_rotate(
    request: HttpRequest, endpoint_id: int, body: RotateIn | None = None
) -> Any:
    """Give the endpoint a new signing secret (or `secret`, one of your own) and
    answer it. The previous secret keeps signing next to it for the overlap
    (HERALD_WEBHOOK_SECRET_OVERLAP_HOURS, 24 by default), so update the receiver
    within that time. The body is optional."""
    require_admin(request)
    endpoint = _endpoint_or_404(endpoint_id)
    try:
        secret = endpoint_secret_rotate(
            endpoint=endpoint, secret=body.secret if body is not None else None
        )
    except ConfigInvalid as invalid:
        return config_invalid_response(invalid)
    return {"secret": secret}


@router.get(
    "/{endpoint_id}/secret",
    response={200: SecretOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Read a webhook endpoint's secret",
)
def endpoints_secret_read(request: HttpRequest, endpoint_id: int) -> Any:
    """The current signing secret, to configure the receiver with."""
    require_admin(request)
    return {"secret": endpoint_secret(endpoint=_endpoint_or_404(endpoint_id))}


def _since_errors(since: datetime, now: datetime) -> list[FieldError]:
    try:
        in_utc = since.astimezone(UTC)
    except OverflowError:
        return [FieldError(pointer="/since", detail="is out of range")]
    if in_utc > now:
        return [FieldError(pointer="/since", detail="may not be in the future")]
    if in_utc < now - timedelta(days=REPLAY_MAX_DAYS):
        return [
            FieldError(
                pointer="/since",
                detail=f"may be at most {REPLAY_MAX_DAYS} days ago (not before "
                f"{now - timedelta(days=REPLAY_MAX_DAYS):%Y-%m-%dT%H:%M:%SZ})",
            )
        ]
    return []


@router.post(
    "/{endpoint_id}/replay",
    response={
        202: ReplayedOut,
        404: ProblemOut,
        409: ProblemOut,
        422: ValidationProblemOut,
    },
    summary="Replay what failed at a webhook endpoint",
)
def endpoints_replay(request: HttpRequest, endpoint_id: int, body: ReplayIn) -> Any:
    """Queue again, with a fresh retry schedule, every webhook message that failed
    at or after `since` and was tried at this endpoint, and the status callbacks
    to it that failed since then. A message goes to the endpoints that have not
    accepted it yet, so receivers that had it are not sent it twice. A disabled
    endpoint is `409 endpoint-disabled`: enable it first."""
    require_admin(request)
    endpoint = _endpoint_or_404(endpoint_id)
    errors = _since_errors(body.since, timezone.now())
    if errors:
        return validation_problem(errors)
    if not endpoint.enabled:
        return problem_response(
            status=409,
            slug="endpoint-disabled",
            title="Endpoint disabled",
            detail=f"Webhook endpoint {endpoint.pk} is disabled "
            f"({endpoint.disabled_reason or 'no reason recorded'}), so nothing would reach it; "
            "enable it (PATCH enabled: true), then replay.",
        )
    replayed = webhook_messages_replay_failed(since=body.since, endpoint_id=endpoint.pk)
    return Status(202, {"replayed": replayed})
