"""Delivering messages with the real providers: email to an aiosmtpd server and SMS to
HTTP sinks on 127.0.0.1; time is controlled by passing ``now``."""

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.db.models import Max
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.models import (
    DeliveryAttempt,
    Integration,
    Message,
    MessageStatus,
    StatsDelta,
)
from channels_delivery.retry import FAILOVER_AFTER_RETRYABLE, JITTER
from channels_delivery.services import delivery as delivery_module
from channels_delivery.services.delivery import (
    STAMPS,
    TRANSITIONS,
    TransitionRefused,
    message_deliver,
    message_transition,
)
from channels_delivery.services.integrations import integration_create
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.channels_delivery.conftest import Published
from tests.channels_delivery.sinks import HttpSink, http_sink
from tests.channels_delivery.test_email_provider import Sink, start_server
from tests.threads import in_own_connection, own_backend_terminate

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The sinks listen on 127.0.0.1, which the SSRF guard refuses in production."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@pytest.fixture
def schema(tenant_a: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant_a):
        yield tenant_a


@pytest.fixture
def sms_a() -> Iterator[HttpSink]:
    with http_sink() as running:
        yield running


@pytest.fixture
def sms_b() -> Iterator[HttpSink]:
    with http_sink() as running:
        yield running


def smtp_server(sink: Sink) -> tuple[Controller, int]:
    return start_server(sink)


@pytest.fixture
def smtp_a() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    controller, port = smtp_server(sink)
    yield sink, port
    controller.stop()


@pytest.fixture
def smtp_b() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    controller, port = smtp_server(sink)
    yield sink, port
    controller.stop()


def smtp_integration(name: str, port: int, priority: int = 0) -> Integration:
    return integration_create(
        channel="email",
        provider="smtp",
        name=name,
        priority=priority,
        config={
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "from_email": "Acme <no-reply@acme.example>",
            "timeout": 3,
        },
    )


def sms_integration(name: str, sink: HttpSink, priority: int = 0) -> Integration:
    return integration_create(
        channel="sms",
        provider="http_gateway",
        name=name,
        priority=priority,
        config={"url": f"{sink.url}/send", "timeout": 2},
    )


def a_message(channel: str = "email", **fields: Any) -> Message:
    subscriber, _ = Subscriber.objects.get_or_create(
        external_id="ann",
        defaults={"email": "ann@example.com", "phone": "+447700900123", "name": "Ann"},
    )
    event = Event.objects.create(event_type_key="order.shipped", payload={"order": "A-1"})
    content = (
        {"subject": "Order A-1 shipped", "text": "On its way."}
        if channel == "email"
        else {"text": "Order A-1 shipped"}
    )
    values: dict[str, Any] = {
        "event": event,
        "subscriber": subscriber,
        "channel": channel,
        "content": content,
    }
    values.update(fields)
    return Message.objects.create(**values)


def attempts_of(message: Message) -> list[DeliveryAttempt]:
    return list(DeliveryAttempt.objects.filter(message=message).order_by("pk"))


def fresh(message: Message) -> Message:
    return Message.objects.get(pk=message.pk)


# --- the status machine -----------------------------------------------------------


def test_every_status_has_its_transitions_declared() -> None:
    assert set(TRANSITIONS) == set(MessageStatus.values)
    for targets in TRANSITIONS.values():
        assert targets <= set(MessageStatus.values)
    # Every status can be reached from queued.
    reached, frontier = {MessageStatus.QUEUED.value}, [MessageStatus.QUEUED.value]
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(MessageStatus.values)
    for final in (MessageStatus.FAILED, MessageStatus.CANCELLED, MessageStatus.BOUNCED):
        assert TRANSITIONS[final] == frozenset()


ALLOWED = sorted((current, to) for current, targets in TRANSITIONS.items() for to in targets)


@pytest.mark.parametrize(("current", "to"), ALLOWED)
def test_each_allowed_transition(schema: Tenant, current: str, to: str) -> None:
    message = a_message(status=current)
    now = timezone.now()
    moved = message_transition(message_id=message.id, to=to, now=now)
    assert moved.status == to
    stored = fresh(message)
    assert stored.status == to
    if to in STAMPS:
        assert getattr(stored, STAMPS[to]) == now


