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


class PreferenceResolver:
    """Whether each subscriber may get one event type on each channel, for a whole
    fan-out, from one query.

    A subscriber's own choices come first, then the tenant's defaults; within
    each, the most specific scope wins (the event type, then its category,
    then everything). With no row at all, a channel is allowed.
    """

    def __init__(self, *, event_type_key: str, category: str) -> None:
        scopes = Q(event_type_key=event_type_key) | Q(event_type_key="", category="")
        if category:
            scopes |= Q(category=category)
        self._choices: dict[tuple[int | None, str, int], bool] = {}
        rows = Preference.objects.filter(scopes).values_list(
            "subscriber_id", "event_type_key", "category", "channel", "enabled"
        )
        for subscriber_id, row_event_type, row_category, channel, enabled in rows:
            specificity = 2 if row_event_type else 1 if row_category else 0
            self._choices[(subscriber_id, channel, specificity)] = enabled

    def allows(self, *, subscriber_id: int, channel: str) -> tuple[bool, str]:
        """(allowed, why): why names the choice that decided, for the event's story."""
        for owner, source in ((subscriber_id, "subscriber"), (None, "tenant default")):
            for specificity, scope in ((2, "event type"), (1, "category"), (0, "all")):
                enabled = self._choices.get((owner, channel, specificity))
                if enabled is not None:
                    verdict = "opted in" if enabled else "opted out"
                    return enabled, f"{source} {verdict} ({scope}, {channel})"
        return True, "no preference"
