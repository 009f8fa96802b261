"""The pipeline: an accepted event becomes messages, and its story is recorded.

For each enabled rule of the event's type, in order: the rule's condition (CEL)
decides whether it applies, its selector names the recipients (the event's ids
and inline profiles, a topic, or a broadcast filter), preferences and
reachability drop some of them with a reason, and each remaining recipient
gets one message per action, rendered once from the template version current
now (in the subscriber's locale, or the template's fallback) and stored with
the rule and template versions that produced it. Every decision goes into
``Event.outcome``: matched and unmatched rules, evaluation errors, skipped
recipients and why.

The number of queries per event does not grow with the number of recipients
(rules, templates, preferences, recent messages for throttling: one query
each; recipients: one or two per selector; messages: one COPY), which the
tests assert. A condition that reads only ``event`` and ``tenant`` is
evaluated once per event, not once per recipient.

Timing options: ``delay_seconds`` and ``send_window`` set the message's
``send_after`` (the delivery sweeper waits for it; critical event types ignore
the window), and ``throttle`` drops recipients who already got ``limit``
messages from the rule within the window (recorded as throttled). With
``digest``, recipients who pass every check get no message now: the event joins
their open digest batch (rules_engine.services.digests, one statement for all
of them), and the digest sweeper sends one message per batch when its window
closes.
"""

import gc
import logging
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Count
from django.utils import timezone
from markupsafe import Markup

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message, MessageStatus
from channels_delivery.services.dispatch import messages_enqueue
from channels_delivery.services.messages import NewMessage, messages_copy
from rules_engine.cel import CelError, CelProgram, build_activation, program_for
from rules_engine.event_types import event_types_current
from rules_engine.models import Event, EventStatus, RuleVersion, TemplateVersion
from rules_engine.recipients import (
    Recipient,
    Resolved,
    Skipped,
    recipients_resolve,
    subscriber_variables,
    upsert_inline_profiles,
)
from rules_engine.selectors.preferences import PreferenceResolver
from rules_engine.selectors.rules import rules_for_event_type
from rules_engine.selectors.templates import template_versions_current
from rules_engine.services.digests import DigestEntry, DigestKeyError, DigestKeys, digests_collect
from rules_engine.templating import RenderContext, TemplateError, render_fields, render_text
from rules_engine.timing import message_send_after
from tenants.db import tenant_connection

logger = logging.getLogger(__name__)

# Normally queued (the publisher or sweeper handed it over); accepted when called directly.
PENDING = frozenset({EventStatus.ACCEPTED, EventStatus.QUEUED})
# The story keeps this many skipped recipients per rule, and counts the rest.
SKIPPED_KEPT = 100


def recipient_reachable(recipient: Recipient, channel: str) -> str | None:
    """Why the recipient can not be reached on ``channel`` (None when they can)."""
    channels = recipient["channels"] or {}
    if channel == Channel.EMAIL and not recipient["email"]:
        return "no email address"
    if channel == Channel.SMS and not recipient["phone"]:
        return "no phone number"
    if channel == Channel.PUSH and not channels.get("push"):
        return "no push subscription"
    if channel == Channel.CHAT and not channels.get("chat"):
        return "no chat address"
    return None


def _variant(version: TemplateVersion, locale: str) -> tuple[str, dict[str, str]]:
    """The locale rendered and its fields: the subscriber's locale, its language,
    else the template's fallback."""
    variants: dict[str, dict[str, str]] = version.variants
    if locale:
        if locale in variants:
            return locale, variants[locale]
        language = locale.split("-")[0]
        if language in variants:
            return language, variants[language]
    return version.fallback_locale, variants[version.fallback_locale]


def render_message(
    *,
    version: TemplateVersion,
    channel: str,
    context: RenderContext,
    variables: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, str]]:
    """The locale used and the rendered fields (TemplateError when a field fails).
    ``variables`` are extra top-level names for the template (a digest's ``digest``)."""
    locale, fields = _variant(version, context.locale)
    rendered = render_fields(
        channel,
        fields,
        context,
        strict=version.strict,
        cache_key=(version.pk, locale),
        variables=variables,
    )
    layout = version.layout
    if channel == Channel.EMAIL and layout is not None:
        if rendered.get("html"):
            rendered["html"] = render_text(
                layout.html,
                context,
                html=True,
                cache_key=("layout", layout.pk, layout.updated_at, "html"),
                # The body was rendered with autoescape: it is HTML already.
                variables={"content": Markup(rendered["html"])},  # noqa: S704
            )
        if rendered.get("text") and layout.text:
            rendered["text"] = render_text(
                layout.text,
                context,
                cache_key=("layout", layout.pk, layout.updated_at, "text"),
                variables={"content": rendered["text"]},
            )
    return locale, rendered


