"""Digests: a rule's events collected per subscriber for a window, then one message.

A rule version with ``digest`` (``{"key": "<CEL>", "window_seconds": n}``) does
not message its recipients one event at a time. The pipeline decides who would
have got a message (condition, throttle, preferences, reachability, templates)
and each one's digest key (``DigestKeys``: the CEL key's string, or the event
type's key when the key is ``""``); ``digests_collect`` then adds the event to
the open batch of every (rule, subscriber, key), opening the batches that do
not exist yet, in one statement however many recipients there are.

The wait is a row, not a broker ETA (DESIGN.md: long waits live in
PostgreSQL). Every 15 s the beat task ``rules_engine.digests_flush_all`` runs
``digests_flush_due`` in each tenant:

1. ``digests_claim`` takes batches whose window has closed, skipping rows
   another sweeper or a collecting pipeline holds, marks them ``sending`` with
   a claim token and commits: an event arriving from now on opens a new batch
   instead of waiting for the send.
2. ``digests_send`` locks the batches still carrying that token and, in one
   transaction with marking them ``sent``, writes one message per action of the
   version that opened the batch. A batch is therefore sent once even when two
   sweepers run. A sweeper that dies between the two steps leaves its batches
   ``sending``; a claim older than twice the task time limit is orphaned, and
   the next sweep takes it over (the late original then finds the token
   changed and sends nothing).

Each template renders as it would for one event, with ``event`` the batch's
latest event, plus a top-level ``digest`` variable (``render_fields``'
``variables``; ``event`` keeps its usual shape):
``{"count": n, "key": key, "events": [{"type", "id", "payload", "created_at"}]}``,
listing the latest ``LISTED_EVENTS`` in the order they happened (``count`` is
all of them). Preferences and reachability are checked again when sending
(critical event types still bypass opt-outs); the message then follows the
rule's delay and send window, counted from the send. A batch whose rule was
disabled meanwhile is closed without a message; its ``outcome`` says why.
"""

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet

from channels_delivery.models import MessageStatus
from channels_delivery.services.dispatch import messages_enqueue
from channels_delivery.services.messages import NewMessage, messages_copy
from rules_engine.cel import (
    Activation,
    CelError,
    CelProgram,
    build_activation,
    cel_type_name,
    program_for,
)
from rules_engine.event_types import event_types_current
from rules_engine.models import (
    DIGEST_KEY_MAX_LENGTH,
    DigestBatch,
    DigestItem,
    DigestStatus,
    Event,
    RuleVersion,
    Subscriber,
    TemplateVersion,
)
from rules_engine.recipients import RECIPIENT_FIELDS, Recipient, subscriber_variables
from rules_engine.selectors.preferences import PreferenceResolver
from rules_engine.selectors.templates import template_versions_current
from rules_engine.templating import RenderContext, TemplateError
from rules_engine.timing import message_send_after

# A digest message lists at most this many events (the latest); ``count`` has them all.
LISTED_EVENTS = 100
# Batches one claim takes; the beat task claims again while claims come back full.
FLUSH_LIMIT = 500
# Batches sent per transaction: bounds the events (payloads) held in memory at once.
SEND_CHUNK = 50


# --- collecting (called by the pipeline) -------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DigestEntry:
    """One recipient's share of an event for a digest rule."""

    rule_id: int
    rule_version_id: int
    subscriber_id: int
    key: str
    window_seconds: int


class DigestKeyError(Exception):
    """A digest key could not be computed; ``message`` is fit to show a tenant."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _key_value(program: CelProgram, activation: Callable[[], Activation]) -> str:
    try:
        value = program.evaluate(activation())
    except CelError as error:
        raise DigestKeyError(error.message) from None
    if not isinstance(value, str):
        raise DigestKeyError(f"must give a string, got {cel_type_name(value)}")
    if len(value) > DIGEST_KEY_MAX_LENGTH:
        raise DigestKeyError(
            f"gave {len(value):,} characters; a key has at most {DIGEST_KEY_MAX_LENGTH}"
        )
    if "\x00" in value:
        raise DigestKeyError("gave a string with a NUL character")
    return value


class DigestKeys:
    """The digest keys of one event's recipients.

    A key that does not read ``subscriber`` is evaluated once per event and rule
    version, with the event's activation (the one the rule's condition used);
    one that does is evaluated per recipient.
    """

    def __init__(
        self, *, event_type_key: str, variables: Mapping[str, Any], activation: Activation
    ) -> None:
        self._event_type_key = event_type_key
        self._variables = variables  # event and tenant
        self._activation = activation
        self._per_event: dict[int, str | DigestKeyError] = {}

    def key(self, *, version: RuleVersion, subscriber: Mapping[str, Any]) -> str:
        """The key of the subscriber's batch; DigestKeyError says why there is none."""
        source = str((version.digest or {}).get("key") or "")
        if not source.strip():
            return self._event_type_key
        try:
            program = program_for(("digest", version.pk), source)
        except CelError as error:
            raise DigestKeyError(error.message) from None
        if "subscriber" in program.uses:
            return _key_value(
                program, lambda: build_activation({**self._variables, "subscriber": subscriber})
            )
        known = self._per_event.get(version.pk)
        if known is None:
            try:
                known = _key_value(program, lambda: self._activation)
            except DigestKeyError as error:
                known = error
            self._per_event[version.pk] = known
        if isinstance(known, DigestKeyError):
            raise DigestKeyError(known.message)
        return known