@pytest.mark.parametrize(
    ("current", "to"),
    [("queued", "sent"), ("failed", "queued"), ("sent", "queued"), ("cancelled", "sending")],
)
def test_a_transition_not_declared_is_refused(schema: Tenant, current: str, to: str) -> None:
    message = a_message(status=current)
    with pytest.raises(TransitionRefused, match=f"is {current}; it can not become {to}"):
        message_transition(message_id=message.id, to=to)
    assert fresh(message).status == current


def test_an_unknown_status_is_refused(schema: Tenant) -> None:
    message = a_message()
    with pytest.raises(ValueError, match="unknown message status 'lost'"):
        message_transition(message_id=message.id, to="lost")


# --- email through a real SMTP server -----------------------------------------------


def test_an_accepted_email_is_sent_and_its_attempt_recorded(
    schema: Tenant, smtp_a: tuple[Sink, int], delivered: Published
) -> None:
    sink, port = smtp_a
    integration = smtp_integration("main", port)
    message = a_message()
    now = timezone.now()
    report = message_deliver(message_id=message.id, now=now)
    assert (report.attempted, report.status, report.outcome) == (True, "sent", "accepted")
    stored = fresh(message)
    assert (stored.status, stored.sent_at, stored.attempt_count) == ("sent", now, 1)
    assert (stored.integration_id, stored.error, stored.next_attempt_at) == (
        integration.pk,
        "",
        None,
    )
    (attempt,) = attempts_of(message)
    assert (attempt.provider, attempt.outcome, attempt.integration_id) == (
        "smtp",
        "accepted",
        integration.pk,
    )
    assert attempt.started_at == now
    assert attempt.finished_at is not None
    assert attempt.finished_at >= now
    assert attempt.latency_ms is not None
    assert attempt.provider_message_id
    assert [envelope.rcpt_tos for envelope in sink.received] == [["ann@example.com"]]
    assert b"Order A-1 shipped" in (sink.received[0].original_content or b"")
    assert delivered == []  # nothing more to publish


def test_a_451_is_retried_on_schedule_then_delivered(
    schema: Tenant, smtp_a: tuple[Sink, int], delivered: Published
) -> None:
    sink, port = smtp_a
    smtp_integration("main", port)
    message = a_message()
    sink.rcpt_reply = "451 4.7.1 try again later"
    now = timezone.now()

    first = message_deliver(message_id=message.id, now=now)
    assert (first.status, first.outcome, first.action) == ("queued", "retryable", "retry")
    stored = fresh(message)
    assert stored.next_attempt_at == now  # the first retry is immediate
    assert "451" in stored.error
    assert stored.error.startswith("main: ")

    second = message_deliver(message_id=message.id, now=now)
    assert (second.status, second.action) == ("queued", "retry")
    due = fresh(message).next_attempt_at
    assert due is not None
    assert now + timedelta(seconds=5 * (1 - JITTER)) <= due <= now + timedelta(seconds=6)

    # Not due yet: nothing is sent.
    early = message_deliver(message_id=message.id, now=now + timedelta(seconds=3))
    assert early.attempted is False
    assert len(attempts_of(message)) == 2

    sink.rcpt_reply = ""
    later = now + timedelta(seconds=10)
    third = message_deliver(message_id=message.id, now=later)
    assert (third.status, third.outcome) == ("sent", "accepted")
    stored = fresh(message)
    assert (stored.sent_at, stored.attempt_count, stored.error) == (later, 3, "")
    assert [attempt.outcome for attempt in attempts_of(message)] == [
        "retryable",
        "retryable",
        "accepted",
    ]
    assert len(sink.received) == 1