@dataclass(kw_only=True)
class RuleStory:
    rule_id: int
    name: str
    version: int
    matched: bool = False
    error: str | None = None
    recipients: int = 0
    messages: int = 0
    failed_renders: int = 0
    digested: int = 0  # recipients whose digest batch got the event instead of a message
    skipped: list[Skipped] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        reasons = Counter(entry.reason.split(" (")[0] for entry in self.skipped)
        return {
            "rule_id": self.rule_id,
            "name": self.name,
            "version": self.version,
            "matched": self.matched,
            "error": self.error,
            "recipients": self.recipients,
            "messages": self.messages,
            "failed_renders": self.failed_renders,
            "digested": self.digested,
            "skipped": [entry.as_dict() for entry in self.skipped[:SKIPPED_KEPT]],
            "skipped_total": len(self.skipped),
            "skipped_reasons": dict(reasons),
        }


@dataclass(kw_only=True)
class Plan:
    """What processing an event decided: the story, and the messages it makes."""

    rules: list[RuleStory] = field(default_factory=list)
    messages: list[NewMessage] = field(default_factory=list)
    digest_entries: list[DigestEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def event_variables(event: Event) -> dict[str, Any]:
    """``event`` in a template's context (the digest flush renders with it too)."""
    return {
        "type": event.event_type_key,
        "id": str(event.id),
        "payload": event.payload,
        "actor": event.actor,
        "tenant_data": event.tenant_data,
        "created_at": event.created_at,
    }


def tenant_variables() -> dict[str, Any]:
    """``tenant`` in a template's context (the digest flush renders with it too)."""
    tenant = tenant_connection.tenant
    plan = getattr(tenant, "plan", None)
    return {
        "slug": getattr(tenant, "slug", tenant_connection.schema_name),
        "name": getattr(tenant, "name", ""),
        "plan": plan.name if plan is not None else "",
    }


def _throttled_counts(
    version: RuleVersion, *, now: datetime
) -> Mapping[int, int]:  # subscriber id -> messages within the window
    throttle = version.throttle
    if not throttle:
        return {}
    since = now - timedelta(seconds=int(throttle["window_seconds"]))
    rows = (
        Message.objects.filter(rule_version__rule_id=version.rule_id, created_at__gte=since)
        .values("subscriber_id")
        .annotate(sent=Count("id"))
        .values_list("subscriber_id", "sent")
    )
    return dict(rows)


def _as_if_saved(
    resolved: Resolved, *, event_to: Sequence[Any], rows: Mapping[str, Recipient]
) -> Resolved:
    """``resolved`` as if the inline profiles ``rows`` had been saved: each takes
    its stored subscriber's place, or the "no such subscriber" it would have been,
    in the event's order; the topic's members follow."""
    stored = {recipient["external_id"]: recipient for recipient in resolved.recipients}
    recipients: list[Recipient] = []
    placed: set[str] = set()
    for entry in event_to:
        external_id = entry if isinstance(entry, str) else str(entry.get("id"))
        row = rows.get(external_id) or stored.get(external_id)
        if row is not None and external_id not in placed:
            placed.add(external_id)
            recipients.append(row)
    recipients.extend(r for r in resolved.recipients if r["external_id"] not in placed)
    return Resolved(
        recipients=recipients,
        skipped=[entry for entry in resolved.skipped if entry.subscriber not in rows],
    )


def event_plan(
    *,
    event: Event,
    rules: Sequence[tuple[Any, RuleVersion]],
    now: datetime,
    category: str,
    critical: bool,
    upsert_inline: bool = True,
    inline_recipients: Mapping[str, Recipient] | None = None,
) -> Plan:
    """Decide everything for ``event`` without writing messages (the dry run's core).

    ``inline_recipients`` (with ``upsert_inline=False``) are recipient rows by
    external id that stand in for the event's inline profiles as if they had
    been saved, so a dry run shows a profile as given without writing it.
    """
    plan = Plan()
    event_vars = event_variables(event)
    base = {"event": event_vars, "tenant": tenant_variables()}
    templates = template_versions_current(
        action["template"] for _, version in rules for action in version.actions
    )
    preferences = PreferenceResolver(event_type_key=event.event_type_key, category=category)
    inline = [entry for entry in event.recipients if isinstance(entry, dict) and "id" in entry]
    if upsert_inline and inline and any(v.recipients.get("kind") == "event" for _, v in rules):
        plan.skipped.extend(upsert_inline_profiles(inline))
    event_activation = build_activation({**base, "subscriber": {}})
    digest_keys = DigestKeys(
        event_type_key=event.event_type_key, variables=base, activation=event_activation
    )
    resolved_cache: dict[str, tuple[Any, list[str]]] = {}

    for rule, version in rules:
        story = RuleStory(rule_id=rule.pk, name=rule.name, version=version.version)
        plan.rules.append(story)
        try:
            program = program_for((rule.pk, version.version), version.condition)
        except CelError as error:
            story.error = f"condition: {error.message}"
            continue
        per_recipient = "subscriber" in program.uses
        if not per_recipient:
            try:
                if not program.matches(event_activation):
                    continue
            except CelError as error:
                story.error = f"condition: {error.message}"
                continue
        selector = version.recipients
        key = repr(sorted(selector.items()))
        if key not in resolved_cache:
            filter_program: CelProgram | None = None
            if selector.get("kind") == "broadcast":
                source = selector.get("filter") or ""
                filter_program = program_for(("broadcast", source), source)
            resolved, filter_errors = recipients_resolve(
                selector=selector,
                event_to=event.recipients,
                event_topic=event.topic,
                filter_program=filter_program,
                variables=base,
            )
            if inline_recipients and selector.get("kind") == "event":
                resolved = _as_if_saved(resolved, event_to=event.recipients, rows=inline_recipients)
            resolved_cache[key] = (resolved, filter_errors)
        resolved, filter_errors = resolved_cache[key]
        story.skipped.extend(
            Skipped(subscriber=s.subscriber, reason=s.reason, rule_id=rule.pk)
            for s in resolved.skipped
        )
        if filter_errors:
            story.error = "broadcast filter: " + "; ".join(filter_errors)
        throttle_counts = dict(_throttled_counts(version, now=now))
        matched_any = not per_recipient
        for recipient in resolved.recipients:
            subscriber = subscriber_variables(recipient)
            if per_recipient:
                try:
                    if not program.matches(build_activation({**base, "subscriber": subscriber})):
                        continue
                except CelError as error:
                    story.skipped.append(
                        Skipped(
                            subscriber=recipient["external_id"],
                            reason=f"condition failed: {error.message}",
                            rule_id=rule.pk,
                        )
                    )
                    continue
                matched_any = True
            story.recipients += 1
            if version.throttle:
                sent = throttle_counts.get(recipient["id"], 0)
                if sent >= int(version.throttle["limit"]):
                    story.skipped.append(
                        Skipped(
                            subscriber=recipient["external_id"],
                            reason=f"throttled: {sent} messages within "
                            f"{version.throttle['window_seconds']} s",
                            rule_id=rule.pk,
                        )
                    )
                    continue
                throttle_counts[recipient["id"]] = sent + 1
            context = RenderContext(
                event=event_vars,
                subscriber=subscriber,
                tenant=base["tenant"],
                locale=recipient["locale"] or "en",
                timezone=recipient["timezone"] or "UTC",
            )
            send_after = message_send_after(
                now=now,
                delay_seconds=version.delay_seconds,
                window=version.send_window,
                timezone=recipient["timezone"],
                critical=critical,
            )
            digestible = False
            for action in version.actions:
                channel = action["channel"]
                allowed, why = preferences.allows(subscriber_id=recipient["id"], channel=channel)
                if not allowed and not critical:
                    story.skipped.append(
                        Skipped(
                            subscriber=recipient["external_id"],
                            reason=why,
                            channel=channel,
                            rule_id=rule.pk,
                        )
                    )
                    continue
                unreachable = recipient_reachable(recipient, channel)
                if unreachable is not None:
                    story.skipped.append(
                        Skipped(
                            subscriber=recipient["external_id"],
                            reason=unreachable,
                            channel=channel,
                            rule_id=rule.pk,
                        )
                    )
                    continue
                template = templates.get(action["template"])
                if template is None:
                    story.skipped.append(
                        Skipped(
                            subscriber=recipient["external_id"],
                            reason=f"no template {action['template']!r}",
                            channel=channel,
                            rule_id=rule.pk,
                        )
                    )
                    continue
                if version.digest:
                    digestible = True  # rendered when the batch is sent, for all its events
                    continue
                status, error_text, locale = MessageStatus.QUEUED, "", ""
                content: dict[str, str] = {}
                try:
                    locale, content = render_message(
                        version=template, channel=channel, context=context
                    )
                except TemplateError as error:
                    where = f"{error.field}: " if error.field else ""
                    story.failed_renders += 1
                    status, error_text = MessageStatus.FAILED, f"{where}{error.message}"
                message = NewMessage(
                    id=uuid.uuid4(),
                    event_id=event.id,
                    subscriber_id=recipient["id"],
                    channel=channel,
                    content=content,
                    rule_version_id=version.pk,
                    template_version_id=template.pk,
                    locale=locale,
                    send_after=send_after,
                    status=status,
                    error=error_text,
                )
                plan.messages.append(message)
                story.messages += 1
            if digestible and version.digest:
                try:
                    digest_key = digest_keys.key(version=version, subscriber=subscriber)
                except DigestKeyError as error:
                    story.skipped.append(
                        Skipped(
                            subscriber=recipient["external_id"],
                            reason=f"digest key: {error.message}",
                            rule_id=rule.pk,
                        )
                    )
                else:
                    plan.digest_entries.append(
                        DigestEntry(
                            rule_id=rule.pk,
                            rule_version_id=version.pk,
                            subscriber_id=recipient["id"],
                            key=digest_key,
                            window_seconds=int(version.digest["window_seconds"]),
                        )
                    )
                    story.digested += 1
        story.matched = matched_any
    return plan


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a fan-out builds its messages.

    A fan-out keeps some 100,000 live objects; each full collection walks them
    all (up to 200 ms measured), and a render that the pause lands in would be
    charged for it against its wall-clock deadline, failing a message for no
    fault of its template. The loop makes no reference cycles worth chasing.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def event_process(*, event_id: uuid.UUID) -> Event | None:
    """Move a pending event through the pipeline; a no-op if it already went.

    A database error propagates (the task retries it: it is usually
    transient). Any other error is a bug or data the pipeline can not handle:
    nothing of the attempt is kept, the event is marked failed with the error
    in its outcome, and the error is logged (and reported to Sentry), so that
    one event can neither stop the others of its task nor come back forever.
    """
    try:
        return _event_process(event_id)
    except DatabaseError:
        raise
    except Exception as error:
        logger.exception("processing event %s failed", event_id)
        Event.objects.filter(pk=event_id, status__in=PENDING).update(
            status=EventStatus.FAILED,
            outcome={"error": f"{type(error).__name__}: {error}"[:2000]},
            processed_at=timezone.now(),
        )
        return Event.objects.filter(pk=event_id).first()


def _event_process(event_id: uuid.UUID) -> Event | None:
    with transaction.atomic():
        event = Event.objects.select_for_update(skip_locked=True).filter(pk=event_id).first()
        if event is None or event.status not in PENDING:
            return event  # gone, being processed by another worker, or done
        now = timezone.now()
        info = event_types_current().get(event.event_type_key)
        rules = rules_for_event_type(event.event_type_key) if info is not None else []
        if info is None or not rules:
            event.status = EventStatus.NO_MATCH
            event.outcome = {
                "matched_rules": [],
                "known_event_type": info is not None,
                "reason": "no rule matches this event"
                if info is not None
                else f"no event type {event.event_type_key!r} is declared, so no rule matches",
            }
        else:
            with _collector_paused():
                plan = event_plan(
                    event=event,
                    rules=rules,
                    now=now,
                    category=info.category,
                    critical=info.is_critical,
                )
            messages_copy(messages=plan.messages, now=now)
            # Due ones go to delivery once this commits; later ones wait for the sweeper.
            messages_enqueue(
                message_ids=[
                    message.id
                    for message in plan.messages
                    if message.status == MessageStatus.QUEUED
                    and (message.send_after is None or message.send_after <= now)
                ]
            )
            digests_collect(entries=plan.digest_entries, event_id=event.id, now=now)
            matched = [story.rule_id for story in plan.rules if story.matched]
            event.status = EventStatus.PROCESSED if matched else EventStatus.NO_MATCH
            event.outcome = {
                "matched_rules": matched,
                "known_event_type": True,
                "rules": [story.as_dict() for story in plan.rules],
                "messages": len(plan.messages),
                "digested": len(plan.digest_entries),
                "skipped": [entry.as_dict() for entry in plan.skipped[:SKIPPED_KEPT]],
            }
            if not matched:
                event.outcome["reason"] = "no rule's condition held"
        event.processed_at = now
        event.save(update_fields=["status", "outcome", "processed_at"])
    return event