# One statement for every entry: open the batches that are missing, touch the open
# ones (DO UPDATE, not NOTHING, so RETURNING names them too), and add the event to
# each. Rows are taken in key order, so concurrent events lock batches in the same
# order and can not deadlock. The conflict target is the partial unique index
# digest_batch_one_open, whose predicate is written out for PostgreSQL to match it.
_COLLECT = """WITH entry AS (
    SELECT * FROM jsonb_to_recordset(%s::jsonb) AS e(
        rule_id bigint, rule_version_id bigint, subscriber_id bigint, key text,
        closes_at timestamptz)
), batch AS (
    INSERT INTO {batch} AS b (
        rule_id, rule_version_id, subscriber_id, key, status, opened_at, closes_at,
        last_event_at, outcome)
    SELECT rule_id, rule_version_id, subscriber_id, key, 'open', %s, closes_at, %s,
           '{{}}'::jsonb
    FROM entry
    ORDER BY rule_id, subscriber_id, key
    ON CONFLICT (rule_id, subscriber_id, key) WHERE status = 'open'
    DO UPDATE SET last_event_at = EXCLUDED.last_event_at
    RETURNING b.id
)
INSERT INTO {item} (batch_id, event_id, added_at)
SELECT id, %s, %s FROM batch
ON CONFLICT (batch_id, event_id) DO NOTHING
"""


def digests_collect(*, entries: Sequence[DigestEntry], event_id: uuid.UUID, now: datetime) -> int:
    """Add the event to each entry's open batch, opening those that are missing
    (closing ``window_seconds`` from ``now``); one statement for all entries.
    Returns how many batches got the event. Run it in the transaction that
    marks the event processed, so an event is collected once."""
    unique = {(entry.rule_id, entry.subscriber_id, entry.key): entry for entry in entries}
    if not unique:
        return 0
    rows = [
        {
            "rule_id": entry.rule_id,
            "rule_version_id": entry.rule_version_id,
            "subscriber_id": entry.subscriber_id,
            "key": entry.key,
            "closes_at": now + timedelta(seconds=entry.window_seconds),
        }
        for entry in unique.values()
    ]
    sql = _COLLECT.format(
        batch=connection.ops.quote_name(DigestBatch._meta.db_table),
        item=connection.ops.quote_name(DigestItem._meta.db_table),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [orjson.dumps(rows).decode(), now, now, event_id, now])
        return int(cursor.rowcount)


# --- sending (the digest sweeper) --------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FlushReport:
    claimed: int  # batches claimed (for digests_send: the batches it was given)
    sent: int  # of them, closed by this call (the rest were taken over meanwhile)
    messages: int  # messages written, failed renders included


def _orphaned_before(now: datetime) -> datetime:
    # A sweeper is killed after CELERY_TASK_TIME_LIMIT: a claim twice that old is dead.
    return now - timedelta(seconds=2 * settings.CELERY_TASK_TIME_LIMIT)


def digests_claimable(*, now: datetime) -> tuple[QuerySet[DigestBatch], QuerySet[DigestBatch]]:
    """What digests_claim claims at ``now``: orphaned claims, then batches due."""
    orphaned = DigestBatch.objects.filter(
        status=DigestStatus.SENDING, claimed_at__lte=_orphaned_before(now)
    )
    due = DigestBatch.objects.filter(status=DigestStatus.OPEN, closes_at__lte=now)
    return orphaned, due


