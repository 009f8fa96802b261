"""Trying a template out: a preview, and a real test send.

Both render exactly as the pipeline does (``pipeline.render_message`` with the
``event``, ``subscriber`` and ``tenant`` variables built by the same helpers
``event_plan`` uses), so what the template author sees is what a subscriber
would get for the same payload and profile.

A preview writes nothing and may render content that is not saved yet (the
dashboard previews as the author types). A test send renders the template's
current saved version and goes through the real delivery path: an Event marked
as a test (processed at once, so the pipeline never runs rules on it) and one
Message handed to the delivery workers, so the test proves the integration
works too. An address instead of a subscriber upserts a test subscriber
``test:<address>`` through the subscriber service.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.html import escape

from channels_delivery.catalogue import Channel
from channels_delivery.models import Integration, Message, MessageStatus
from channels_delivery.services.dispatch import messages_enqueue
from herald.problems import FieldError
from rules_engine.models import (
    Event,
    EventStatus,
    EventType,
    Layout,
    Subscriber,
    Template,
    TemplateVersion,
)
from rules_engine.recipients import RECIPIENT_FIELDS, Recipient, subscriber_variables
from rules_engine.selectors.event_types import event_type_get
from rules_engine.selectors.rules import rules_using_template
from rules_engine.selectors.templates import template_versions_current
from rules_engine.services.events import EventDraft, event_errors
from rules_engine.services.pipeline import (
    event_variables,
    recipient_reachable,
    render_message,
    tenant_variables,
)
from rules_engine.services.subscribers import (
    InvalidInput,
    SubscriberProfile,
    subscriber_upsert,
)
from rules_engine.templating import RenderContext, TemplateError

# The external id prefix of subscribers made for a test send to a bare address.
TEST_SUBSCRIBER_PREFIX = "test:"
# Who a preview renders for when no subscriber is named: a made-up profile with
# every field set, so ``{{ subscriber.name }}`` shows something.
SAMPLE_SUBSCRIBER: Recipient = {
    "id": 0,
    "external_id": "sample-subscriber",
    "email": "ada@example.com",
    "phone": "+14155550100",
    "name": "Ada Lovelace",
    "locale": "",
    "timezone": "UTC",
    "data": {},
    "channels": {},
}
# Channels whose address a test send can take instead of a subscriber.
ADDRESS_CHANNELS = frozenset({Channel.EMAIL.value, Channel.SMS.value})


def _invalid(pointer: str, detail: str) -> InvalidInput:
    return InvalidInput([FieldError(pointer=pointer, detail=detail)])


@dataclass(frozen=True, kw_only=True)
class TemplateSample:
    """What a template is previewed against when the author names nothing."""

    event_type: str
    """The key of the event type a rule sends this template for (else the first
    declared one; "" when there is none)."""
    payload: dict[str, Any]
    """That event type's sample payload."""


@dataclass(frozen=True, kw_only=True)
class TemplatePreview:
    locale: str
    """The variant rendered (after the fallback)."""
    content: Mapping[str, str]
    """The rendered fields; empty when rendering failed."""
    error_field: str | None
    """The field whose template failed (None: no error, or not tied to a field)."""
    error: str | None
    subscriber: str
    """The external id of the profile rendered for."""


@dataclass(frozen=True, kw_only=True)
class SentTest:
    event: Event
    message: Message
    subscriber_external_id: str
    subscriber_created: bool
    """True when the address got a new test subscriber."""


def template_sample(*, template: Template) -> TemplateSample:
    """The event type (and its sample payload) to preview ``template`` against."""
    rules = rules_using_template(template_key=template.key)
    event_type = rules[0].event_type if rules else None
    if event_type is None:
        event_type = EventType.objects.order_by("key").first()
    if event_type is None:
        return TemplateSample(event_type="", payload={})
    sample = event_type.sample_payload if isinstance(event_type.sample_payload, dict) else {}
    return TemplateSample(event_type=event_type.key, payload=dict(sample))


def _payload_checked(*, event_type_key: str, payload: object) -> dict[str, Any]:
    """The payload, when the event type is declared and its schema accepts it."""
    if not event_type_key:
        raise _invalid("/event_type", "choose an event type (declare one first)")
    if event_type_get(key=event_type_key) is None:
        raise _invalid("/event_type", f"no event type {event_type_key!r} is declared")
    if not isinstance(payload, dict):
        raise _invalid("/payload", "must be a JSON object")
    errors = event_errors(draft=EventDraft(event=event_type_key, payload=payload), strict=False)
    if errors:
        raise InvalidInput(errors)
    return payload


