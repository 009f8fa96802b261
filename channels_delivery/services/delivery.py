"""Delivering one message: claim it, send it through the channel's current
integration, record the attempt, and apply the retry policy.

A message's status moves only along ``TRANSITIONS``, each move checked under
the row's lock (STYLE.md 4). ``message_deliver`` holds no lock while the
provider talks to the network: it claims the message (``queued`` and due ->
``sending``) in one short transaction, sends, then records the attempt and
moves the message on in another. What a result means is decided in
``channels_delivery.retry``; this module only applies it.

Two channels are Herald's own and need no tenant integration (``BUILT_IN``):
``in_app`` (the Message row is the inbox item: accepted at once, then marked
delivered and pushed to the subscriber's open sockets after commit) and
``webhook``, whose addresses are the tenant's WebhookEndpoints. A webhook
message goes to every enabled endpoint whose event filter receives its event's
type, one DeliveryAttempt per endpoint; it is sent once all of them accepted,
and a retry goes only to the endpoints that have not accepted yet. An endpoint
that answers 410 Gone is disabled and no longer counts against the message.

The database may go away between the send and the record (a restart, a
failover). The results are in hand then, so recording them is tried again on
a new connection for a few seconds (``RECORD_RETRY_WAITS``) rather than
leaving the messages ``sending`` until the sweeper's timeout and a second send.
"""

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from channels_delivery.catalogue import Channel
from channels_delivery.crypto import SecretsUnreadable
from channels_delivery.models import (
    DeliveryAttempt,
    Integration,
    Message,
    MessageStatus,
    WebhookEndpoint,
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
from channels_delivery.services.callbacks import message_callbacks_emit
from channels_delivery.services.dispatch import messages_due, messages_enqueue
from channels_delivery.services.inbox import inbox_notify
from channels_delivery.services.integrations import integration_config, integrations_for
from channels_delivery.services.webhooks import (
    endpoint_address,
    endpoint_delivery_record,
    endpoint_is_slow,
    endpoints_receiving,
)
from channels_delivery.tracking import tracking_prepare
from herald.limits import token_wait
from tenants.db import tenant_connection

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
# The time each status is reached; the analytics rollup counts these columns.
# A bounce is a failure reported after the provider accepted the message.
STAMPS: Mapping[str, str] = {
    S.SENT: "sent_at",
    S.DELIVERED: "delivered_at",
    S.FAILED: "failed_at",
    S.BOUNCED: "failed_at",
    S.OPENED: "opened_at",
    S.CLICKED: "clicked_at",
    S.READ: "read_at",
}
ERROR_MAX = Message._meta.get_field("error").max_length or 500
ATTEMPT_ERROR_MAX = 2000

# Channels Herald delivers itself, with the provider named here: no tenant
# Integration is needed (or looked at), and there is no failover.
BUILT_IN: Mapping[str, str] = {
    Channel.IN_APP: "inbox",
    Channel.WEBHOOK: "webhook",
    Channel.PUSH: "webpush",  # with the tenant's own VAPID keys (providers.push)
}
# Channels whose provider accepting a message is its delivery.
DELIVERED_WHEN_SENT = frozenset({Channel.IN_APP})
# A webhook attempt's provider_message_id names the endpoint it went to, so a
# retry knows which endpoints already accepted the message.
ENDPOINT_MARK = "endpoint:"


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
    # In the same transaction: the status and its callback commit together.
    message_callbacks_emit(message=message, status=to, now=now)


def _move_many(messages: Sequence[Message], *, to: str, now: datetime, **fields: Any) -> None:
    """``_move`` for messages the caller holds locked, in one statement."""
    for message in messages:
        if not transition_allowed(current=message.status, to=to):
            raise TransitionRefused(message_id=message.id, current=message.status, to=to)
    stamp = STAMPS.get(to)
    if stamp and stamp not in fields:
        fields[stamp] = now
    Message.objects.filter(pk__in=[message.pk for message in messages]).update(
        status=to, updated_at=now, **fields
    )
    for message in messages:
        message.status = to
        message.updated_at = now
        for name, value in fields.items():
            setattr(message, name, value)
        message_callbacks_emit(message=message, status=to, now=now)


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


def message_deliver(
    *, message_id: uuid.UUID, now: datetime | None = None, slow_lane: bool = False
) -> DeliveryReport:
    """Try to deliver one message, if it is queued and due; a no-op otherwise, so a
    message sent once is never sent again however often it is published."""
    return messages_deliver_many(message_ids=[message_id], now=now, slow_lane=slow_lane)[0]


def messages_deliver_many(
    *, message_ids: Sequence[uuid.UUID], now: datetime | None = None, slow_lane: bool = False
) -> list[DeliveryReport]:
    """Deliver the queued, due messages among ``message_ids`` (one report each, in
    order): claimed with one statement, webhooks POSTed at the same time through
    the fan-out threads, every attempt and status recorded in one transaction.
    A message that is not queued and due is left alone (``attempted`` False).

    Two things hand a claimed message back, queued again without spending an
    attempt: its integration's rate limit (it comes back when a token is there)
    and, outside the slow lane, a webhook endpoint it is owed to that is slow
    (it goes to the slow lane, whose own workers wait for such receivers)."""
    now = now or timezone.now()
    ids = list(dict.fromkeys(message_ids))
    claimed = _claim_many(message_ids=ids, now=now)
    reports: dict[uuid.UUID, DeliveryReport] = {}
    unclaimed = [message_id for message_id in ids if message_id not in claimed]
    if unclaimed:
        statuses = dict(Message.objects.filter(pk__in=unclaimed).values_list("pk", "status"))
        for message_id in unclaimed:
            reports[message_id] = DeliveryReport(
                message_id=message_id, status=statuses.get(message_id, ""), attempted=False
            )
    batch = _Batch(now=now, claimed=list(claimed.values()))
    jobs: list[_Job] = []
    handed_back: list[tuple[Message, float, bool]] = []
    for message in claimed.values():
        if message.channel == Channel.WEBHOOK:
            endpoints = batch.endpoints_owed(message)
            if not slow_lane and any(endpoint_is_slow(endpoint=e, now=now) for e in endpoints):
                handed_back.append((message, 0.0, True))
                continue
            jobs.append(_webhook_job(message=message, endpoints=endpoints, batch=batch))
        elif message.channel in BUILT_IN:
            jobs.append(_Job(message=message))
        else:
            integrations = batch.integrations(message.channel)
            integration = _current(message=message, integrations=integrations)
            wait = _rate_limit_wait(integration)
            if wait > 0:
                handed_back.append((message, wait, slow_lane))
                continue
            following = _following(integration=integration, integrations=integrations)
            jobs.append(_Job(message=message, integration=integration, following=following))
    if handed_back:
        reports.update(_hand_back(handed_back, now=now))
    clock = time.monotonic()
    _post_webhooks(jobs, now=now, clock=clock)
    for job in jobs:
        if job.message.channel != Channel.WEBHOOK:
            job.sends, job.final = _send(
                message=job.message, integration=job.integration, now=now, clock=clock
            )
    if jobs:
        reports.update(_record_with_retries(jobs, started_at=now))
    return [reports[message_id] for message_id in ids]


def integration_rate_key(integration: Integration) -> str:
    return f"herald:integration-rate:{tenant_connection.schema_name}:{integration.pk}"


# Per process: the last time slot given to a message held back by each
# integration's rate limit (monotonic seconds).
_rate_slots: dict[str, float] = {}


def _rate_limit_wait(integration: Integration | None) -> float:
    """Seconds to hold a message back for the integration's rate limit; 0.0 when a
    token was taken and it may go now. Messages held back one after another get
    successive slots 1/rate apart, so a backlog comes back spread out rather
    than all at once when the next token is due."""
    if integration is None or not integration.rate_limit_per_second:
        return 0.0
    rate = integration.rate_limit_per_second
    key = integration_rate_key(integration)
    wait = token_wait(key=key, rate=rate, capacity=rate)
    if wait <= 0:
        return 0.0
    clock = time.monotonic()
    slot = max(clock + wait, _rate_slots.get(key, 0.0) + 1 / rate)
    _rate_slots[key] = slot
    return slot - clock


def _hand_back(
    held: Sequence[tuple[Message, float, bool]], *, now: datetime
) -> dict[uuid.UUID, DeliveryReport]:
    """Undo claims: each (message, countdown, slow lane) is queued again, its
    attempt not counted, and published ``countdown`` seconds from now (to the
    slow lane if asked)."""
    reports = {}
    with transaction.atomic():
        locked = Message.objects.select_for_update().in_bulk([message.pk for message, _, _ in held])
        for message, countdown, slow in held:
            row = locked.get(message.pk)
            if row is not None and row.status == S.SENDING:
                _move(row, to=S.QUEUED, now=now, attempt_count=max(0, row.attempt_count - 1))
                messages_enqueue(message_ids=[row.id], countdown=countdown, slow_lane=slow)
            reports[message.pk] = DeliveryReport(
                message_id=message.pk, status=row.status if row else "", attempted=False
            )
    return reports


@dataclass(frozen=True, kw_only=True)
class _Sent:
    """One provider call: what became of it and when (seconds after the claim)."""

    provider_key: str
    result: ProviderResult
    offset: float = 0.0
    elapsed: float = 0.0
    endpoint_id: int | None = None


@dataclass(kw_only=True)
class _Job:
    """One claimed message on its way: where it goes, and what became of it."""

    message: Message
    integration: Integration | None = None
    following: Integration | None = None
    # Webhook calls still to make: (endpoint, label for errors, the signed request's input).
    posts: list[tuple[WebhookEndpoint, str, RenderedMessage]] = field(default_factory=list)
    sends: list[_Sent] = field(default_factory=list)
    final: bool = False  # fail without failover: no other integration could do better


class _Batch:
    """What the messages of one batch share, read once: integrations by channel,
    enabled endpoints by event type, and which endpoints already accepted which
    message."""

    def __init__(self, *, now: datetime, claimed: Sequence[Message]) -> None:
        self.now = now
        self._integrations: dict[str, list[Integration]] = {}
        self._endpoints: dict[str, list[WebhookEndpoint]] = {}
        # Earlier attempts (a retry, a replay) may have reached some endpoints.
        webhooks = [message.pk for message in claimed if message.channel == Channel.WEBHOOK]
        self.accepted = _endpoints_accepted(message_ids=webhooks) if webhooks else {}

    def integrations(self, channel: str) -> list[Integration]:
        if channel not in self._integrations:
            self._integrations[channel] = integrations_for(channel=channel)
        return self._integrations[channel]

    def endpoints_owed(self, message: Message) -> list[WebhookEndpoint]:
        """The enabled endpoints that receive the message's event type and have
        not accepted it yet."""
        event_type = _event_type(message)
        if event_type not in self._endpoints:
            self._endpoints[event_type] = endpoints_receiving(event_type=event_type)
        done = self.accepted.get(message.pk, set())
        return [endpoint for endpoint in self._endpoints[event_type] if endpoint.pk not in done]


def _event_type(message: Message) -> str:
    annotated = getattr(message, "event_type_key", None)
    return annotated if isinstance(annotated, str) else message.event.event_type_key


def _claim_many(*, message_ids: Sequence[uuid.UUID], now: datetime) -> dict[uuid.UUID, Message]:
    """Move the queued, due messages among ``message_ids`` that no other worker
    holds to ``sending``, each attempt counted as it starts (so a message whose
    worker dies every time still runs out of attempts)."""
    if not message_ids:
        return {}
    with transaction.atomic():
        claimed = list(
            Message.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("subscriber")
            .annotate(event_type_key=F("event__event_type_key"))
            .filter(messages_due(now=now), pk__in=message_ids)
        )
        if claimed:
            # The guarded move queued -> sending, in bulk: the rows are locked and queued.
            Message.objects.filter(pk__in=[message.pk for message in claimed]).update(
                status=S.SENDING, attempt_count=F("attempt_count") + 1, updated_at=now
            )
            for message in claimed:
                message.status = S.SENDING
                message.attempt_count += 1
                message.updated_at = now
    return {message.pk: message for message in claimed}


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


def _send(
    *, message: Message, integration: Integration | None, now: datetime, clock: float
) -> tuple[list[_Sent], bool]:
    """(the provider calls made, final): ``final`` when no other integration could
    do better, so the message fails without failover."""
    channel = message.channel
    if message.subscriber is None:
        error = "the subscriber was erased, so the message has no address"
        return [_Sent(provider_key="", result=_failure(ResultKind.PERMANENT, error))], True
    if not providers_for(channel):
        error = f"Herald has no provider for the {channel} channel yet"
        return [_Sent(provider_key="", result=_failure(ResultKind.CONFIG_ERROR, error))], True
    if channel in BUILT_IN:
        provider_key = BUILT_IN[channel]
        result = _provider_send(
            channel=channel, key=provider_key, rendered=_rendered(message), config={}
        )
        # Not final: the retry policy decides (there is no integration to fail over to).
        return [_timed(provider_key=provider_key, result=result, clock=clock)], False
    if integration is None:
        error = f"no enabled integration for the {channel} channel; add one to send {channel}"
        return [_Sent(provider_key="", result=_failure(ResultKind.CONFIG_ERROR, error))], True
    try:
        config = integration_config(integration=integration)
    except SecretsUnreadable as unreadable:
        error = f"integration {integration.name!r}: its secrets can not be read ({unreadable})"
        failure = _failure(ResultKind.CONFIG_ERROR, error)
        return [_Sent(provider_key=integration.provider, result=failure)], False
    result = _provider_send(
        channel=channel,
        key=integration.provider,
        rendered=_rendered(message),
        config=config,
        label=f"integration {integration.name!r}: ",
    )
    return [_timed(provider_key=integration.provider, result=result, clock=clock)], False


def _failure(kind: ResultKind, error: str) -> ProviderResult:
    return ProviderResult(kind=kind, error=error[:ATTEMPT_ERROR_MAX])


def _timed(*, provider_key: str, result: ProviderResult, clock: float) -> _Sent:
    """A call that started at ``clock`` (monotonic) and ended now."""
    return _Sent(provider_key=provider_key, result=result, elapsed=time.monotonic() - clock)


def _rendered(message: Message, *, address: Mapping[str, Any] | None = None) -> RenderedMessage:
    rendered = RenderedMessage(
        message_id=str(message.id),
        channel=message.channel,
        content=message.content,
        address=_address(message) if address is None else address,
        # The message's id, the same on every retry and for every endpoint: a
        # receiver drops a delivery it already processed (webhook-id).
        idempotency_key=str(message.id),
    )
    return tracking_prepare(rendered, message=message)  # email: unsubscribe + tracking


def _provider_send(
    *,
    channel: str,
    key: str,
    rendered: RenderedMessage,
    config: Mapping[str, Any],
    label: str = "",
) -> ProviderResult:
    """One provider call; a missing provider or one that raises becomes a result."""
    try:
        provider = provider_get(channel=channel, key=key)
    except LookupError as missing:
        return _failure(ResultKind.CONFIG_ERROR, f"{label}{missing}")
    try:
        return provider.send(rendered, config)
    except Exception as crash:
        # A provider must return a result; one that raises is a bug, retried like
        # an outage (and failed over after a few) rather than losing the message.
        logger.exception("provider %s/%s raised sending %s", channel, key, rendered.message_id)
        error = f"the {key} provider failed: {type(crash).__name__}: {crash}"
        return _failure(ResultKind.RETRYABLE, error)


def _endpoints_accepted(*, message_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, set[int]]:
    """The webhook endpoints that already accepted each message (earlier attempts)."""
    marks = DeliveryAttempt.objects.filter(
        message_id__in=message_ids,
        outcome=ResultKind.ACCEPTED,
        provider_message_id__startswith=ENDPOINT_MARK,
    ).values_list("message_id", "provider_message_id")
    accepted: dict[uuid.UUID, set[int]] = {}
    for message_id, mark in marks:
        accepted.setdefault(message_id, set()).add(int(mark.removeprefix(ENDPOINT_MARK)))
    return accepted


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def _fanout_pool() -> ThreadPoolExecutor:
    """The threads that POST a webhook to several endpoints at once: one pool per
    process (made after a prefork worker forks), kept so that their HTTP
    connections are reused."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(
            max_workers=settings.HERALD_WEBHOOK_FANOUT_CONCURRENCY, thread_name_prefix="webhook"
        )
        _pool_pid = os.getpid()
    return _pool


def _webhook_job(*, message: Message, endpoints: Sequence[WebhookEndpoint], batch: _Batch) -> _Job:
    """What to POST for a webhook message: one signed request per endpoint owed it.
    Everything that reads the database happens here, in the task's thread; the
    fan-out threads only sign and POST."""
    key = BUILT_IN[Channel.WEBHOOK]
    job = _Job(message=message)
    if not endpoints:
        if batch.accepted.get(message.pk):
            return job  # the endpoints still owed were disabled or deleted meanwhile
        error = (
            f"no enabled webhook endpoint receives {_event_type(message)!r} events; "
            "add one, or widen an endpoint's event types"
        )
        job.sends, job.final = (
            [_Sent(provider_key=key, result=_failure(ResultKind.CONFIG_ERROR, error))],
            True,
        )
        return job
    for endpoint in endpoints:
        label = f"endpoint {endpoint.pk} ({endpoint.url[:200]}): "
        try:
            address = endpoint_address(endpoint=endpoint, now=batch.now)
        except SecretsUnreadable as unreadable:
            error = f"{label}its signing secrets can not be read ({unreadable})"
            job.sends.append(
                _Sent(
                    provider_key=key,
                    result=_failure(ResultKind.CONFIG_ERROR, error),
                    endpoint_id=endpoint.pk,
                )
            )
        else:
            job.posts.append((endpoint, label, _rendered(message, address=address)))
    return job


def _post_webhooks(jobs: Sequence[_Job], *, now: datetime, clock: float) -> None:
    """POST every webhook request of the batch at the same time (the fan-out
    threads), so no receiver waits for another; then record each endpoint's
    health once (a 410 disables it, a slow answer sends it to the slow lane, a
    success ends a failure streak)."""
    key = BUILT_IN[Channel.WEBHOOK]
    calls = [
        (job, endpoint, label, rendered) for job in jobs for endpoint, label, rendered in job.posts
    ]

    def post(rendered: RenderedMessage, label: str) -> tuple[ProviderResult, float, float]:
        started = time.monotonic()
        result = _provider_send(
            channel=Channel.WEBHOOK, key=key, rendered=rendered, config={}, label=label
        )
        if result.error:
            result = dataclasses.replace(result, error=f"{label}{result.error}")
        return result, started - clock, time.monotonic() - started

    if len(calls) == 1:
        _, _, label, rendered = calls[0]
        outcomes = [post(rendered, label)]
    else:
        pool = _fanout_pool()
        futures = [pool.submit(post, rendered, label) for _, _, label, rendered in calls]
        outcomes = [future.result() for future in futures]
    health: dict[int, list[tuple[ProviderResult, float | None]]] = {}
    for job in jobs:
        for sent in job.sends:  # refused before any request (unreadable secrets)
            if sent.endpoint_id is not None:
                health.setdefault(sent.endpoint_id, []).append((sent.result, None))
    for (job, endpoint, _label, _rendered_message), (result, offset, elapsed) in zip(
        calls, outcomes, strict=True
    ):
        job.sends.append(
            _Sent(
                provider_key=key,
                result=result,
                offset=offset,
                elapsed=elapsed,
                endpoint_id=endpoint.pk,
            )
        )
        health.setdefault(endpoint.pk, []).append((result, elapsed))
    endpoints = {endpoint.pk: endpoint for job in jobs for endpoint, _, _ in job.posts}
    for endpoint_id, results in health.items():
        summary, slowest = _health_summary(results)
        known = endpoints.get(endpoint_id)
        if (
            known is not None
            and summary.kind is ResultKind.ACCEPTED
            and known.failing_since is None
            and known.slow_until is None
            and (slowest is None or slowest < settings.HERALD_WEBHOOK_SLOW_SECONDS)
        ):
            continue  # healthy and quick, as it was read for this batch: nothing to write
        endpoint_delivery_record(
            endpoint_id=endpoint_id, result=summary, now=now, elapsed_seconds=slowest
        )


def _health_summary(
    results: Sequence[tuple[ProviderResult, float | None]],
) -> tuple[ProviderResult, float | None]:
    """One endpoint's results in a batch, as one for its health: a request to stop
    (410) wins, then any success (the endpoint works), else the first failure;
    with the slowest answer."""
    timed = [elapsed for _, elapsed in results if elapsed is not None]
    slowest = max(timed) if timed else None
    for result, _ in results:
        if result.disable_endpoint:
            return result, slowest
    for result, _ in results:
        if result.kind is ResultKind.ACCEPTED:
            return result, slowest
    return results[0][0], slowest


def _combined(sends: Sequence[_Sent]) -> ProviderResult:
    """What the calls mean for the message: accepted when every call was (a
    disabled endpoint no longer counts); otherwise a retry if any failure is
    worth one (the next attempt reaches only the endpoints still owed), else the
    first failure."""
    if not sends:
        return ProviderResult(kind=ResultKind.ACCEPTED)
    results = [sent.result for sent in sends]
    failed = [
        result
        for result in results
        if result.kind is not ResultKind.ACCEPTED and not result.disable_endpoint
    ]
    if not failed:
        accepted = [result for result in results if result.kind is ResultKind.ACCEPTED]
        # Every endpoint asked to be disabled: the message reached no one.
        return accepted[0] if accepted else results[0]
    if len(results) == 1:
        return failed[0]
    retryable = [result for result in failed if result.kind is ResultKind.RETRYABLE]
    chosen = retryable[0] if retryable else failed[0]
    waits = [result.retry_after_seconds for result in retryable if result.retry_after_seconds]
    return dataclasses.replace(
        chosen,
        error="; ".join(result.error for result in failed)[:ATTEMPT_ERROR_MAX],
        retry_after_seconds=max(waits) if waits else chosen.retry_after_seconds,
    )


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


# Seconds between tries to record a batch's attempts while the database is
# unreachable: about 15 s in all, well within the task's time limit.
RECORD_RETRY_WAITS = (0.5, 1.0, 2.0, 4.0, 8.0)


def _record_with_retries(
    jobs: Sequence[_Job], *, started_at: datetime
) -> dict[uuid.UUID, DeliveryReport]:
    """``_record_many``, tried again while the connection is lost. Inside an
    outer transaction there is nothing to retry: that transaction is gone."""
    tries = 0
    while True:
        try:
            return _record_many(jobs, started_at=started_at, again=tries > 0)
        except (OperationalError, InterfaceError) as error:
            if tries == len(RECORD_RETRY_WAITS) or connection.in_atomic_block:
                raise
            wait = RECORD_RETRY_WAITS[tries]
            tries += 1
            logger.warning(
                "recording the attempts of %s messages failed (%s); trying again in %s s",
                len(jobs),
                error,
                wait,
            )
            connection.close()  # the next query connects afresh, on the same schema
            time.sleep(wait)


def _record_many(
    jobs: Sequence[_Job], *, started_at: datetime, again: bool = False
) -> dict[uuid.UUID, DeliveryReport]:
    """Store every attempt of the batch and move each message on, in one
    transaction: the retry policy decides per message; the messages sent with
    the same integration move together in one statement. ``again``: an
    earlier try may have committed after all (its connection died before the
    answer), so attempts are stored only for messages still ``sending``."""
    reports: dict[uuid.UUID, DeliveryReport] = {}
    with transaction.atomic():
        locked = Message.objects.select_for_update().in_bulk([job.message.pk for job in jobs])
        DeliveryAttempt.objects.bulk_create(
            [
                _attempt(
                    message_id=job.message.pk,
                    integration=job.integration,
                    sent=sent,
                    started_at=started_at,
                )
                for job in jobs
                if job.message.pk in locked
                and not (again and locked[job.message.pk].status != S.SENDING)
                for sent in job.sends
            ]
        )
        sent_together: dict[int | None, list[Message]] = {}
        for job in jobs:
            message = locked.get(job.message.pk)
            result = _combined(job.sends)
            if message is None:
                reports[job.message.pk] = DeliveryReport(
                    message_id=job.message.pk, status="", attempted=True, outcome=result.kind
                )
                continue
            if message.status != S.SENDING:
                # The sweeper took it back (this attempt outlived the sending timeout):
                # the attempt is kept, the message is someone else's now.
                logger.warning(
                    "message %s was %s when its attempt ended", message.id, message.status
                )
                reports[message.pk] = DeliveryReport(
                    message_id=message.pk,
                    status=message.status,
                    attempted=True,
                    outcome=result.kind,
                )
                continue
            decision = _decision(job=job, message=message, result=result)
            if decision.action is Action.SENT:
                integration_id = job.integration.pk if job.integration else None
                sent_together.setdefault(integration_id, []).append(message)
            else:
                _apply(
                    message=message,
                    decision=decision,
                    now=started_at,
                    attempt_count=message.attempt_count,
                    integration=job.integration,
                    following=job.following,
                    label=f"{job.integration.name}: " if job.integration else "",
                )
            reports[message.pk] = DeliveryReport(
                message_id=message.pk,
                status=message.status,
                attempted=True,
                outcome=result.kind,
                action=decision.action,
                next_attempt_at=message.next_attempt_at,
            )
        for integration_id, messages in sent_together.items():
            _move_many(
                messages,
                to=S.SENT,
                now=started_at,
                next_attempt_at=None,
                error="",
                integration_id=integration_id,
            )
            delivered = [message for message in messages if message.channel in DELIVERED_WHEN_SENT]
            if delivered:
                _move_many(delivered, to=S.DELIVERED, now=started_at)
                for message in delivered:
                    inbox_notify(message=message)  # on commit: the row is there when it arrives
            for message in messages:
                reports[message.pk] = dataclasses.replace(
                    reports[message.pk], status=message.status
                )
    return reports


def _attempt(
    *, message_id: uuid.UUID, integration: Integration | None, sent: _Sent, started_at: datetime
) -> DeliveryAttempt:
    return DeliveryAttempt(
        message_id=message_id,
        integration=integration,
        provider=sent.provider_key,
        started_at=started_at + timedelta(seconds=sent.offset),
        finished_at=started_at + timedelta(seconds=sent.offset + sent.elapsed),
        outcome=sent.result.kind,
        response_status=sent.result.response_status,
        response_excerpt=sent.result.response_excerpt[:RESPONSE_EXCERPT_MAX],
        error=sent.result.error[:ATTEMPT_ERROR_MAX],
        provider_message_id=(
            f"{ENDPOINT_MARK}{sent.endpoint_id}"
            if sent.endpoint_id is not None
            else sent.result.provider_message_id[:255]
        ),
        latency_ms=round(sent.elapsed * 1000),
    )


def _decision(*, job: _Job, message: Message, result: ProviderResult) -> Decision:
    if job.final:
        return Decision(action=Action.FAIL, reason=result.error)
    return decide(
        kind=result.kind,
        attempt_count=message.attempt_count,  # this attempt included (see _claim_many)
        retryable_in_a_row=_retryable_in_a_row(message_id=message.id, integration=job.integration)
        if result.kind is ResultKind.RETRYABLE
        else 0,
        has_next_integration=job.following is not None,
        retry_after_seconds=result.retry_after_seconds,
        error=result.error,
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
