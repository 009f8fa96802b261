"""/api/v1/subscribers/{external_id}/preferences: a subscriber's opt-ins and opt-outs.

Mounted under /subscribers next to the subscribers router. The tenant's
defaults live at /api/v1/preferences/defaults (``defaults_router``), since
``/subscribers/defaults/…`` would collide with an external id.
"""

from typing import Any, Literal

from django.http import HttpRequest, HttpResponse
from ninja import Field, Router, Schema
from pydantic import ConfigDict

from herald.api import ProblemOut, ValidationProblemOut, require_scope
from herald.problems import problem_response
from rules_engine.api.subscribers import (
    invalid_input_response,
    require_read_scope,
    require_write_scope,
    subscriber_or_404,
)
from rules_engine.selectors.preferences import (
    EffectivePreference,
    preference_default_list,
    preference_effective_list,
)
from rules_engine.services.preferences import (
    CriticalEventTypeOptOut,
    PreferenceSetting,
    preference_defaults_set,
    preference_subscriber_set,
)
from rules_engine.services.subscribers import InvalidInput

router = Router(tags=["preferences"])


class PreferenceIn(Schema):
    """Give event_type, or category, or neither (every event); not both."""

    model_config = ConfigDict(extra="forbid")

    event_type: str | None = Field(default=None, description="An event type's key.")
    category: str | None = Field(default=None, description="An event type category.")
    channel: str = Field(description="email, sms, webhook, chat, in_app or push")
    enabled: bool


class PreferencesIn(Schema):
    model_config = ConfigDict(extra="forbid")

    preferences: list[PreferenceIn]


class PreferenceOut(Schema):
    event_type: str | None
    category: str | None
    channel: str
    enabled: bool
    source: Literal["subscriber", "default"] = Field(
        description="subscriber: the subscriber's own choice; default: the tenant's default."
    )


class PreferencesOut(Schema):
    preferences: list[PreferenceOut]


def _preferences_out(preferences: list[EffectivePreference]) -> dict[str, Any]:
    return {
        "preferences": [
            {
                "event_type": p.event_type,
                "category": p.category,
                "channel": p.channel,
                "enabled": p.enabled,
                "source": p.source,
            }
            for p in preferences
        ]
    }


def _settings(body: PreferencesIn) -> list[PreferenceSetting]:
    return [
        PreferenceSetting(
            event_type=item.event_type or "",
            category=item.category or "",
            channel=item.channel,
            enabled=item.enabled,
        )
        for item in body.preferences
    ]


def critical_opt_out_response(refusal: CriticalEventTypeOptOut) -> HttpResponse:
    names = ", ".join(refusal.event_types)
    return problem_response(
        status=422,
        slug="critical-event-type",
        title="Critical event type",
        detail=f"{names} is critical: its notifications reach every subscriber, "
        "so it can not be opted out of.",
        event_types=list(refusal.event_types),
    )


@router.get(
    "/{external_id}/preferences",
    response={200: PreferencesOut, 404: ProblemOut},
    summary="Get a subscriber's preferences",
)
def preferences_read(request: HttpRequest, external_id: str) -> Any:
    """The preferences in effect: the tenant's defaults, overlaid by the
    subscriber's own choices; `source` says which one each comes from."""
    require_read_scope(request)
    subscriber = subscriber_or_404(external_id)
    return _preferences_out(preference_effective_list(subscriber=subscriber))


@router.put(
    "/{external_id}/preferences",
    response={200: PreferencesOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Set a subscriber's preferences",
)
def preferences_update(request: HttpRequest, external_id: str, body: PreferencesIn) -> Any:
    """Record the subscriber's choices: each replaces the subscriber's earlier
    choice for the same event type or category and channel; choices not
    mentioned stay. Opting out of a critical event type is refused (422
    critical-event-type) and nothing is saved. Returns the preferences in effect."""
    require_write_scope(request)
    subscriber = subscriber_or_404(external_id)
    settings = _settings(body)
    try:
        preference_subscriber_set(subscriber=subscriber, settings=settings)
    except InvalidInput as invalid:
        return invalid_input_response(invalid, prefix="/preferences")
    except CriticalEventTypeOptOut as refusal:
        return critical_opt_out_response(refusal)
    return _preferences_out(preference_effective_list(subscriber=subscriber))


# The tenant's defaults, at /api/v1/preferences/defaults.
defaults_router = Router(tags=["preferences"])


@defaults_router.get(
    "/defaults", response={200: PreferencesOut}, summary="Get the tenant's default preferences"
)
def preference_defaults_read(request: HttpRequest) -> Any:
    """What every subscriber gets unless they chose otherwise."""
    require_read_scope(request)
    return _preferences_out(preference_default_list())


@defaults_router.put(
    "/defaults",
    response={200: PreferencesOut, 422: ValidationProblemOut},
    summary="Set the tenant's default preferences",
)
def preference_defaults_update(request: HttpRequest, body: PreferencesIn) -> Any:
    """Set defaults for every subscriber (the `admin` scope: this is configuration).
    Each replaces the earlier default for the same event type or category and
    channel; defaults not mentioned stay."""
    require_scope(request, "admin")
    settings = _settings(body)
    try:
        preference_defaults_set(settings=settings)
    except InvalidInput as invalid:
        return invalid_input_response(invalid, prefix="/preferences")
    return _preferences_out(preference_default_list())
