"""/api/v1/integrations: the tenant's provider accounts, one per provider and channel.

Everything here needs the ``admin`` scope: an integration holds the credentials
Herald sends with. A config is what the provider's ``validate_config`` takes;
the provider's secret fields (passwords, API keys, tokens) are write-only:
answers say which of them are set (``secrets_set``), never their values.
``GET /integrations/providers`` lists what each provider takes, so a client
knows what to send.

An ``anymail`` integration also has an ESP tracking webhook (channels_delivery.
esp_tracking): ``tracking_webhook_url`` in every answer, and the basic-auth
credentials the ESP must send only from ``GET /integrations/{id}/tracking-webhook``.
"""

import inspect
from datetime import datetime
from typing import Annotated, Any

from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict

from channels_delivery.catalogue import BUILT_IN_CHANNELS, Channel
from channels_delivery.esp_tracking import (
    TrackingUnavailable,
    esp_tracking_url,
    esp_tracking_webhook,
)
from channels_delivery.models import Integration
from channels_delivery.providers.base import ConfigInvalid, provider_get, providers_for
from channels_delivery.services.integrations import (
    NAME_MAX_LENGTH,
    RATE_LIMIT_MAX,
    IntegrationExists,
    integration_create,
    integration_delete,
    integration_get,
    integration_list,
    integration_secret_fields_set,
    integration_update,
)
from herald.api import ProblemOut, ValidationProblemOut, require_scope
from herald.problems import FieldError, json_pointer, problem_response, validation_problem
from rules_engine.api.event_types import not_nullable
from rules_engine.api.subscribers import PageQuery
from tenants.models import ApiScope

router = Router(tags=["integrations"])

# The fields of an integration itself; any other field a service names is one of
# the provider's config fields.
TOP_LEVEL_FIELDS = frozenset(
    {"channel", "provider", "name", "priority", "enabled", "rate_limit_per_second"}
)
PRIORITY_RANGE = (-1000, 1000)

Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH)]
Priority = Annotated[
    int,
    Field(
        ge=PRIORITY_RANGE[0],
        le=PRIORITY_RANGE[1],
        description="Lower is tried first: the primary, then the fallbacks of the channel.",
    ),
]
RateLimit = Annotated[
    int,
    Field(
        ge=1,
        le=RATE_LIMIT_MAX,
        description="At most this many messages a second through this integration, "
        "across all workers; a message over the limit waits, no attempt spent.",
    ),
]
CONFIG_DESCRIPTION = (
    "The provider's fields, secrets included (GET /integrations/providers lists them)."
)


def require_admin(request: HttpRequest) -> None:
    require_scope(request, ApiScope.ADMIN)


def config_invalid_response(invalid: ConfigInvalid) -> HttpResponse:
    """The service's field errors as JSON pointers: the integration's own fields
    at the root, the provider's under /config."""
    return validation_problem(
        [
            FieldError(
                pointer=json_pointer([field] if field in TOP_LEVEL_FIELDS else ["config", field]),
                detail=message,
            )
            for field, message in invalid.errors.items()
        ]
    )


def conflict_response(exists: IntegrationExists) -> HttpResponse:
    return problem_response(
        status=409,
        slug="conflict",
        title="Conflict",
        detail=f"{exists.errors['name']}; choose another name or change that integration.",
    )


class IntegrationIn(Schema):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    provider: str = Field(min_length=1, max_length=50, description="A provider of the channel.")
    name: Name = Field(description="Unique per channel.")
    config: dict[str, Any] = Field(default_factory=dict, description=CONFIG_DESCRIPTION)
    priority: Priority = 0
    enabled: bool = True
    rate_limit_per_second: RateLimit | None = Field(default=None, description="null: no limit.")


