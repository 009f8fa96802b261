"""Writes of preferences: a subscriber's opt-ins and opt-outs, and the tenant's defaults.

Both are upserts: the settings given replace the rows with the same event
type or category and channel; other rows stay. Nobody can opt out of a
critical event type by name (critical events ignore opt-outs anyway, so
accepting one would be a promise Herald does not keep).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from channels_delivery.catalogue import Channel
from herald.problems import FieldError
from rules_engine.models import EventType, Preference, Subscriber
from rules_engine.services.subscribers import InvalidInput

EVENT_TYPE_MAX_LENGTH = 200
CATEGORY_MAX_LENGTH = 100
MAX_SETTINGS = 1000


@dataclass(frozen=True, kw_only=True)
class PreferenceSetting:
    """Opt in or out of ``channel`` for one event type, one category, or (neither) everything."""

    channel: str
    enabled: bool
    event_type: str = ""
    category: str = ""


class CriticalEventTypeOptOut(ValueError):
    def __init__(self, event_types: Sequence[str]) -> None:
        self.event_types = tuple(event_types)
        super().__init__(
            "Critical event types can not be opted out of: " + ", ".join(self.event_types)
        )


def _setting_errors(settings: Sequence[PreferenceSetting]) -> list[FieldError]:
    errors: list[FieldError] = []
    if len(settings) > MAX_SETTINGS:
        return [FieldError(pointer="", detail=f"at most {MAX_SETTINGS} settings per request")]
    first_index: dict[tuple[str, str, str], int] = {}
    for index, setting in enumerate(settings):
        if setting.channel not in Channel.values:
            errors.append(
                FieldError(
                    pointer=f"/{index}/channel",
                    detail=f"{setting.channel!r} is not one of {', '.join(Channel.values)}",
                )
            )
        if setting.event_type and setting.category:
            errors.append(
                FieldError(pointer=f"/{index}", detail="give event_type or category, not both")
            )
        if len(setting.event_type) > EVENT_TYPE_MAX_LENGTH:
            errors.append(
                FieldError(
                    pointer=f"/{index}/event_type",
                    detail=f"must be at most {EVENT_TYPE_MAX_LENGTH} characters",
                )
            )
        if len(setting.category) > CATEGORY_MAX_LENGTH:
            errors.append(
                FieldError(
                    pointer=f"/{index}/category",
                    detail=f"must be at most {CATEGORY_MAX_LENGTH} characters",
                )
            )
        scope = (setting.event_type, setting.category, setting.channel)
        if scope in first_index:
            errors.append(
                FieldError(
                    pointer=f"/{index}",
                    detail=f"repeats the setting at index {first_index[scope]}",
                )
            )
        else:
            first_index[scope] = index
    return errors


def _preferences_upsert(
    *, subscriber: Subscriber | None, settings: Sequence[PreferenceSetting]
) -> None:
    errors = _setting_errors(settings)
    if errors:
        raise InvalidInput(errors)
    opted_out = {s.event_type for s in settings if s.event_type and not s.enabled}
    if opted_out:
        critical = EventType.objects.filter(key__in=opted_out, is_critical=True)
        refused = sorted(critical.values_list("key", flat=True))
        if refused:
            raise CriticalEventTypeOptOut(refused)
    if not settings:
        return
    # One INSERT … ON CONFLICT: all settings are saved, or none.
    Preference.objects.bulk_create(
        [
            Preference(
                subscriber=subscriber,
                event_type_key=setting.event_type,
                category=setting.category,
                channel=setting.channel,
                enabled=setting.enabled,
            )
            for setting in settings
        ],
        update_conflicts=True,
        unique_fields=["subscriber", "event_type_key", "category", "channel"],
        update_fields=["enabled", "updated_at"],
    )


def preference_subscriber_set(
    *, subscriber: Subscriber, settings: Sequence[PreferenceSetting]
) -> None:
    """Record the subscriber's choices. Raises InvalidInput (pointers index into
    ``settings``) or CriticalEventTypeOptOut; nothing is saved then."""
    _preferences_upsert(subscriber=subscriber, settings=settings)


def preference_defaults_set(*, settings: Sequence[PreferenceSetting]) -> None:
    """Set the tenant's defaults for every subscriber who has not chosen otherwise.
    Raises as preference_subscriber_set does."""
    _preferences_upsert(subscriber=None, settings=settings)