def _recipient_row(external_id: str) -> Recipient:
    row = Subscriber.objects.filter(external_id=external_id).values(*RECIPIENT_FIELDS).first()
    if row is None:
        raise _invalid("/subscriber", f"no subscriber {external_id!r} in this tenant")
    return row


def template_render_context(
    *, event: Event, recipient: Recipient, locale: str | None = None
) -> RenderContext:
    """The variables a template sees for ``event`` and ``recipient``, built as
    ``pipeline.event_plan`` builds them; ``locale`` picks another variant than
    the subscriber's own."""
    return RenderContext(
        event=event_variables(event),
        subscriber=subscriber_variables(recipient),
        tenant=tenant_variables(),
        locale=locale or recipient["locale"] or "en",
        timezone=recipient["timezone"] or "UTC",
    )


def _event(*, event_type_key: str, payload: dict[str, Any], now: datetime) -> Event:
    return Event(id=uuid.uuid4(), event_type_key=event_type_key, payload=payload, created_at=now)


def template_preview(
    *,
    channel: str,
    variants: Mapping[str, Mapping[str, str]],
    fallback_locale: str,
    strict: bool,
    layout: Layout | None,
    event_type_key: str,
    payload: object,
    subscriber_external_id: str = "",
    locale: str = "",
) -> TemplatePreview:
    """Render content (validated by ``template_definition_clean``, saved or not)
    for a subscriber (default: SAMPLE_SUBSCRIBER) and a payload, writing nothing.

    Raises InvalidInput for an unknown event type or subscriber and a payload
    the event type's schema refuses; a template that fails to render is the
    preview's ``error``, at its field.
    """
    checked = _payload_checked(event_type_key=event_type_key, payload=payload)
    recipient = (
        _recipient_row(subscriber_external_id) if subscriber_external_id else SAMPLE_SUBSCRIBER
    )
    version = TemplateVersion(
        variants={key: dict(fields) for key, fields in variants.items()},
        fallback_locale=fallback_locale,
        strict=strict,
        layout=layout,
    )
    event = _event(event_type_key=event_type_key, payload=checked, now=timezone.now())
    context = template_render_context(event=event, recipient=recipient, locale=locale)
    try:
        used, content = render_message(version=version, channel=channel, context=context)
    except TemplateError as error:
        return TemplatePreview(
            locale="",
            content={},
            error_field=error.field,
            error=error.message,
            subscriber=recipient["external_id"],
        )
    return TemplatePreview(
        locale=used,
        content=content,
        error_field=None,
        error=None,
        subscriber=recipient["external_id"],
    )


def _test_recipient(*, channel: str, subscriber: str, address: str) -> tuple[Recipient, bool]:
    """The subscriber named, or a test subscriber upserted for the address."""
    if bool(subscriber) == bool(address):
        detail = "give a subscriber or an address, not both"
        if not subscriber:
            detail = "give a subscriber's id or an address to send to"
        raise InvalidInput(
            [
                FieldError(pointer="/subscriber", detail=detail),
                FieldError(pointer="/address", detail=detail),
            ]
        )
    if subscriber:
        return _recipient_row(subscriber), False
    if channel not in ADDRESS_CHANNELS:
        raise _invalid(
            "/address",
            f"{channel} messages go to a subscriber's own address: name a subscriber",
        )
    field = "email" if channel == Channel.EMAIL else "phone"
    try:
        upserted = subscriber_upsert(
            profile=SubscriberProfile(
                external_id=f"{TEST_SUBSCRIBER_PREFIX}{address}",
                name="Test recipient",
                email=address if field == "email" else "",
                phone=address if field == "phone" else "",
            )
        )
    except InvalidInput as invalid:
        raise InvalidInput(
            [
                FieldError(
                    pointer="/address",
                    detail=error.detail if error.pointer == f"/{field}" else str(invalid),
                )
                for error in invalid.errors
            ]
        ) from None
    row = _recipient_row(upserted.subscriber.external_id)
    return row, upserted.created