def digests_claim(*, now: datetime, claim: uuid.UUID, limit: int = FLUSH_LIMIT) -> list[int]:
    """Mark up to ``limit`` batches as ``sending`` under ``claim``: orphaned claims
    first, then batches due at ``now``, oldest window first, skipping rows another
    transaction holds. Returns their ids. Commits at once when called outside a
    transaction."""
    # Two queries rather than one with OR: each walks its own partial index in
    # order and stops at the limit, however large the backlog.
    orphaned, due = digests_claimable(now=now)
    with transaction.atomic():
        ids: list[int] = []
        for candidates in (
            orphaned.order_by("claimed_at", "id"),
            due.order_by("closes_at", "id"),
        ):
            room = limit - len(ids)
            if room > 0:
                unlocked = candidates.select_for_update(skip_locked=True)
                ids.extend(unlocked.values_list("id", flat=True)[:room])
        if ids:
            DigestBatch.objects.filter(id__in=ids).update(
                status=DigestStatus.SENDING, claimed_at=now, claim=claim
            )
    return ids


# The latest LISTED_EVENTS events of each batch, oldest first, and each batch's
# count. Payloads are read only for the listed events, however large the batch.
_LISTED = """SELECT r.batch_id, r.total, r.from_end,
       e.id, e.event_type_key, e.payload, e.created_at, e.actor, e.tenant_data
FROM (
    SELECT i.batch_id, i.event_id,
           row_number() OVER latest AS from_end,
           count(*) OVER (PARTITION BY i.batch_id) AS total
    FROM {item} AS i JOIN {event} AS ev ON ev.id = i.event_id
    WHERE i.batch_id = ANY(%s::bigint[])
    WINDOW latest AS (PARTITION BY i.batch_id ORDER BY ev.created_at DESC, ev.id DESC)
) AS r
JOIN {event} AS e ON e.id = r.event_id
WHERE r.from_end <= %s
ORDER BY r.batch_id, r.from_end DESC
"""


@dataclass(kw_only=True)
class _Listed:
    count: int  # all the batch's events
    events: list[dict[str, Any]]  # the listed ones, oldest first
    latest: Event | None = None


def _json(text: str | None) -> Any:
    # Django reads jsonb as text with psycopg 3 (JSONField parses it): so must we.
    return None if text is None else json.loads(text)


def _listed_events(batch_ids: Sequence[int]) -> dict[int, _Listed]:
    sql = _LISTED.format(
        item=connection.ops.quote_name(DigestItem._meta.db_table),
        event=connection.ops.quote_name(Event._meta.db_table),
    )
    listed: dict[int, _Listed] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [list(batch_ids), LISTED_EVENTS])
        for (
            batch_id,
            total,
            from_end,
            event_id,
            type_key,
            payload,
            created_at,
            actor,
            data,
        ) in cursor.fetchall():
            entry = listed.setdefault(batch_id, _Listed(count=int(total), events=[]))
            parsed = _json(payload)
            entry.events.append(
                {"type": type_key, "id": str(event_id), "payload": parsed, "created_at": created_at}
            )
            if from_end == 1:
                entry.latest = Event(
                    id=event_id,
                    event_type_key=type_key,
                    payload=parsed,
                    created_at=created_at,
                    actor=_json(actor),
                    tenant_data=_json(data),
                )
    return listed


@dataclass(kw_only=True)
class _Sending:
    """What sending one chunk of batches needs, loaded once for all of them."""

    listed: dict[int, _Listed]
    recipients: dict[int, Recipient]
    templates: dict[str, TemplateVersion]
    tenant: Mapping[str, Any]
    now: datetime
    resolvers: dict[str, PreferenceResolver]

    def resolver(self, *, event_type_key: str, category: str) -> PreferenceResolver:
        if event_type_key not in self.resolvers:
            self.resolvers[event_type_key] = PreferenceResolver(
                event_type_key=event_type_key, category=category
            )
        return self.resolvers[event_type_key]