def test_a_550_fails_over_to_the_next_integration_and_is_sent_there(
    schema: Tenant,
    smtp_a: tuple[Sink, int],
    smtp_b: tuple[Sink, int],
    django_capture_on_commit_callbacks: Any,
    delivered: Published,
) -> None:
    primary_sink, primary_port = smtp_a
    backup_sink, backup_port = smtp_b
    primary = smtp_integration("primary", primary_port, priority=0)
    backup = smtp_integration("backup", backup_port, priority=10)
    primary_sink.rcpt_reply = "550 5.1.1 mailbox unavailable"
    message = a_message()
    now = timezone.now()

    with django_capture_on_commit_callbacks(execute=True):
        report = message_deliver(message_id=message.id, now=now)
    assert (report.status, report.outcome, report.action) == ("queued", "permanent", "failover")
    stored = fresh(message)
    assert stored.integration_id == backup.pk
    assert stored.next_attempt_at == now
    assert "550" in stored.error
    assert "trying backup" in stored.error
    # Handed straight back to the delivery queue, no countdown.
    assert delivered == [("alpha", [str(message.id)], 0.0)]

    second = message_deliver(message_id=message.id, now=now)
    assert (second.status, second.outcome) == ("sent", "accepted")
    assert primary_sink.received == []
    assert [envelope.rcpt_tos for envelope in backup_sink.received] == [["ann@example.com"]]
    assert [(a.integration_id, a.outcome, a.response_status) for a in attempts_of(message)] == [
        (primary.pk, "permanent", 550),
        (backup.pk, "accepted", 250),
    ]
    assert fresh(message).integration_id == backup.pk


# --- SMS through HTTP sinks -----------------------------------------------------------


def test_all_integrations_failing_fails_the_message_with_the_reason(
    schema: Tenant, sms_a: HttpSink, sms_b: HttpSink
) -> None:
    sms_integration("gateway-1", sms_a, priority=0)
    sms_integration("gateway-2", sms_b, priority=1)
    sms_a.reply(400, "bad number")
    sms_b.reply(422, "no route to this number")
    message = a_message("sms")
    now = timezone.now()
    assert message_deliver(message_id=message.id, now=now).action == "failover"
    report = message_deliver(message_id=message.id, now=now)
    assert (report.status, report.action) == ("failed", "fail")
    stored = fresh(message)
    assert stored.status == "failed"
    assert stored.failed_at == now
    assert stored.error == "gateway-2: HTTP 422: no route to this number"
    assert [(a.response_status, a.outcome) for a in attempts_of(message)] == [
        (400, "permanent"),
        (422, "permanent"),
    ]
    assert [json.loads(r.body)["to"] for r in [*sms_a.requests, *sms_b.requests]] == [
        "+447700900123",
        "+447700900123",
    ]
    # Failed is final: another run sends nothing.
    assert message_deliver(message_id=message.id, now=now).attempted is False
    assert len(sms_a.requests) + len(sms_b.requests) == 2


def test_retry_after_is_honoured_and_long_waits_stay_in_the_row(
    schema: Tenant,
    sms_a: HttpSink,
    django_capture_on_commit_callbacks: Any,
    delivered: Published,
) -> None:
    sms_integration("gateway", sms_a)
    sms_a.reply(503, "busy", headers={"Retry-After": "120"})
    message = a_message("sms")
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        report = message_deliver(message_id=message.id, now=now)
    assert (report.status, report.action) == ("queued", "retry")
    assert fresh(message).next_attempt_at == now + timedelta(seconds=120)
    assert delivered == []  # 120 s is past the countdown limit: the sweeper's job

    assert (
        message_deliver(message_id=message.id, now=now + timedelta(seconds=119)).attempted is False
    )
    assert len(sms_a.requests) == 1
    report = message_deliver(message_id=message.id, now=now + timedelta(seconds=121))
    assert report.status == "sent"
    assert len(sms_a.requests) == 2


def test_a_short_retry_rides_on_a_countdown(
    schema: Tenant,
    sms_a: HttpSink,
    django_capture_on_commit_callbacks: Any,
    delivered: Published,
) -> None:
    sms_integration("gateway", sms_a)
    sms_a.reply(429, "slow down", headers={"Retry-After": "7"})
    message = a_message("sms")
    with django_capture_on_commit_callbacks(execute=True):
        message_deliver(message_id=message.id, now=timezone.now())
    assert delivered == [("alpha", [str(message.id)], 7.0)]


