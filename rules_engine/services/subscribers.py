"""Writes for subscribers: validated upserts, one or a thousand at a time, and erasure.

Validation lives here, not in the API schemas, so that the API, the bulk
endpoint and the dashboard refuse the same profiles with the same messages.
A profile is a full replacement: fields it leaves out are cleared.
"""

import re
import unicodedata
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from channels_delivery.models import DeliveryAttempt, Message
from herald.problems import FieldError, json_pointer
from rules_engine.models import Event, Subscriber

EXTERNAL_ID_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 254
NAME_MAX_LENGTH = 200
LOCALE_MAX_LENGTH = 35
BULK_MAX_PROFILES = 1000
# An id that can not be told apart from a path segment of the API.
RESERVED_EXTERNAL_IDS = frozenset({"bulk"})
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
# BCP 47 without the rare parts (extensions, grandfathered tags): language,
# optional script, optional region, variants. "_" is accepted and normalised.
LOCALE = re.compile(
    r"^(?P<language>[A-Za-z]{2,3})"
    r"(?:[-_](?P<script>[A-Za-z]{4}))?"
    r"(?:[-_](?P<region>[A-Za-z]{2}|\d{3}))?"
    r"(?P<variants>(?:[-_](?:[A-Za-z0-9]{5,8}|\d[A-Za-z0-9]{3}))*)$"
)
ERASED_CONTENT: dict[str, Any] = {"erased": True}
UPDATABLE_FIELDS = ("email", "phone", "name", "locale", "timezone", "data", "channels")


class InvalidInput(ValueError):
    """The input is refused; every problem found is in ``errors``."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"{error.pointer}: {error.detail}" for error in self.errors))


@dataclass(frozen=True, kw_only=True)
class SubscriberProfile:
    """Everything a tenant says about one subscriber."""

    external_id: str
    email: str = ""
    phone: str = ""
    name: str = ""
    locale: str = ""
    timezone: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    channels: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SubscriberUpserted:
    subscriber: Subscriber
    created: bool


@dataclass(frozen=True, kw_only=True)
class BulkUpsertResult:
    """What became of the profile at ``index`` of a bulk request."""

    index: int
    external_id: str
    created: bool = False
    errors: tuple[FieldError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def external_id_errors(value: str) -> list[str]:
    """Why ``value`` can not be a subscriber's external id (empty when it can)."""
    if not value:
        return ["must not be empty"]
    problems = []
    if len(value) > EXTERNAL_ID_MAX_LENGTH:
        problems.append(f"must be at most {EXTERNAL_ID_MAX_LENGTH} characters")
    if any(unicodedata.category(char) == "Cc" for char in value):
        problems.append("must not contain control characters")
    if "/" in value:
        # Django decodes %2F before routing, so /subscribers/{id} could never reach it.
        problems.append("must not contain '/'")
    if value in RESERVED_EXTERNAL_IDS:
        problems.append(f"{value!r} is reserved")
    return problems


def locale_normalise(value: str) -> str | None:
    """``value`` as a canonical BCP 47 tag (``en_us`` -> ``en-US``), or None if it is not one."""
    if len(value) > LOCALE_MAX_LENGTH:
        return None
    match = LOCALE.fullmatch(value)
    if match is None:
        return None
    parts = [match["language"].lower()]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    parts.extend(variant.lower() for variant in re.split(r"[-_]", match["variants"]) if variant)
    return "-".join(parts)


def subscriber_profile_clean(*, profile: SubscriberProfile) -> SubscriberProfile:
    """The profile, normalised; raises InvalidInput naming every invalid field."""
    errors = [
        FieldError(pointer="/external_id", detail=problem)
        for problem in external_id_errors(profile.external_id)
    ]
    if profile.email:
        try:
            if len(profile.email) > EMAIL_MAX_LENGTH:
                raise DjangoValidationError("too long")
            validate_email(profile.email)
        except DjangoValidationError:
            errors.append(
                FieldError(pointer="/email", detail=f"{profile.email!r} is not an email address")
            )
    if profile.phone and not E164.fullmatch(profile.phone):
        errors.append(
            FieldError(
                pointer="/phone",
                detail=f"{profile.phone!r} is not an E.164 number, e.g. +14155550100",
            )
        )
    if len(profile.name) > NAME_MAX_LENGTH:
        errors.append(
            FieldError(pointer="/name", detail=f"must be at most {NAME_MAX_LENGTH} characters")
        )
    locale = profile.locale
    if locale:
        normalised = locale_normalise(locale)
        if normalised is None:
            errors.append(
                FieldError(
                    pointer="/locale",
                    detail=f"{locale!r} is not a BCP 47 language tag, e.g. en-US",
                )
            )
        else:
            locale = normalised
    if profile.timezone and profile.timezone not in _time_zones():
        errors.append(
            FieldError(
                pointer="/timezone",
                detail=f"{profile.timezone!r} is not an IANA time zone, e.g. Europe/Paris",
            )
        )
    if not isinstance(profile.data, Mapping):
        errors.append(FieldError(pointer="/data", detail="must be an object"))
    if isinstance(profile.channels, Mapping):
        errors.extend(
            FieldError(
                pointer=json_pointer(["channels", name]),
                detail="must be an object or a list",
            )
            for name, value in profile.channels.items()
            if not isinstance(value, Mapping | list)
        )
    else:
        errors.append(FieldError(pointer="/channels", detail="must be an object"))
    if errors:
        raise InvalidInput(errors)
    return SubscriberProfile(
        external_id=profile.external_id,
        email=profile.email,
        phone=profile.phone,
        name=profile.name,
        locale=locale,
        timezone=profile.timezone,
        data=dict(profile.data),
        channels=dict(profile.channels),
    )


