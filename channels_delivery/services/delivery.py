"""Delivering one message: claim it, send it through the channel's current
integration, record the attempt, and apply the retry policy.

A message's status moves only along ``TRANSITIONS``, each move checked under
the row's lock (STYLE.md 4). ``message_deliver`` holds no lock while the
provider talks to the network: it claims the message (``queued`` and due ->
``sending``) in one short transaction, sends, then records the attempt and
moves the message on in another. What a result means is decided in
``channels_delivery.retry``; this module only applies it.
"""

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from channels_delivery.catalogue import Channel
from channels_delivery.crypto import SecretsUnreadable
from channels_delivery.models import (
    DeliveryAttempt,
    Integration,
    Message,
    MessageStatus,
)
from channels_delivery.providers.base import (
    RESPONSE_EXCERPT_MAX,
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_get,
    providers_for,
)
from channels_delivery.retry import FAILOVER_AFTER_RETRYABLE, Action, Decision, decide
from channels_delivery.services.dispatch import messages_enqueue
from channels_delivery.services.integrations import integration_config, integrations_for

logger = logging.getLogger(__name__)

S = MessageStatus
# Every status, and where it may go from there; the terminal ones go nowhere.
TRANSITIONS: Mapping[str, frozenset[str]] = {
    S.QUEUED: frozenset({S.SENDING, S.CANCELLED}),
    S.SENDING: frozenset({S.SENT, S.QUEUED, S.FAILED}),  # queued: a retry or a failover
    S.SENT: frozenset({S.DELIVERED, S.BOUNCED, S.OPENED, S.CLICKED, S.READ, S.FAILED}),
    S.DELIVERED: frozenset({S.BOUNCED, S.OPENED, S.CLICKED, S.READ}),
    S.OPENED: frozenset({S.CLICKED, S.READ}),
    S.READ: frozenset({S.CLICKED}),
    S.CLICKED: frozenset(),
    S.BOUNCED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
# The time a status is reached is kept in its own column.
STAMPS: Mapping[str, str] = {S.SENT: "sent_at", S.DELIVERED: "delivered_at", S.FAILED: "failed_at"}
ERROR_MAX = Message._meta.get_field("error").max_length or 500
ATTEMPT_ERROR_MAX = 2000


class TransitionRefused(Exception):
    """A message was asked to move to a status it can not reach from its own."""

    def __init__(self, *, message_id: uuid.UUID, current: str, to: str) -> None:
        self.current, self.to = current, to
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "nothing: it is final"
        super().__init__(
            f"message {message_id} is {current}; it can not become {to} (from {current}: {allowed})"
        )


def transition_allowed(*, current: str, to: str) -> bool:
    return to in TRANSITIONS.get(current, frozenset())


def _move(message: Message, *, to: str, now: datetime, **fields: Any) -> None:
    """Move a message that the caller holds locked; raises TransitionRefused."""
    if not transition_allowed(current=message.status, to=to):
        raise TransitionRefused(message_id=message.id, current=message.status, to=to)
    stamp = STAMPS.get(to)
    if stamp and stamp not in fields:
        fields[stamp] = now
    message.status = to
    for name, value in fields.items():
        setattr(message, name, value)
    message.save(update_fields=["status", *fields, "updated_at"])


def message_transition(
    *, message_id: uuid.UUID, to: str, now: datetime | None = None, **fields: Any
) -> Message:
    """Move a message to ``to`` (setting ``fields`` too) if its current status,
    read under a row lock, allows it; raises TransitionRefused otherwise and
    Message.DoesNotExist for an unknown id."""
    if to not in TRANSITIONS:
        raise ValueError(f"unknown message status {to!r}; one of {', '.join(TRANSITIONS)}")
    with transaction.atomic():
        message = Message.objects.select_for_update().get(pk=message_id)
        _move(message, to=to, now=now or timezone.now(), **fields)
    return message


@dataclass(frozen=True, kw_only=True)
class DeliveryReport:
    """What one ``message_deliver`` call did."""

    message_id: uuid.UUID
    status: str  # the message's status afterwards ("" if there is no such message)
    attempted: bool  # False: not due, taken by another worker, or done already
    outcome: str = ""  # the attempt's ResultKind
    action: str = ""  # the retry policy's Action
    next_attempt_at: datetime | None = None


def message_deliver(*, message_id: uuid.UUID, now: datetime | None = None) -> DeliveryReport:
    """Try to deliver one message, if it is queued and due; a no-op otherwise, so a
    message sent once is never sent again however often it is published."""
    now = now or timezone.now()
    message = _claim(message_id=message_id, now=now)
    if message is None:
        current = Message.objects.filter(pk=message_id).values_list("status", flat=True).first()
        return DeliveryReport(message_id=message_id, status=current or "", attempted=False)
    integrations = integrations_for(channel=message.channel)
    integration = _current(message=message, integrations=integrations)
    clock = time.monotonic()
    provider_key, result, final = _send(message=message, integration=integration)
    elapsed = time.monotonic() - clock
    return _record(
        message_id=message.id,
        integration=integration,
        following=_following(integration=integration, integrations=integrations),
        provider_key=provider_key,
        result=result,
        final=final,
        started_at=now,
        elapsed=elapsed,
    )


def _claim(*, message_id: uuid.UUID, now: datetime) -> Message | None:
    with transaction.atomic():
        message = (
            Message.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("subscriber")
            .filter(pk=message_id)
            .first()
        )
        if message is None or message.status != S.QUEUED:
            return None  # unknown, locked by another worker, or past queued
        if (message.send_after and message.send_after > now) or (
            message.next_attempt_at and message.next_attempt_at > now
        ):
            return None  # not yet: the sweeper publishes it when it is due
        # Counted when it starts, so a message whose worker dies every time (the
        # sweeper queues it again) still runs out of attempts.
        _move(message, to=S.SENDING, now=now, attempt_count=message.attempt_count + 1)
    return message


def _current(*, message: Message, integrations: Sequence[Integration]) -> Integration | None:
    """The integration to send with: the message's own while it is enabled, else the
    channel's primary."""
    for integration in integrations:
        if integration.pk == message.integration_id:
            return integration
    return integrations[0] if integrations else None


def _following(
    *, integration: Integration | None, integrations: Sequence[Integration]
) -> Integration | None:
    """The next integration in send order after ``integration``, if any."""
    if integration is None:
        return None
    for index, candidate in enumerate(integrations):
        if candidate.pk == integration.pk:
            return integrations[index + 1] if index + 1 < len(integrations) else None
    return None


def _address(message: Message) -> dict[str, Any]:
    subscriber = message.subscriber
    if subscriber is None:
        return {}
    address: dict[str, Any] = {"subscriber": subscriber.external_id, "name": subscriber.name}
    if message.channel == Channel.EMAIL:
        address["email"] = subscriber.email
    elif message.channel == Channel.SMS:
        address["phone"] = subscriber.phone
    else:
        # Push subscriptions, chat URLs...: whatever the subscriber's profile holds
        # for the channel.
        specific = (subscriber.channels or {}).get(message.channel)
        if isinstance(specific, Mapping):
            address.update(specific)
        elif specific not in (None, ""):
            address["target"] = specific
    return address


def _send(*, message: Message, integration: Integration | None) -> tuple[str, ProviderResult, bool]:
    """(provider key, result, final): ``final`` when no other integration could do
    better, so the message fails without failover."""
    channel = message.channel
    if message.subscriber is None:
        error = "the subscriber was erased, so the message has no address"
        return "", ProviderResult(kind=ResultKind.PERMANENT, error=error), True
    if not providers_for(channel):
        error = f"Herald has no provider for the {channel} channel yet"
        return "", ProviderResult(kind=ResultKind.CONFIG_ERROR, error=error), True
    if integration is None:
        error = f"no enabled integration for the {channel} channel; add one to send {channel}"
        return "", ProviderResult(kind=ResultKind.CONFIG_ERROR, error=error), True
    try:
        provider = provider_get(channel=channel, key=integration.provider)
    except LookupError as missing:
        error = f"integration {integration.name!r}: {missing}"
        return (
            integration.provider,
            ProviderResult(kind=ResultKind.CONFIG_ERROR, error=error),
            False,
        )
    try:
        config = integration_config(integration=integration)
    except SecretsUnreadable as unreadable:
        error = f"integration {integration.name!r}: its secrets can not be read ({unreadable})"
        return (
            integration.provider,
            ProviderResult(kind=ResultKind.CONFIG_ERROR, error=error),
            False,
        )
    rendered = RenderedMessage(
        message_id=str(message.id),
        channel=channel,
        content=message.content,
        address=_address(message),
        idempotency_key=str(message.id),
    )
    try:
        result = provider.send(rendered, config)
    except Exception as crash:
        # A provider must return a result; one that raises is a bug, retried like
        # an outage (and failed over after a few) rather than losing the message.
        logger.exception(
            "provider %s/%s raised sending %s", channel, integration.provider, message.id
        )
        error = f"the {integration.provider} provider failed: {type(crash).__name__}: {crash}"
        result = ProviderResult(kind=ResultKind.RETRYABLE, error=error[:ATTEMPT_ERROR_MAX])
    return integration.provider, result, False


def _retryable_in_a_row(*, message_id: uuid.UUID, integration: Integration | None) -> int:
    recent = DeliveryAttempt.objects.filter(message_id=message_id).order_by("-pk")
    count = 0
    for integration_id, outcome in recent.values_list("integration_id", "outcome")[
        :FAILOVER_AFTER_RETRYABLE
    ]:
        if (
            outcome != ResultKind.RETRYABLE
            or integration is None
            or integration_id != integration.pk
        ):
            break
        count += 1
    return count


def _record(
    *,
    message_id: uuid.UUID,
    integration: Integration | None,
    following: Integration | None,
    provider_key: str,
    result: ProviderResult,
    final: bool,
    started_at: datetime,
    elapsed: float,
) -> DeliveryReport:
    with transaction.atomic():
        message = Message.objects.select_for_update().get(pk=message_id)
        DeliveryAttempt.objects.create(
            message=message,
            integration=integration,
            provider=provider_key,
            started_at=started_at,
            finished_at=started_at + timedelta(seconds=elapsed),
            outcome=result.kind,
            response_status=result.response_status,
            response_excerpt=result.response_excerpt[:RESPONSE_EXCERPT_MAX],
            error=result.error[:ATTEMPT_ERROR_MAX],
            provider_message_id=result.provider_message_id[:255],
            latency_ms=round(elapsed * 1000),
        )
        if message.status != S.SENDING:
            # The sweeper took it back (this attempt outlived the sending timeout):
            # the attempt is kept, the message is someone else's now.
            logger.warning("message %s was %s when its attempt ended", message.id, message.status)
            return DeliveryReport(
                message_id=message.id, status=message.status, attempted=True, outcome=result.kind
            )
        attempt_count = message.attempt_count  # this attempt included (see _claim)
        label = f"{integration.name}: " if integration else ""
        if final:
            decision = Decision(action=Action.FAIL, reason=result.error)
        else:
            decision = decide(
                kind=result.kind,
                attempt_count=attempt_count,
                retryable_in_a_row=_retryable_in_a_row(
                    message_id=message.id, integration=integration
                )
                if result.kind is ResultKind.RETRYABLE
                else 0,
                has_next_integration=following is not None,
                retry_after_seconds=result.retry_after_seconds,
                error=result.error,
            )
        _apply(
            message=message,
            decision=decision,
            now=started_at,
            attempt_count=attempt_count,
            integration=integration,
            following=following,
            label=label,
        )
    return DeliveryReport(
        message_id=message.id,
        status=message.status,
        attempted=True,
        outcome=result.kind,
        action=decision.action,
        next_attempt_at=message.next_attempt_at,
    )


def _apply(
    *,
    message: Message,
    decision: Decision,
    now: datetime,
    attempt_count: int,
    integration: Integration | None,
    following: Integration | None,
    label: str,
) -> None:
    common: dict[str, Any] = {"attempt_count": attempt_count, "integration": integration}
    if decision.action is Action.SENT:
        _move(message, to=S.SENT, now=now, next_attempt_at=None, error="", **common)
    elif decision.action is Action.RETRY:
        due = now + timedelta(seconds=decision.delay_seconds)
        error = f"{label}{decision.reason}"[:ERROR_MAX]
        _move(message, to=S.QUEUED, now=now, next_attempt_at=due, error=error, **common)
        if decision.delay_seconds < settings.HERALD_DELIVERY_COUNTDOWN_MAX_SECONDS:
            messages_enqueue(message_ids=[message.id], countdown=decision.delay_seconds)
        # A longer wait stays in the row; the sweeper publishes it when due.
    elif decision.action is Action.FAILOVER and following is not None:
        error = f"{label}{decision.reason}; trying {following.name}"[:ERROR_MAX]
        # From here on ``integration`` is the one to send with next.
        common["integration"] = following
        _move(message, to=S.QUEUED, now=now, next_attempt_at=now, error=error, **common)
        messages_enqueue(message_ids=[message.id])
    else:
        error = f"{label}{decision.reason}"[:ERROR_MAX] or "delivery failed"
        _move(message, to=S.FAILED, now=now, next_attempt_at=None, error=error, **common)