def test_three_retryable_failures_on_one_integration_fail_over(
    schema: Tenant, sms_a: HttpSink, sms_b: HttpSink
) -> None:
    first = sms_integration("gateway-1", sms_a, priority=0)
    second = sms_integration("gateway-2", sms_b, priority=1)
    for _ in range(FAILOVER_AFTER_RETRYABLE):
        sms_a.reply(503, "down")
    message = a_message("sms")
    now = timezone.now()
    actions = []
    for step in range(FAILOVER_AFTER_RETRYABLE):
        # Each run comes when the last one's wait is over.
        when = now + timedelta(hours=step)
        actions.append(message_deliver(message_id=message.id, now=when).action)
    assert actions == ["retry"] * (FAILOVER_AFTER_RETRYABLE - 1) + ["failover"]
    assert fresh(message).integration_id == second.pk
    report = message_deliver(message_id=message.id, now=now + timedelta(hours=3))
    assert report.status == "sent"
    assert len(sms_a.requests) == FAILOVER_AFTER_RETRYABLE
    assert len(sms_b.requests) == 1
    assert [a.integration_id for a in attempts_of(message)] == [first.pk] * 3 + [second.pk]


def test_a_sent_message_is_not_sent_again(schema: Tenant, sms_a: HttpSink) -> None:
    sms_integration("gateway", sms_a)
    message = a_message("sms")
    now = timezone.now()
    assert message_deliver(message_id=message.id, now=now).status == "sent"
    again = message_deliver(message_id=message.id, now=now + timedelta(minutes=1))
    assert (again.attempted, again.status) == (False, "sent")
    assert len(sms_a.requests) == 1
    assert len(attempts_of(message)) == 1


def test_a_delivery_costs_a_fixed_number_of_queries(
    schema: Tenant, sms_a: HttpSink, django_assert_num_queries: Any
) -> None:
    sms_integration("gateway", sms_a)
    # Warm: a process reads which endpoints take status callbacks once per few seconds.
    message_deliver(message_id=a_message("sms").id, now=timezone.now())
    message = a_message("sms")
    # Claim: lock + read, move to sending; the integrations; record: lock, the
    # attempt, the move; each transaction a savepoint pair inside the test's own.
    with django_assert_num_queries(10):
        assert message_deliver(message_id=message.id, now=timezone.now()).status == "sent"


def test_a_message_not_due_yet_is_left_alone(schema: Tenant, sms_a: HttpSink) -> None:
    sms_integration("gateway", sms_a)
    now = timezone.now()
    message = a_message("sms", send_after=now + timedelta(minutes=10))
    assert message_deliver(message_id=message.id, now=now).attempted is False
    assert fresh(message).status == "queued"
    assert sms_a.requests == []


# --- nothing to send with ---------------------------------------------------------------


def test_no_integration_is_a_config_error_that_fails_with_a_clear_reason(schema: Tenant) -> None:
    message = a_message("sms")
    report = message_deliver(message_id=message.id, now=timezone.now())
    assert (report.status, report.outcome) == ("failed", "config_error")
    assert fresh(message).error == (
        "no enabled integration for the sms channel; add one to send sms"
    )
    (attempt,) = attempts_of(message)
    assert (attempt.outcome, attempt.provider, attempt.integration_id) == ("config_error", "", None)


def test_a_disabled_integration_is_not_used(schema: Tenant, sms_a: HttpSink) -> None:
    integration = sms_integration("gateway", sms_a)
    Integration.objects.filter(pk=integration.pk).update(enabled=False)
    message = a_message("sms")
    assert message_deliver(message_id=message.id, now=timezone.now()).status == "failed"
    assert sms_a.requests == []


def test_a_channel_without_a_provider_fails_with_a_clear_reason(
    schema: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery_module, "providers_for", lambda channel: [])
    message = a_message("chat")
    report = message_deliver(message_id=message.id, now=timezone.now())
    assert (report.status, report.outcome) == ("failed", "config_error")
    assert fresh(message).error == "Herald has no provider for the chat channel yet"