def _field_values(profile: SubscriberProfile) -> dict[str, Any]:
    return {
        "email": profile.email,
        "phone": profile.phone,
        "name": profile.name,
        "locale": profile.locale,
        "timezone": profile.timezone,
        "data": dict(profile.data),
        "channels": dict(profile.channels),
    }


def subscriber_upsert(*, profile: SubscriberProfile) -> SubscriberUpserted:
    """Create the subscriber, or replace its profile; raises InvalidInput."""
    profile = subscriber_profile_clean(profile=profile)
    subscriber, created = Subscriber.objects.update_or_create(
        external_id=profile.external_id, defaults=_field_values(profile)
    )
    return SubscriberUpserted(subscriber=subscriber, created=created)


def subscriber_bulk_upsert(*, profiles: Sequence[SubscriberProfile]) -> list[BulkUpsertResult]:
    """Upsert many profiles in two statements (SELECT, INSERT … ON CONFLICT); invalid
    ones are reported, not saved.

    Raises InvalidInput only when there are more than BULK_MAX_PROFILES. A
    repeated external id is refused at its second occurrence, because one
    INSERT … ON CONFLICT can not update the same row twice.
    """
    if len(profiles) > BULK_MAX_PROFILES:
        raise InvalidInput(
            [
                FieldError(
                    pointer="/subscribers",
                    detail=f"at most {BULK_MAX_PROFILES} profiles per request; got {len(profiles)}",
                )
            ]
        )
    results: dict[int, BulkUpsertResult] = {}
    valid: list[tuple[int, SubscriberProfile]] = []
    first_index: dict[str, int] = {}
    for index, profile in enumerate(profiles):
        try:
            clean = subscriber_profile_clean(profile=profile)
        except InvalidInput as invalid:
            results[index] = BulkUpsertResult(
                index=index, external_id=profile.external_id, errors=invalid.errors
            )
            continue
        if clean.external_id in first_index:
            duplicate = FieldError(
                pointer="/external_id",
                detail=f"repeats the profile at index {first_index[clean.external_id]}",
            )
            results[index] = BulkUpsertResult(
                index=index, external_id=clean.external_id, errors=(duplicate,)
            )
            continue
        first_index[clean.external_id] = index
        valid.append((index, clean))

    if valid:
        # Not atomic on purpose: the INSERT is one statement, and the SELECT only
        # tells "created" from "updated".
        existing = set(
            Subscriber.objects.filter(external_id__in=list(first_index))
            .order_by()
            .values_list("external_id", flat=True)
        )
        created_at = timezone.now()
        Subscriber.objects.bulk_create(
            [
                Subscriber(
                    external_id=profile.external_id, created_at=created_at, **_field_values(profile)
                )
                for _, profile in valid
            ],
            update_conflicts=True,
            unique_fields=["external_id"],
            update_fields=[*UPDATABLE_FIELDS, "updated_at"],
        )
        for index, profile in valid:
            results[index] = BulkUpsertResult(
                index=index,
                external_id=profile.external_id,
                created=profile.external_id not in existing,
            )
    return [results[index] for index in sorted(results)]


def subscriber_erase(*, subscriber: Subscriber) -> None:
    """Forget a subscriber: its profile, memberships and preferences go; its
    messages keep only their counts (status, channel, times), not their content
    or their delivery attempts' responses; and the events that named it (as a
    recipient, inline profile, actor, or in the pipeline's story) keep the
    entry, with the person replaced by ``ERASED_ENTRY``."""
    external_id = subscriber.external_id
    with transaction.atomic():
        messages = Message.objects.filter(subscriber=subscriber)
        DeliveryAttempt.objects.filter(message__in=messages).update(
            response_excerpt="", error="", provider_message_id=""
        )
        event_ids = set(messages.values_list("event_id", flat=True))
        messages.update(content=ERASED_CONTENT)
        mentions = (
            Q(recipients__contains=[external_id])
            | Q(recipients__contains=[{"id": external_id}])
            | Q(actor=external_id)
            | Q(actor__contains={"id": external_id})
            | Q(pk__in=event_ids)
        )
        for event in Event.objects.filter(mentions).select_for_update():
            event.recipients = [_erased(entry, external_id) for entry in event.recipients]
            event.actor = _erased(event.actor, external_id)
            event.outcome = _outcome_erased(event.outcome, external_id)
            event.save(update_fields=["recipients", "actor", "outcome"])
        subscriber.delete()


ERASED_ENTRY: dict[str, Any] = {"erased": True}


def _erased(entry: Any, external_id: str) -> Any:
    if entry == external_id or (isinstance(entry, Mapping) and entry.get("id") == external_id):
        return ERASED_ENTRY
    return entry


def _outcome_erased(value: Any, external_id: str) -> Any:
    """The pipeline's story without the subscriber's id (in skipped entries)."""
    if isinstance(value, Mapping):
        if value.get("subscriber") == external_id:
            return {**value, "subscriber": "[erased]"}
        return {key: _outcome_erased(item, external_id) for key, item in value.items()}
    if isinstance(value, list):
        return [_outcome_erased(item, external_id) for item in value]
    return value
