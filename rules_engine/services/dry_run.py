"""A rule's dry run: what it would do with an event, and nothing written.

The dashboard's "test" button and ``POST /api/v1/rules/{id}/test`` run one rule
(its current version, enabled or not) against a sample payload or a stored
event through the pipeline's own ``event_plan``, so the answer is what
processing would decide: whether the condition holds, who gets which rendered
message on which channel and when, and who is skipped and why.

Nothing is written: the event is not stored (a stored one is only read), no
message is made, and the event's inline profiles are shown as the pipeline
would save them (merged over the stored profile, validated the same way)
without saving them.
"""

import itertools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from django.utils import timezone

from channels_delivery.services.messages import NewMessage
from herald.problems import FieldError
from rules_engine.cel import CelError
from rules_engine.models import Event, Rule, Subscriber, TemplateVersion
from rules_engine.recipients import (
    RECIPIENT_FIELDS,
    Recipient,
    Skipped,
    _profile_from_inline,  # the merge the pipeline's upsert does, so the preview matches it
)
from rules_engine.selectors.rules import rule_versions_current
from rules_engine.services.events import EventDraft, event_errors
from rules_engine.services.pipeline import event_plan
from rules_engine.services.subscribers import (
    UPDATABLE_FIELDS,
    InvalidInput,
    subscriber_profile_clean,
)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# Inline profile fields that are strings; the others (data, channels) are objects.
_TEXT_FIELDS = frozenset({"email", "phone", "name", "locale", "timezone"})

Source = Literal["payload", "sample", "event"]


class DryRunNotFound(LookupError):
    """The stored event to run the rule against (or the rule itself, deleted
    meanwhile) does not exist in this tenant."""


@dataclass(frozen=True, kw_only=True)
class RenderedMessage:
    """The message one recipient would get on one channel."""

    channel: str
    template: str
    template_version: int
    locale: str
    content: Mapping[str, str]
    """The rendered fields; empty when rendering failed."""
    error: str | None
    """Why rendering failed (the field and the template's error); such a message
    would be stored as failed and never sent."""
    send_after: datetime | None
    """Not before when (None: at once), from the rule's delay and send window."""


@dataclass(frozen=True, kw_only=True)
class DryRunRecipient:
    external_id: str
    name: str
    saved: bool
    """False for an inline profile of a subscriber who does not exist yet."""
    messages: tuple[RenderedMessage, ...]
    digest_key: str | None = None
    """For a digest rule: the key of the batch the event would join instead of a
    message (the digest is rendered when its window closes)."""


@dataclass(frozen=True, kw_only=True)
class DryRunSkip:
    subscriber: str
    """The external id, or "*" when the reason concerns everyone (no such topic)."""
    channel: str | None
    reason: str


@dataclass(frozen=True, kw_only=True)
class DryRunCounts:
    """Totals over the whole run, however many the lists show."""

    recipients: int
    """Subscribers who would get a message, or whose digest batch would get the event."""
    messages: int
    render_errors: int
    digested: int
    skipped: int


@dataclass(frozen=True, kw_only=True)
class DryRunResult:
    rule_id: int
    rule_version: int
    enabled: bool
    """A disabled rule runs here all the same; events do not run it."""
    event_type: str
    critical: bool
    """Critical event types reach subscribers who opted out (no preference skips)."""
    source: Source
    event_id: uuid.UUID | None
    """The stored event run against (None for a payload or the sample)."""
    matched: bool
    error: str | None
    """Why the rule could not be evaluated: its condition's error, or its broadcast
    filter's errors, prefixed with which."""
    recipients: tuple[DryRunRecipient, ...]
    skipped: tuple[DryRunSkip, ...]
    counts: DryRunCounts
    truncated: bool
    """More recipients or skips than ``limit``: the lists hold the first ``limit``."""


def _field_error(pointer: str, detail: str) -> InvalidInput:
    return InvalidInput([FieldError(pointer=pointer, detail=detail)])


def _inline_shape_errors(profile: Mapping[str, Any]) -> list[str]:
    """What the profile's fields have of the wrong type (the API's schema refuses
    these already; other callers reach the service directly)."""
    problems = []
    for name in UPDATABLE_FIELDS:
        value = profile.get(name)
        if value is None:
            continue
        if name in _TEXT_FIELDS and not isinstance(value, str):
            problems.append(f"/{name}: must be a string")
        elif name not in _TEXT_FIELDS and not isinstance(value, Mapping):
            problems.append(f"/{name}: must be an object")
    return problems


def _to_checked(to: Sequence[Any]) -> list[Any]:
    """``to`` as the event would hold it: external ids and inline profiles."""
    if isinstance(to, str | bytes) or not isinstance(to, Sequence):
        raise _field_error("/to", "must be a list of subscriber ids or inline profiles")
    errors = []
    for index, entry in enumerate(to):
        if isinstance(entry, str) and entry:
            continue
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str) and entry["id"]:
            continue
        errors.append(
            FieldError(
                pointer=f"/to/{index}",
                detail="must be a subscriber id or an inline profile with an 'id'",
            )
        )
    if errors:
        raise InvalidInput(errors)
    return [entry if isinstance(entry, str) else dict(entry) for entry in to]