def _batch_messages(
    batch: DigestBatch, sending: _Sending
) -> tuple[list[NewMessage], list[dict[str, str]]]:
    """The messages of one batch, and what was skipped (channel, reason)."""
    # The pipeline imports this module, so its helpers are imported when used.
    from rules_engine.services.pipeline import (
        event_variables,
        recipient_reachable,
        render_message,
    )

    listed = sending.listed.get(batch.pk)
    recipient = sending.recipients.get(batch.subscriber_id)
    if listed is None or listed.latest is None:
        return [], [{"reason": "its events were deleted"}]
    if recipient is None:
        return [], [{"reason": "the subscriber was deleted"}]
    if not batch.rule.enabled:
        return [], [{"reason": "the rule was disabled"}]
    version = batch.rule_version
    event_type_key = batch.rule.event_type.key
    info = event_types_current().get(event_type_key)
    critical = info is not None and info.is_critical
    preferences = sending.resolver(
        event_type_key=event_type_key, category=info.category if info is not None else ""
    )
    context = RenderContext(
        event=event_variables(listed.latest),
        subscriber=subscriber_variables(recipient),
        tenant=sending.tenant,
        locale=recipient["locale"] or "en",
        timezone=recipient["timezone"] or "UTC",
    )
    digest = {"count": listed.count, "key": batch.key, "events": listed.events}
    send_after = message_send_after(
        now=sending.now,
        delay_seconds=version.delay_seconds,
        window=version.send_window,
        timezone=recipient["timezone"],
        critical=critical,
    )
    messages: list[NewMessage] = []
    skipped: list[dict[str, str]] = []
    for action in version.actions:
        channel = action["channel"]
        allowed, why = preferences.allows(subscriber_id=recipient["id"], channel=channel)
        if not allowed and not critical:
            skipped.append({"channel": channel, "reason": why})
            continue
        unreachable = recipient_reachable(recipient, channel)
        if unreachable is not None:
            skipped.append({"channel": channel, "reason": unreachable})
            continue
        template = sending.templates.get(action["template"])
        if template is None:
            skipped.append({"channel": channel, "reason": f"no template {action['template']!r}"})
            continue
        message = NewMessage(
            id=uuid.uuid4(),
            event_id=listed.latest.id,
            subscriber_id=recipient["id"],
            channel=channel,
            content={},
            rule_version_id=version.pk,
            template_version_id=template.pk,
            locale="",
            send_after=send_after,
        )
        try:
            locale, content = render_message(
                version=template, channel=channel, context=context, variables={"digest": digest}
            )
        except TemplateError as error:
            where = f"{error.field}: " if error.field else ""
            message = replace(message, status="failed", error=f"{where}{error.message}")
        else:
            message = replace(message, content=content, locale=locale)
        messages.append(message)
    return messages, skipped


def digests_send(*, batch_ids: Sequence[int], claim: uuid.UUID, now: datetime) -> FlushReport:
    """Send the batches of ``batch_ids`` that ``claim`` still holds, and mark them
    sent, in one transaction; batches another sweeper took over are left alone."""
    from rules_engine.services.pipeline import tenant_variables

    with transaction.atomic():
        batches = list(
            DigestBatch.objects.select_for_update(of=("self",))
            .select_related("rule__event_type", "rule_version")
            .filter(id__in=batch_ids, status=DigestStatus.SENDING, claim=claim)
            .order_by("id")
        )
        if not batches:
            return FlushReport(claimed=len(batch_ids), sent=0, messages=0)
        subscriber_ids = {batch.subscriber_id for batch in batches}
        sending = _Sending(
            listed=_listed_events([batch.pk for batch in batches]),
            recipients={
                row["id"]: row
                for row in Subscriber.objects.filter(id__in=subscriber_ids).values(
                    *RECIPIENT_FIELDS
                )
            },
            templates=template_versions_current(
                action["template"] for batch in batches for action in batch.rule_version.actions
            ),
            tenant=tenant_variables(),
            now=now,
            resolvers={},
        )
        messages: list[NewMessage] = []
        for batch in batches:
            made, skipped = _batch_messages(batch, sending)
            messages.extend(made)
            listed = sending.listed.get(batch.pk)
            batch.status = DigestStatus.SENT
            batch.sent_at = now
            batch.message_id = made[0].id if made else None
            batch.outcome = {
                "events": listed.count if listed is not None else 0,
                "messages": [{"channel": m.channel, "id": str(m.id)} for m in made],
                "skipped": skipped,
            }
        messages_copy(messages=messages, now=now)
        # Due ones go to delivery once this commits; later ones wait for the sweeper.
        messages_enqueue(
            message_ids=[
                message.id
                for message in messages
                if message.status == MessageStatus.QUEUED
                and (message.send_after is None or message.send_after <= now)
            ]
        )
        DigestBatch.objects.bulk_update(batches, ["status", "sent_at", "message", "outcome"])
    return FlushReport(claimed=len(batch_ids), sent=len(batches), messages=len(messages))


def digests_flush_due(*, now: datetime, limit: int = FLUSH_LIMIT) -> FlushReport:
    """Claim this tenant's batches due at ``now`` and send them, ``SEND_CHUNK``
    per transaction. Call it outside a transaction, so the claim commits first."""
    claim = uuid.uuid4()
    ids = digests_claim(now=now, claim=claim, limit=limit)
    sent = messages = 0
    for start in range(0, len(ids), SEND_CHUNK):
        report = digests_send(batch_ids=ids[start : start + SEND_CHUNK], claim=claim, now=now)
        sent += report.sent
        messages += report.messages
    return FlushReport(claimed=len(ids), sent=sent, messages=messages)