class IntegrationPatchIn(Schema):
    """Fields to change; those left out stay. ``config`` is merged field by field
    into the stored one: a field sent replaces its value, ``null`` removes it (a
    secret is cleared; another field goes back to the provider's default), and a
    secret left out, or sent as an empty string, keeps its value. The channel and
    provider are fixed: make a new integration to change them."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = Field(default=None, json_schema_extra=not_nullable)
    config: dict[str, Any] | None = Field(
        default=None, description=CONFIG_DESCRIPTION, json_schema_extra=not_nullable
    )
    priority: Priority | None = Field(default=None, json_schema_extra=not_nullable)
    enabled: bool | None = Field(default=None, json_schema_extra=not_nullable)
    rate_limit_per_second: RateLimit | None = Field(
        default=None, description="null removes the limit."
    )


class IntegrationOut(Schema):
    id: int
    channel: Channel
    provider: str
    name: str
    config: dict[str, Any] = Field(description="The provider's fields, without the secrets.")
    secrets_set: list[str] = Field(
        description="Which of the provider's secret fields hold a value (never the values)."
    )
    priority: int
    enabled: bool
    rate_limit_per_second: int | None = Field(description="Messages a second; null: no limit.")
    tracking_webhook_url: str | None = Field(
        description="Where the ESP reports deliveries, bounces, opens and clicks (an "
        "`anymail` integration); null for any other. It takes HTTP basic auth: "
        "GET /integrations/{id}/tracking-webhook answers the credentials."
    )
    created_at: datetime
    updated_at: datetime


class TrackingWebhookOut(Schema):
    esp: str = Field(description="The ESP this integration sends through.")
    url: str = Field(description="The webhook URL to enter at the ESP.")
    username: str = Field(description="HTTP basic auth user the ESP must send.")
    password: str = Field(description="HTTP basic auth password the ESP must send.")
    url_with_credentials: str = Field(
        description="The URL with the credentials in it (https://user:password@host/...), "
        "for ESPs that take basic auth that way."
    )


class IntegrationPageOut(Schema):
    items: list[IntegrationOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class IntegrationListQuery(PageQuery):
    channel: Channel | None = Field(default=None, description="Only this channel's integrations.")


class ProviderOut(Schema):
    key: str
    description: str
    config_fields: list[str] = Field(description="Every field `config` takes, secrets included.")
    secret_fields: list[str] = Field(
        description="The write-only ones among them: stored encrypted, never answered."
    )


class ChannelProvidersOut(Schema):
    channel: Channel
    name: str
    built_in: bool = Field(
        description="Herald delivers this channel itself: it takes no integration "
        "(webhooks go to /webhook-endpoints)."
    )
    providers: list[ProviderOut] = Field(description="Empty for a built-in channel.")


class ProvidersOut(Schema):
    channels: list[ChannelProvidersOut]


def _integration_out(integration: Integration) -> dict[str, Any]:
    return {
        "id": integration.pk,
        "channel": integration.channel,
        "provider": integration.provider,
        "name": integration.name,
        "config": integration.config,
        "secrets_set": integration_secret_fields_set(integration=integration),
        "priority": integration.priority,
        "enabled": integration.enabled,
        "rate_limit_per_second": integration.rate_limit_per_second,
        "tracking_webhook_url": esp_tracking_url(integration=integration),
        "created_at": integration.created_at,
        "updated_at": integration.updated_at,
    }


def _integration_or_404(integration_id: int) -> Integration:
    integration = integration_get(integration_id=integration_id)
    if integration is None:
        raise Http404(f"No integration {integration_id} in this tenant.")
    return integration


def _provider_out(channel: str, key: str) -> dict[str, Any]:
    provider = type(provider_get(channel=channel, key=key))
    return {
        "key": key,
        "description": inspect.cleandoc(provider.__doc__ or ""),
        "config_fields": sorted(provider.config_fields),
        "secret_fields": sorted(provider.secret_fields),
    }


# Before /{integration_id}, so that "providers" is never read as an id.
@router.get("/providers", response={200: ProvidersOut}, summary="List channels and providers")
def integrations_providers(request: HttpRequest) -> Any:
    """Each channel with the providers an integration may use on it, and the
    fields each provider's config takes."""
    require_admin(request)
    return {
        "channels": [
            {
                "channel": channel.value,
                "name": channel.label,
                "built_in": channel in BUILT_IN_CHANNELS,
                "providers": []
                if channel in BUILT_IN_CHANNELS
                else [_provider_out(channel.value, key) for key in providers_for(channel.value)],
            }
            for channel in Channel
        ]
    }


@router.get(
    "",
    response={200: IntegrationPageOut, 400: ProblemOut, 422: ValidationProblemOut},
    summary="List integrations",
)
def integrations_list(request: HttpRequest, query: Query[IntegrationListQuery]) -> Any:
    """Integrations by priority then id (send order within a channel), a page at
    a time; `channel` filters."""
    require_admin(request)
    found = integration_list(channel=query.channel, cursor=query.cursor, limit=query.limit)
    return {
        "items": [_integration_out(integration) for integration in found.items],
        "next_cursor": found.next_cursor,
    }


