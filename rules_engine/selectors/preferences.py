"""Reads of preferences: a subscriber's own choices over the tenant's defaults."""

from dataclasses import dataclass
from typing import Literal

from django.db.models import Q

from rules_engine.models import Preference, Subscriber

PreferenceSource = Literal["subscriber", "default"]


@dataclass(frozen=True, kw_only=True)
class EffectivePreference:
    """One opt-in or opt-out; ``event_type`` and ``category`` are None when unscoped."""

    event_type: str | None
    category: str | None
    channel: str
    enabled: bool
    source: PreferenceSource


def _scope(preference: Preference) -> tuple[str, str, str]:
    return (preference.event_type_key, preference.category, preference.channel)


def _effective(preference: Preference, source: PreferenceSource) -> EffectivePreference:
    return EffectivePreference(
        event_type=preference.event_type_key or None,
        category=preference.category or None,
        channel=preference.channel,
        enabled=preference.enabled,
        source=source,
    )


def preference_default_list() -> list[EffectivePreference]:
    """The tenant's defaults: what a subscriber who chose nothing gets."""
    defaults = sorted(Preference.objects.filter(subscriber__isnull=True), key=_scope)
    return [_effective(preference, "default") for preference in defaults]


def preference_effective_list(*, subscriber: Subscriber) -> list[EffectivePreference]:
    """The tenant's defaults overlaid by the subscriber's own rows, in one query.

    A subscriber's row replaces the default with the same event type or
    category and channel; the other defaults still apply.
    """
    rows = Preference.objects.filter(Q(subscriber=subscriber) | Q(subscriber__isnull=True))
    effective: dict[tuple[str, str, str], EffectivePreference] = {}
    for preference in sorted(rows, key=lambda row: row.subscriber_id is not None):
        source: PreferenceSource = "default" if preference.subscriber_id is None else "subscriber"
        effective[_scope(preference)] = _effective(preference, source)
    return [effective[scope] for scope in sorted(effective)]