def test_an_erased_subscriber_fails_without_sending(schema: Tenant, sms_a: HttpSink) -> None:
    sms_integration("gateway", sms_a)
    message = a_message("sms", subscriber=None)
    report = message_deliver(message_id=message.id, now=timezone.now())
    assert (report.status, report.outcome) == ("failed", "permanent")
    assert "erased" in fresh(message).error
    assert sms_a.requests == []


def test_a_provider_that_raises_is_retried_not_lost(
    schema: Tenant, sms_a: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from channels_delivery.providers.sms import HttpGatewayProvider

    def broken(self: Any, message: Any, config: Any) -> Any:
        raise RuntimeError("bug in the provider")

    monkeypatch.setattr(HttpGatewayProvider, "send", broken)
    sms_integration("gateway", sms_a)
    message = a_message("sms")
    report = message_deliver(message_id=message.id, now=timezone.now())
    assert (report.status, report.outcome) == ("queued", "retryable")
    assert "RuntimeError: bug in the provider" in fresh(message).error


def test_an_unknown_message_is_a_no_op(schema: Tenant) -> None:
    import uuid

    missing = uuid.uuid4()
    report = message_deliver(message_id=missing, now=datetime.now().astimezone())
    assert (report.attempted, report.status) == (False, "")


# --- the database goes away between the send and the record -----------------------------


def test_a_connection_lost_while_recording_is_retried_without_a_second_send(
    tenant_a: Tenant, sms_a: HttpSink, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The gateway took the message, then the worker's database connection died
    (terminated by PostgreSQL, as in a restart) before the attempt was stored.
    Recording is tried again on a new connection: the message is sent once and
    recorded once, not left sending for the sweeper to send again. Committed
    rows, in a thread with its own connection: a real transaction is lost."""
    from channels_delivery.services import delivery

    monkeypatch.setattr(delivery, "RECORD_RETRY_WAITS", (0.05, 0.05))
    real_bulk_create = DeliveryAttempt.objects.bulk_create
    terminated: list[bool] = []

    def connection_dies(objects: Any, *args: Any, **kwargs: Any) -> Any:
        if not terminated:
            own_backend_terminate()
            terminated.append(True)
        return real_bulk_create(objects, *args, **kwargs)

    counted_before: list[int] = []

    def make() -> str:
        with tenant_context(tenant_a):
            # What the analytics triggers count from here on is this test's alone.
            counted_before.append(StatsDelta.objects.aggregate(last=Max("pk"))["last"] or 0)
            sms_integration("record-retry", sms_a)
            # Not a_message(): its subscriber "ann" would be committed too.
            message = Message.objects.create(
                event=Event.objects.create(event_type_key="order.shipped", payload={}),
                subscriber=Subscriber.objects.create(
                    external_id="record-retry", phone="+447700900123"
                ),
                channel="sms",
                content={"text": "Order A-1 shipped"},
            )
            return str(message.pk)

    def deliver(message_id: str) -> Any:
        with tenant_context(tenant_a):
            monkeypatch.setattr(DeliveryAttempt.objects, "bulk_create", connection_dies)
            try:
                return message_deliver(message_id=uuid.UUID(message_id))
            finally:
                monkeypatch.setattr(DeliveryAttempt.objects, "bulk_create", real_bulk_create)

    def stored(message_id: str) -> tuple[str, int, int]:
        with tenant_context(tenant_a):
            message = Message.objects.get(pk=message_id)
            return message.status, message.attempt_count, message.attempts.count()

    def clean() -> None:
        with tenant_context(tenant_a):
            Event.objects.filter(messages__subscriber__external_id="record-retry").delete()
            Subscriber.objects.filter(external_id="record-retry").delete()
            Integration.objects.filter(name="record-retry").delete()
            # Committed counts would show in other tests' analytics of alpha.
            StatsDelta.objects.filter(pk__gt=counted_before[0]).delete()

    message_id = in_own_connection(make)
    try:
        report = in_own_connection(lambda: deliver(message_id))
        assert len(terminated) == 1, "the connection was not cut"
        assert report.status == MessageStatus.SENT
        assert in_own_connection(lambda: stored(message_id)) == (MessageStatus.SENT, 1, 1)
        assert len(sms_a.requests) == 1
        assert "trying again in 0.05 s" in caplog.text
    finally:
        in_own_connection(clean)
