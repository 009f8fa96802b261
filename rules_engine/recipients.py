"""Who an event is for: the recipients a rule's selector names, de-duplicated.

Recipients are read as plain rows (``RECIPIENT_FIELDS``), never model
instances: a fan-out to 100,000 subscribers must fit in memory and time.
Each selector costs a bounded number of queries whatever the number of
recipients: the event's ids in one query, a topic's members in one, a
broadcast in one streamed query.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rules_engine.cel import CelError, CelProgram, build_activation
from rules_engine.models import Subscriber, Topic, TopicMembership
from rules_engine.services.subscribers import (
    UPDATABLE_FIELDS,
    InvalidInput,
    SubscriberProfile,
    subscriber_bulk_upsert,
)

RECIPIENT_FIELDS = (
    "id",
    "external_id",
    "email",
    "phone",
    "name",
    "locale",
    "timezone",
    "data",
    "channels",
)
STREAM_CHUNK = 2000

Recipient = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Skipped:
    """A would-be recipient left out, and why (for the event's story)."""

    subscriber: str
    reason: str
    channel: str | None = None
    rule_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"subscriber": self.subscriber, "reason": self.reason}
        if self.channel is not None:
            entry["channel"] = self.channel
        if self.rule_id is not None:
            entry["rule_id"] = self.rule_id
        return entry


@dataclass(kw_only=True)
class Resolved:
    recipients: list[Recipient] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def subscriber_variables(recipient: Mapping[str, Any]) -> dict[str, Any]:
    """What conditions and templates see as ``subscriber``."""
    return {
        "id": recipient["external_id"],
        "email": recipient["email"],
        "phone": recipient["phone"],
        "name": recipient["name"],
        "locale": recipient["locale"],
        "timezone": recipient["timezone"],
        "data": recipient["data"],
    }


def _profile_from_inline(inline: Mapping[str, Any], existing: Mapping[str, Any] | None) -> Any:
    """An inline profile merged over what is stored: fields it leaves out keep
    their values (an event naming a subscriber's email must not erase their phone)."""
    values = {name: (existing or {}).get(name, "") for name in UPDATABLE_FIELDS}
    for name in ("data", "channels"):
        values[name] = values[name] or {}
    for name in UPDATABLE_FIELDS:
        if inline.get(name) is not None:
            values[name] = inline[name]
    return SubscriberProfile(external_id=str(inline["id"]), **values)


def upsert_inline_profiles(inline: Sequence[Mapping[str, Any]]) -> list[Skipped]:
    """Create or update the subscribers an event gives in full (two statements for
    all of them); invalid profiles are reported, not saved."""
    if not inline:
        return []
    ids = [str(profile["id"]) for profile in inline]
    stored = {
        row["external_id"]: row
        for row in Subscriber.objects.filter(external_id__in=ids).values(
            "external_id", *UPDATABLE_FIELDS
        )
    }
    latest: dict[str, Mapping[str, Any]] = {}
    for profile in inline:  # the last profile given for an id wins
        latest[str(profile["id"])] = profile
    profiles = [_profile_from_inline(p, stored.get(key)) for key, p in latest.items()]
    try:
        results = subscriber_bulk_upsert(profiles=profiles)
    except InvalidInput as invalid:
        return [Skipped(subscriber="*", reason=f"inline profiles refused: {invalid}")]
    return [
        Skipped(
            subscriber=result.external_id,
            reason="invalid inline profile: "
            + "; ".join(f"{error.pointer}: {error.detail}" for error in result.errors),
        )
        for result in results
        if result.errors
    ]


def _by_external_ids(ids: Sequence[str]) -> Resolved:
    rows = {
        row["external_id"]: row
        for row in Subscriber.objects.filter(external_id__in=set(ids)).values(*RECIPIENT_FIELDS)
    }
    resolved = Resolved()
    for external_id in ids:
        row = rows.get(external_id)
        if row is None:
            resolved.skipped.append(Skipped(subscriber=external_id, reason="no such subscriber"))
        else:
            resolved.recipients.append(row)
    return resolved


def _topic_members(key: str) -> Resolved:
    if not Topic.objects.filter(key=key).exists():
        return Resolved(skipped=[Skipped(subscriber="*", reason=f"no topic {key!r}")])
    members = (
        TopicMembership.objects.filter(topic__key=key)
        .order_by("id")
        .values_list(*(f"subscriber__{name}" for name in RECIPIENT_FIELDS))
    )
    return Resolved(
        recipients=[
            dict(zip(RECIPIENT_FIELDS, row, strict=True))
            for row in members.iterator(chunk_size=STREAM_CHUNK)
        ]
    )


def _broadcast(
    program: CelProgram, base: Mapping[str, Any], errors: list[str]
) -> Iterator[Recipient]:
    rows = Subscriber.objects.order_by("id").values(*RECIPIENT_FIELDS)
    for row in rows.iterator(chunk_size=STREAM_CHUNK):
        if program.native is None:
            yield row
            continue
        try:
            if program.matches(build_activation({**base, "subscriber": subscriber_variables(row)})):
                yield row
        except CelError as error:
            if len(errors) < 20:
                errors.append(f"{row['external_id']}: {error.message}")


def recipients_resolve(
    *,
    selector: Mapping[str, Any],
    event_to: Sequence[Any],
    event_topic: str,
    filter_program: CelProgram | None,
    variables: Mapping[str, Any],
) -> tuple[Resolved, list[str]]:
    """The recipients of one rule version's selector, in order, each once.

    ``variables`` are the event and tenant, for a broadcast filter. Returns the
    resolution and the broadcast filter's evaluation errors (at most 20).
    """
    kind = selector.get("kind")
    errors: list[str] = []
    parts: list[Resolved] = []
    if kind == "event":
        ids = [entry if isinstance(entry, str) else str(entry.get("id")) for entry in event_to]
        parts.append(_by_external_ids(ids))
        if event_topic:
            parts.append(_topic_members(event_topic))
    elif kind == "topic":
        parts.append(_topic_members(str(selector.get("topic"))))
    elif kind == "broadcast" and filter_program is not None:
        parts.append(Resolved(recipients=list(_broadcast(filter_program, variables, errors))))
    else:
        return Resolved(skipped=[Skipped(subscriber="*", reason=f"unknown selector {kind!r}")]), []
    merged = Resolved()
    seen: set[int] = set()
    for part in parts:
        merged.skipped.extend(part.skipped)
        for recipient in part.recipients:
            if recipient["id"] not in seen:
                seen.add(recipient["id"])
                merged.recipients.append(recipient)
    return merged, errors