def _inline_preview(event_to: Sequence[Any]) -> tuple[dict[str, Recipient], list[Skipped]]:
    """The event's inline profiles as recipient rows, as the pipeline would save
    them, and those it would refuse. One query, no write.

    A profile of a subscriber who does not exist yet gets a negative id: it
    matches no stored preference or message, as a new subscriber's would not.
    """
    latest: dict[str, Mapping[str, Any]] = {}
    for entry in event_to:  # the last profile given for an id wins, as in the upsert
        if isinstance(entry, Mapping):
            latest[str(entry["id"])] = entry
    if not latest:
        return {}, []
    stored = {
        row["external_id"]: row
        for row in Subscriber.objects.filter(external_id__in=list(latest)).values(*RECIPIENT_FIELDS)
    }
    new_ids = itertools.count(-1, -1)
    rows: dict[str, Recipient] = {}
    refused: list[Skipped] = []
    for external_id, profile in latest.items():
        existing = stored.get(external_id)
        problems = _inline_shape_errors(profile)
        if not problems:
            try:
                clean = subscriber_profile_clean(profile=_profile_from_inline(profile, existing))
            except InvalidInput as invalid:
                problems = [f"{error.pointer}: {error.detail}" for error in invalid.errors]
        if problems:
            reason = "invalid inline profile: " + "; ".join(problems)
            refused.append(Skipped(subscriber=external_id, reason=reason))
            continue
        rows[external_id] = {
            "id": existing["id"] if existing is not None else next(new_ids),
            "external_id": external_id,
            "email": clean.email,
            "phone": clean.phone,
            "name": clean.name,
            "locale": clean.locale,
            "timezone": clean.timezone,
            "data": dict(clean.data),
            "channels": dict(clean.channels),
        }
    return rows, refused


def _payload_checked(*, event_type_key: str, payload: Any, source: Source) -> dict[str, Any]:
    """The payload, when it is one the event type's schema would accept."""
    given = "payload" if source == "payload" else "the event type's sample payload"
    if not isinstance(payload, dict):
        raise _field_error("/payload", f"{given} must be an object")
    draft = EventDraft(event=event_type_key, payload=payload)
    errors = event_errors(draft=draft, strict=False)
    if errors and source == "sample":
        detail = "; ".join(f"{error.pointer}: {error.detail}" for error in errors)
        raise _field_error("/payload", f"{given} does not match the payload schema: {detail}")
    if errors:
        raise InvalidInput(errors)
    return payload


def _event_for_run(
    *,
    rule: Rule,
    payload: dict[str, Any] | None,
    event_id: uuid.UUID | None,
    to: Sequence[Any] | None,
    topic: str | None,
    actor: Any,
    now: datetime,
) -> tuple[Event, Source]:
    """An unsaved event to plan for: the stored one (with ``to``, ``topic`` and
    ``actor`` replaced when given), or one made of the payload or the sample."""
    event_type = rule.event_type
    recipients = _to_checked(to) if to is not None else None
    if event_id is not None:
        stored = Event.objects.filter(pk=event_id).first()
        if stored is None:
            raise DryRunNotFound(f"No event {event_id} in this tenant.")
        if stored.event_type_key != event_type.key:
            raise _field_error(
                "/event_id",
                f"event {event_id} is a {stored.event_type_key!r} event; rule {rule.pk} "
                f"runs on {event_type.key!r} events",
            )
        return Event(
            id=stored.id,
            event_type_key=stored.event_type_key,
            recipients=recipients if recipients is not None else stored.recipients,
            topic=topic if topic is not None else stored.topic,
            payload=stored.payload,
            actor=actor if actor is not None else stored.actor,
            tenant_data=stored.tenant_data,
            send_at=stored.send_at,
            created_at=stored.created_at,
        ), "event"
    source: Source = "payload" if payload is not None else "sample"
    checked = _payload_checked(
        event_type_key=event_type.key,
        payload=payload if payload is not None else event_type.sample_payload,
        source=source,
    )
    return Event(
        id=uuid.uuid4(),
        event_type_key=event_type.key,
        recipients=recipients or [],
        topic=topic or "",
        payload=checked,
        actor=actor,
        created_at=now,
    ), source