@router.post(
    "",
    response={201: IntegrationOut, 409: ProblemOut, 422: ValidationProblemOut},
    summary="Create an integration",
)
def integrations_create(request: HttpRequest, body: IntegrationIn) -> Any:
    """Create an integration after its provider checked the config; every bad
    field is named (under /config for the provider's), and a channel Herald
    delivers itself (in_app, push, webhook) at /channel. A name the channel has
    already: 409."""
    require_admin(request)
    try:
        integration = integration_create(
            channel=body.channel.value,
            provider=body.provider,
            name=body.name,
            config=body.config,
            priority=body.priority,
            enabled=body.enabled,
            rate_limit_per_second=body.rate_limit_per_second,
        )
    except IntegrationExists as exists:
        return conflict_response(exists)
    except ConfigInvalid as invalid:
        return config_invalid_response(invalid)
    return Status(201, _integration_out(integration))


@router.get(
    "/{integration_id}",
    response={200: IntegrationOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Get an integration",
)
def integrations_read(request: HttpRequest, integration_id: int) -> Any:
    require_admin(request)
    return _integration_out(_integration_or_404(integration_id))


@router.get(
    "/{integration_id}/tracking-webhook",
    response={200: TrackingWebhookOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Read an integration's ESP tracking webhook",
)
def integrations_tracking_webhook(request: HttpRequest, integration_id: int) -> Any:
    """The URL and basic-auth credentials to enter at the ESP so that it reports
    what became of each email (delivered, bounced, opened, clicked, complaints).
    An integration that is not `anymail`, or whose ESP's webhook Herald can not
    check: 404."""
    require_admin(request)
    integration = _integration_or_404(integration_id)
    try:
        webhook = esp_tracking_webhook(integration=integration)
    except TrackingUnavailable as unavailable:
        raise Http404(str(unavailable)) from None
    return {
        "esp": webhook.esp,
        "url": webhook.url,
        "username": webhook.username,
        "password": webhook.password,
        "url_with_credentials": webhook.url_with_credentials,
    }


@router.patch(
    "/{integration_id}",
    response={200: IntegrationOut, 404: ProblemOut, 409: ProblemOut, 422: ValidationProblemOut},
    summary="Change an integration",
)
def integrations_update(request: HttpRequest, integration_id: int, body: IntegrationPatchIn) -> Any:
    """Change some fields; those left out stay, and so do the secrets not sent.
    A changed config is checked whole, as on create."""
    require_admin(request)
    integration = _integration_or_404(integration_id)
    sent = body.model_dump(exclude_unset=True)
    nulls = [
        FieldError(pointer=f"/{field}", detail="may not be null")
        for field, value in sent.items()
        if value is None and field != "rate_limit_per_second"
    ]
    if nulls:
        return validation_problem(nulls)
    config = None
    if body.config is not None:
        try:
            provider = provider_get(channel=integration.channel, key=integration.provider)
        except LookupError:  # no longer installed: the service names the problem
            secret_fields: frozenset[str] = frozenset()
        else:
            secret_fields = type(provider).secret_fields
        # The service takes the whole non-secret config; null removes a field.
        merged = {**integration.config, **body.config}
        config = {
            field: value
            for field, value in merged.items()
            if value is not None or field in secret_fields
        }
    try:
        integration_update(
            integration=integration,
            name=body.name,
            config=config,
            priority=body.priority,
            enabled=body.enabled,
            # The service reads None as "unchanged" and 0 as "no limit".
            rate_limit_per_second=(
                (body.rate_limit_per_second or 0) if "rate_limit_per_second" in sent else None
            ),
        )
    except IntegrationExists as exists:
        return conflict_response(exists)
    except ConfigInvalid as invalid:
        return config_invalid_response(invalid)
    return _integration_out(integration)


@router.delete(
    "/{integration_id}",
    response={204: None, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Delete an integration",
)
def integrations_delete(request: HttpRequest, integration_id: int) -> Any:
    """Delete the integration. Messages sent through it keep their history; the
    channel goes on with its other integrations."""
    require_admin(request)
    integration_delete(integration=_integration_or_404(integration_id))
    return Status(204, None)