def template_test_send(
    *,
    template: Template,
    event_type_key: str,
    payload: object,
    subscriber: str = "",
    address: str = "",
    sent_by: str,
) -> SentTest:
    """Send ``template``'s current version, rendered for ``payload``, to one
    subscriber (by external id) or to an email address or phone number, through
    the delivery workers; returns the stored event and message.

    The event is stored processed, with an outcome saying who sent the test, so
    the pipeline never runs the tenant's rules on it. Raises InvalidInput
    naming the field: no or both recipients, an unknown subscriber, an address
    the channel can not take, a recipient the channel can not reach, a refused
    payload, a template that fails to render.
    """
    with transaction.atomic():
        checked = _payload_checked(event_type_key=event_type_key, payload=payload)
        version = template_versions_current([template.key]).get(template.key)
        if version is None:  # deleted since it was read
            raise _invalid("/template", f"no template {template.key!r} in this tenant")
        recipient, created = _test_recipient(
            channel=template.channel, subscriber=subscriber.strip(), address=address.strip()
        )
        unreachable = recipient_reachable(recipient, template.channel)
        if unreachable is not None:
            raise _invalid(
                "/subscriber",
                f"{recipient['external_id']} can not get {template.channel}: {unreachable}",
            )
        now = timezone.now()
        event = _event(event_type_key=event_type_key, payload=checked, now=now)
        context = template_render_context(event=event, recipient=recipient)
        try:
            locale, content = render_message(
                version=version, channel=template.channel, context=context
            )
        except TemplateError as error:
            where = f"{error.field}: " if error.field else ""
            raise _invalid("/template", f"{where}{error.message}") from None
        event.recipients = [recipient["external_id"]]
        event.status = EventStatus.PROCESSED
        event.processed_at = now
        event.outcome = {
            "test_send": True,
            "reason": f"test send from the dashboard by {sent_by}",
            "template": template.key,
            "template_version": version.version,
            "messages": 1,
        }
        event.save(force_insert=True)
        message = Message.objects.create(
            event=event,
            subscriber_id=recipient["id"],
            channel=template.channel,
            status=MessageStatus.QUEUED,
            content=content,
            template_version=version,
            locale=locale,
            created_at=now,
        )
        messages_enqueue(message_ids=[message.id])
    return SentTest(
        event=event,
        message=message,
        subscriber_external_id=recipient["external_id"],
        subscriber_created=created,
    )


# --- an integration's test send -------------------------------------------------------

INTEGRATION_TEST_EVENT = "herald.integration_test"
# What a test through an integration says, per channel that takes integrations.
INTEGRATION_TEST_TEXT = "This is a test from Herald through the integration {name}. It works."


def _integration_test_content(*, channel: str, name: str) -> dict[str, str]:
    text = INTEGRATION_TEST_TEXT.format(name=name)
    if channel == Channel.EMAIL:
        return {"subject": f"Herald test: {name}", "text": text, "html": f"<p>{escape(text)}</p>"}
    if channel == Channel.PUSH:
        return {"title": f"Herald test: {name}", "body": text}
    return {"text": text}


def integration_test_send(
    *, integration: Integration, subscriber: str = "", address: str = "", sent_by: str
) -> SentTest:
    """Send a short fixed test message through ``integration`` (its first attempt
    goes there, whatever its priority) to one subscriber or to an email address
    or phone number; the delivery workers send it like any message, so its page
    shows what the provider answered.

    A chat integration posts to its own channel: with no recipient given, a
    test subscriber stands in. Raises InvalidInput naming the field: no or both
    recipients, an unknown subscriber, an address the channel can not take, a
    recipient the channel can not reach, a disabled integration.
    """
    if not integration.enabled:
        raise _invalid("/integration", f"{integration.name} is disabled: enable it to test it")
    channel = integration.channel
    with transaction.atomic():
        subscriber, address = subscriber.strip(), address.strip()
        if channel == Channel.CHAT and not subscriber and not address:
            upserted = subscriber_upsert(
                profile=SubscriberProfile(
                    external_id=f"{TEST_SUBSCRIBER_PREFIX}chat", name="Test recipient"
                )
            )
            subscriber = upserted.subscriber.external_id
        recipient, created = _test_recipient(
            channel=channel, subscriber=subscriber, address=address
        )
        unreachable = recipient_reachable(recipient, channel)
        if unreachable is not None:
            raise _invalid(
                "/subscriber", f"{recipient['external_id']} can not get {channel}: {unreachable}"
            )
        now = timezone.now()
        event = _event(
            event_type_key=INTEGRATION_TEST_EVENT,
            payload={"integration": integration.name},
            now=now,
        )
        event.recipients = [recipient["external_id"]]
        event.status = EventStatus.PROCESSED
        event.processed_at = now
        event.outcome = {
            "test_send": True,
            "reason": f"integration test from the dashboard by {sent_by}",
            "integration": integration.name,
            "messages": 1,
        }
        event.save(force_insert=True)
        message = Message.objects.create(
            event=event,
            subscriber_id=recipient["id"],
            channel=channel,
            status=MessageStatus.QUEUED,
            content=_integration_test_content(channel=channel, name=integration.name),
            integration=integration,
            created_at=now,
        )
        messages_enqueue(message_ids=[message.id])
    return SentTest(
        event=event,
        message=message,
        subscriber_external_id=recipient["external_id"],
        subscriber_created=created,
    )