def _recipients_out(
    messages: Sequence[NewMessage],
    *,
    digest_keys: Mapping[int, str],
    preview: Mapping[str, Recipient],
    actions: Sequence[Mapping[str, str]],
    limit: int,
) -> tuple[list[DryRunRecipient], int]:
    """The first ``limit`` recipients with their messages (or digest batch), and
    how many there are."""
    by_subscriber: dict[int, list[NewMessage]] = {}
    for message in messages:
        by_subscriber.setdefault(message.subscriber_id, []).append(message)
    for subscriber_id in digest_keys:
        by_subscriber.setdefault(subscriber_id, [])
    shown = list(by_subscriber)[:limit]
    people: dict[int, tuple[str, str, bool]] = {
        row["id"]: (row["external_id"], row["name"], row["id"] > 0) for row in preview.values()
    }
    stored_ids = [pk for pk in shown if pk not in people]
    people.update(
        (pk, (external_id, name, True))
        for pk, external_id, name in Subscriber.objects.filter(pk__in=stored_ids).values_list(
            "pk", "external_id", "name"
        )
    )
    version_ids = {m.template_version_id for pk in shown for m in by_subscriber[pk]}
    versions = dict(TemplateVersion.objects.filter(pk__in=version_ids).values_list("pk", "version"))
    templates = {action["channel"]: action["template"] for action in actions}
    out = []
    for pk in shown:
        if pk not in people:  # erased while the run was planned
            continue
        external_id, name, saved = people[pk]
        out.append(
            DryRunRecipient(
                external_id=external_id,
                name=name,
                saved=saved,
                messages=tuple(
                    RenderedMessage(
                        channel=message.channel,
                        template=templates.get(message.channel, ""),
                        template_version=versions.get(message.template_version_id, 0),
                        locale=message.locale,
                        content=message.content,
                        error=message.error or None,
                        send_after=message.send_after,
                    )
                    for message in by_subscriber[pk]
                ),
                digest_key=digest_keys.get(pk),
            )
        )
    return out, len(by_subscriber)


def rule_dry_run(
    *,
    rule: Rule,
    payload: dict[str, Any] | None = None,
    event_id: uuid.UUID | None = None,
    to: Sequence[Any] | None = None,
    topic: str | None = None,
    actor: str | Mapping[str, Any] | None = None,
    limit: int = DEFAULT_LIMIT,
) -> DryRunResult:
    """Run ``rule`` against ``payload`` (default: its event type's sample payload)
    or the stored event ``event_id``, and write nothing.

    ``to``, ``topic`` and ``actor`` are the event's recipients, topic and actor
    (for a stored event: replace its own when given). The lists in the result
    hold at most ``limit`` entries each; the counts are complete.

    Raises InvalidInput naming each invalid field (``payload`` and ``event_id``
    together, a payload the event type's schema refuses, a stored event of
    another type) and DryRunNotFound for an unknown ``event_id``.
    """
    if payload is not None and event_id is not None:
        both = "give payload or event_id, not both"
        raise InvalidInput(
            [
                FieldError(pointer="/payload", detail=both),
                FieldError(pointer="/event_id", detail=both),
            ]
        )
    if not 1 <= limit <= MAX_LIMIT:
        raise _field_error("/limit", f"must be 1 to {MAX_LIMIT}")
    if topic is not None and not isinstance(topic, str):
        raise _field_error("/topic", "must be a topic's key")
    version = rule_versions_current([rule]).get(rule.pk)
    if version is None:  # the rule was deleted since it was read
        raise DryRunNotFound(f"No rule {rule.pk} in this tenant.")
    now = timezone.now()
    event, source = _event_for_run(
        rule=rule,
        payload=payload,
        event_id=event_id,
        to=to,
        topic=topic,
        actor=actor,
        now=now,
    )
    if event.send_at is not None and event.send_at > now:
        now = event.send_at  # a scheduled event is processed then, and timed from then
    is_event_selector = version.recipients.get("kind") == "event"
    preview, refused = _inline_preview(event.recipients) if is_event_selector else ({}, [])
    event_type = rule.event_type
    try:
        plan = event_plan(
            event=event,
            rules=[(rule, version)],
            now=now,
            category=event_type.category,
            critical=event_type.is_critical,
            upsert_inline=False,
            inline_recipients=preview,
        )
    except CelError as error:  # the event's own variables are unusable (nested too deep)
        pointer = "/actor" if error.message.startswith("event.actor") else "/payload"
        raise _field_error(pointer, error.message) from None
    (story,) = plan.rules
    skipped = [*refused, *story.skipped]
    recipients, recipient_total = _recipients_out(
        plan.messages,
        digest_keys={entry.subscriber_id: entry.key for entry in plan.digest_entries},
        preview=preview,
        actions=version.actions,
        limit=limit,
    )
    return DryRunResult(
        rule_id=rule.pk,
        rule_version=version.version,
        enabled=rule.enabled,
        event_type=event_type.key,
        critical=event_type.is_critical,
        source=source,
        event_id=event.id if source == "event" else None,
        matched=story.matched,
        error=story.error,
        recipients=tuple(recipients),
        skipped=tuple(
            DryRunSkip(subscriber=entry.subscriber, channel=entry.channel, reason=entry.reason)
            for entry in skipped[:limit]
        ),
        counts=DryRunCounts(
            recipients=recipient_total,
            messages=len(plan.messages),
            render_errors=story.failed_renders,
            digested=story.digested,
            skipped=len(skipped),
        ),
        truncated=recipient_total > limit or len(skipped) > limit,
    )
