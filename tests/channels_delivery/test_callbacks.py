"""Status callbacks (message.sent/delivered/failed/read, endpoint.disabled) to the
tenant's own webhook endpoints, over real sockets; endpoints disabled after days
of failure; replay of failed webhook messages; the slow lane; integrations' rate
limits."""

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import tenant_context
from standardwebhooks.webhooks import Webhook

from channels_delivery.catalogue import Channel
from channels_delivery.models import (
    CallbackStatus,
    DeliveryAttempt,
    Message,
    MessageStatus,
    StatusCallback,
    WebhookEndpoint,
)
from channels_delivery.providers.base import ProviderResult, ResultKind
from channels_delivery.retry import max_attempts
from channels_delivery.services.callbacks import (
    callback_deliver,
    callbacks_emit,
    callbacks_sweep,
)
from channels_delivery.services.delivery import (
    integration_rate_key,
    message_deliver,
    message_transition,
)
from channels_delivery.services.dispatch import messages_sweep
from channels_delivery.services.inbox import inbox_message_read, inbox_read_all
from channels_delivery.services.integrations import integration_create
from channels_delivery.services.webhooks import (
    ReplayRefused,
    endpoint_create,
    endpoint_delivery_record,
    endpoint_secret,
    endpoint_update,
    webhook_message_replay,
    webhook_messages_replay_failed,
)
from herald.limits import limits_redis
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.channels_delivery.conftest import Published
from tests.channels_delivery.sinks import HttpSink, SinkRequest

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
BODY = '{"order": "A-17"}'


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


def an_endpoint(sink: HttpSink, path: str, *event_types: str) -> WebhookEndpoint:
    return endpoint_create(url=f"{sink.url}/{path}", event_types=list(event_types))


def a_message(*, channel: str = Channel.WEBHOOK, **fields: Any) -> Message:
    subscriber, _ = Subscriber.objects.get_or_create(
        external_id="ada", defaults={"phone": "+447700900123"}
    )
    values: dict[str, Any] = {
        "event": Event.objects.create(event_type_key="order.shipped", payload={}),
        "subscriber": subscriber,
        "channel": channel,
        "content": {"body": BODY} if channel == Channel.WEBHOOK else {"text": "hi"},
    }
    values.update(fields)
    return Message.objects.create(**values)


def verified(request: SinkRequest, endpoint: WebhookEndpoint) -> Any:
    return Webhook(endpoint_secret(endpoint=endpoint)).verify(request.body, dict(request.headers))


# --- message callbacks ------------------------------------------------------------


def test_a_sent_message_calls_back_subscribed_endpoints_only_signed_with_its_own_id(
    tenant_a: Tenant,
    sink: HttpSink,
    django_capture_on_commit_callbacks: Capture,
    delivered: Published,
    callbacks_published: list[list[str]],
) -> None:
    with tenant_context(tenant_a):
        listener = an_endpoint(sink, "status", "message.sent", "message.failed")
        an_endpoint(sink, "events")  # every event type, but no callbacks
        an_endpoint(sink, "other", "message.read")
        message = a_message()
        with django_capture_on_commit_callbacks(execute=True):
            message_deliver(message_id=message.id)
        callbacks = list(StatusCallback.objects.all())
        assert [(c.endpoint_id, c.type) for c in callbacks] == [(listener.pk, "message.sent")]
        assert callbacks_published == [[str(callbacks[0].id)]]
        sink.requests.clear()
        assert callback_deliver(callback_id=callbacks[0].id) == CallbackStatus.SENT

    request = sink.requests[0]
    assert request.path == "/status"
    assert request.headers["webhook-id"] == str(callbacks[0].id)
    payload = verified(request, listener)
    assert payload["type"] == "message.sent"
    assert payload["data"]["message_id"] == str(message.id)
    assert payload["data"]["subscriber_id"] == "ada"
    assert payload["data"]["status"] == "sent"
    assert payload["data"]["sent_at"].endswith("Z")


def test_a_failing_callback_is_retried_on_schedule_with_the_same_webhook_id(
    tenant_a: Tenant,
    sink: HttpSink,
    django_capture_on_commit_callbacks: Capture,
    callbacks_published: list[list[str]],
) -> None:
    with tenant_context(tenant_a):
        listener = an_endpoint(sink, "status", "message.failed")
        message = a_message(channel=Channel.SMS)  # no SMS integration: fails at once
        with django_capture_on_commit_callbacks(execute=True):
            report = message_deliver(message_id=message.id)
        assert report.status == MessageStatus.FAILED
        callback = StatusCallback.objects.get()
        sink.reply(503, "busy")
        start = timezone.now()
        with django_capture_on_commit_callbacks(execute=True):
            assert callback_deliver(callback_id=callback.id, now=start) == CallbackStatus.QUEUED
        callback.refresh_from_db()
        assert callback.next_attempt_at is not None
        assert callback.next_attempt_at >= start
        assert callback.response_status == 503
        # Not due yet: nothing is sent.
        early = callback.next_attempt_at - timedelta(microseconds=1)
        if callback.next_attempt_at > start:
            assert callback_deliver(callback_id=callback.id, now=early) == ""
        assert callback_deliver(callback_id=callback.id, now=callback.next_attempt_at) == "sent"
        listener.refresh_from_db()
        callback.refresh_from_db()

    assert [r.headers["webhook-id"] for r in sink.requests] == [str(callback.id)] * 2
    assert verified(sink.requests[1], listener)["data"]["status"] == "failed"
    assert callback.attempt_count == 2
    assert listener.failing_since is None  # the success ended the streak


def test_reading_an_inbox_message_calls_back_message_read_once(
    tenant_a: Tenant, sink: HttpSink, callbacks_published: list[list[str]]
) -> None:
    with tenant_context(tenant_a):
        an_endpoint(sink, "status", "message.read")
        first = a_message(channel=Channel.IN_APP, status=MessageStatus.DELIVERED)
        second = a_message(channel=Channel.IN_APP, status=MessageStatus.DELIVERED)
        inbox_message_read(message=first)
        inbox_message_read(message=first)  # again: already read, no second callback
        assert inbox_read_all(subscriber_id=second.subscriber_id) == 1
        about = sorted(
            str(payload["data"]["message_id"])
            for payload in StatusCallback.objects.values_list("payload", flat=True)
        )
        statuses = set(Message.objects.values_list("status", flat=True))

    assert about == sorted([str(first.id), str(second.id)])
    assert statuses == {MessageStatus.READ}


def test_a_message_the_sweeper_gives_up_on_calls_back_message_failed(
    tenant_a: Tenant, sink: HttpSink, delivered: Published, callbacks_published: list[list[str]]
) -> None:
    with tenant_context(tenant_a):
        an_endpoint(sink, "status", "message.failed")
        stuck = a_message(status=MessageStatus.SENDING, attempt_count=max_attempts())
        Message.objects.filter(pk=stuck.pk).update(updated_at=timezone.now() - timedelta(days=1))
        messages_sweep()
        callback = StatusCallback.objects.get()

    assert callback.type == "message.failed"
    assert callback.payload["data"]["message_id"] == str(stuck.id)
    assert "given up" in callback.payload["data"]["error"]


def test_a_message_that_failed_to_render_calls_back_message_failed(
    tenant_a: Tenant, sink: HttpSink, callbacks_published: list[list[str]]
) -> None:
    from channels_delivery.services.messages import NewMessage, messages_copy

    with tenant_context(tenant_a):
        an_endpoint(sink, "status", "message.failed")
        event = Event.objects.create(event_type_key="order.shipped", payload={})
        subscriber = Subscriber.objects.create(external_id="ada")
        now = timezone.now()
        broken, fine = (
            NewMessage(
                id=uuid.uuid4(),
                event_id=event.id,
                subscriber_id=subscriber.pk,
                channel=Channel.EMAIL,
                content={},
                rule_version_id=None,  # type: ignore[arg-type]
                template_version_id=None,  # type: ignore[arg-type]
                locale="",
                send_after=None,
                status=status,
                error=error,
            )
            for status, error in (("failed", "subject: 'name' is undefined"), ("queued", ""))
        )
        messages_copy(messages=[broken, fine], now=now)
        callback = StatusCallback.objects.get()
        failed = Message.objects.get(pk=broken.id)

    assert callback.payload["data"]["message_id"] == str(broken.id)
    assert failed.failed_at == now
    assert fine.id


def test_a_tracked_open_is_not_a_callback_type_and_sends_nothing(
    tenant_a: Tenant, sink: HttpSink, callbacks_published: list[list[str]]
) -> None:
    with tenant_context(tenant_a):
        an_endpoint(sink, "status", "message.sent", "message.delivered", "message.read")
        message = a_message(channel=Channel.EMAIL, status=MessageStatus.DELIVERED)
        message_transition(message_id=message.id, to=MessageStatus.OPENED)
        assert not StatusCallback.objects.exists()


def test_callbacks_never_cross_tenants(
    tenant_a: Tenant, tenant_b: Tenant, sink: HttpSink, callbacks_published: list[list[str]]
) -> None:
    with tenant_context(tenant_b):
        an_endpoint(sink, "b-status", "message.sent")
    with tenant_context(tenant_a):
        message = a_message(status=MessageStatus.SENDING)
        message_transition(message_id=message.id, to=MessageStatus.SENT)
        assert not StatusCallback.objects.exists()
    with tenant_context(tenant_b):
        assert not StatusCallback.objects.exists()


def test_a_new_subscription_is_seen_at_once_in_the_same_process(
    tenant_a: Tenant, sink: HttpSink, callbacks_published: list[list[str]]
) -> None:
    with tenant_context(tenant_a):
        endpoint = an_endpoint(sink, "status")
        assert callbacks_emit(callback_type="message.sent", data={"x": 1}) == []
        endpoint_update(endpoint=endpoint, event_types=["message.sent"])
        assert len(callbacks_emit(callback_type="message.sent", data={"x": 1})) == 1
        with pytest.raises(ValueError, match="not a callback type"):
            callbacks_emit(callback_type="order.shipped", data={})


def test_the_sweeper_publishes_lost_callbacks_and_fails_ones_that_kill_workers(
    tenant_a: Tenant,
    sink: HttpSink,
    callbacks_published: list[list[str]],
    django_capture_on_commit_callbacks: Capture,
) -> None:
    with tenant_context(tenant_a):
        endpoint = an_endpoint(sink, "status", "message.sent")
        long_ago = timezone.now() - timedelta(days=1)
        lost, stuck, poison = (
            StatusCallback.objects.create(endpoint=endpoint, type="message.sent", payload={}),
            StatusCallback.objects.create(
                endpoint=endpoint, type="message.sent", payload={}, status="sending"
            ),
            StatusCallback.objects.create(
                endpoint=endpoint,
                type="message.sent",
                payload={},
                status="sending",
                attempt_count=max_attempts(),
            ),
        )
        StatusCallback.objects.update(updated_at=long_ago)
        callbacks_published.clear()
        with django_capture_on_commit_callbacks(execute=True):
            assert callbacks_sweep() == 2
            assert callbacks_sweep() == 0  # published once, then left to its task
        statuses = dict(StatusCallback.objects.values_list("pk", "status"))

    assert sorted(callbacks_published[0]) == sorted([str(lost.pk), str(stuck.pk)])
    assert statuses == {lost.pk: "queued", stuck.pk: "queued", poison.pk: "failed"}


# --- endpoint health --------------------------------------------------------------


def test_an_endpoint_failing_for_days_is_disabled_and_the_others_are_told(
    tenant_a: Tenant, sink: HttpSink, settings: Any, callbacks_published: list[list[str]]
) -> None:
    settings.HERALD_WEBHOOK_DISABLE_AFTER_DAYS = 5
    failure = ProviderResult(kind=ResultKind.RETRYABLE, error="HTTP 500", response_status=500)
    with tenant_context(tenant_a):
        failing = an_endpoint(sink, "failing", "endpoint.disabled")
        watcher = an_endpoint(sink, "ops", "endpoint.disabled")
        start = timezone.now()
        endpoint_delivery_record(endpoint_id=failing.pk, result=failure, now=start)
        endpoint_delivery_record(
            endpoint_id=failing.pk, result=failure, now=start + timedelta(days=4, hours=23)
        )
        failing.refresh_from_db()
        assert failing.enabled
        endpoint_delivery_record(
            endpoint_id=failing.pk, result=failure, now=start + timedelta(days=5)
        )
        failing.refresh_from_db()
        callback = StatusCallback.objects.get()

    assert not failing.enabled
    assert "every delivery failed for 5.0 days" in failing.disabled_reason
    assert "HTTP 500" in failing.disabled_reason
    assert (callback.endpoint_id, callback.type) == (watcher.pk, "endpoint.disabled")
    assert callback.payload["data"]["endpoint_id"] == failing.pk
    assert callback.payload["data"]["reason"] == failing.disabled_reason


def test_a_success_in_between_restarts_the_clock(tenant_a: Tenant, sink: HttpSink) -> None:
    failure = ProviderResult(kind=ResultKind.RETRYABLE, error="HTTP 500")
    accepted = ProviderResult(kind=ResultKind.ACCEPTED)
    with tenant_context(tenant_a):
        endpoint = an_endpoint(sink, "flaky")
        start = timezone.now()
        endpoint_delivery_record(endpoint_id=endpoint.pk, result=failure, now=start)
        endpoint_delivery_record(
            endpoint_id=endpoint.pk, result=accepted, now=start + timedelta(days=3)
        )
        endpoint_delivery_record(
            endpoint_id=endpoint.pk, result=failure, now=start + timedelta(days=6)
        )
        endpoint.refresh_from_db()
    assert endpoint.enabled
    assert endpoint.failing_since == start + timedelta(days=6)


# --- replay -----------------------------------------------------------------------


def test_a_failed_webhook_message_is_replayed_to_the_endpoints_that_missed_it(
    tenant_a: Tenant,
    sink: HttpSink,
    django_capture_on_commit_callbacks: Capture,
    delivered: Published,
) -> None:
    with tenant_context(tenant_a):
        an_endpoint(sink, "got-it")
        broken = an_endpoint(sink, "broken")
        sink.reply(400, "bad", path="/broken")
        message = a_message()
        with django_capture_on_commit_callbacks(execute=True):
            first = message_deliver(message_id=message.id)
        assert first.status == MessageStatus.FAILED
        delivered.clear()
        with django_capture_on_commit_callbacks(execute=True):
            replayed = webhook_message_replay(message_id=message.id)
        assert (replayed.status, replayed.attempt_count) == ("queued", 0)
        assert replayed.error.startswith("replayed at ")
        assert delivered == [(tenant_a.schema_name, [str(message.id)], 0.0)]
        with django_capture_on_commit_callbacks(execute=True):
            again = message_deliver(message_id=message.id)
        attempts = DeliveryAttempt.objects.filter(message=message).count()

    assert again.status == MessageStatus.SENT
    paths = [request.path for request in sink.requests]
    assert sorted(paths[:2]) == ["/broken", "/got-it"]
    assert paths[2:] == ["/broken"]  # the endpoint that had it is not sent it twice
    assert {r.headers["webhook-id"] for r in sink.requests} == {str(message.id)}
    assert attempts == 3  # the history is kept
    assert broken.pk


def test_only_failed_webhook_messages_of_the_tenant_can_be_replayed(
    tenant_a: Tenant, tenant_b: Tenant, delivered: Published
) -> None:
    with tenant_context(tenant_a):
        sent = a_message(status=MessageStatus.SENT)
        sms = a_message(channel=Channel.SMS, status=MessageStatus.FAILED)
        failed = a_message(status=MessageStatus.FAILED, failed_at=timezone.now())
        with pytest.raises(ReplayRefused, match="only failed webhook messages"):
            webhook_message_replay(message_id=sent.id)
        with pytest.raises(ReplayRefused, match="only failed webhook messages"):
            webhook_message_replay(message_id=sms.id)
    with tenant_context(tenant_b):
        with pytest.raises(ReplayRefused, match="there is no message"):
            webhook_message_replay(message_id=failed.id)
        assert webhook_messages_replay_failed(since=timezone.now() - timedelta(days=1)) == 0
    with tenant_context(tenant_a):
        assert Message.objects.get(pk=failed.pk).status == MessageStatus.FAILED


def test_replaying_everything_failed_since_a_time_for_one_endpoint(
    tenant_a: Tenant,
    sink: HttpSink,
    delivered: Published,
    callbacks_published: list[list[str]],
    django_capture_on_commit_callbacks: Capture,
) -> None:
    now = timezone.now()
    with tenant_context(tenant_a):
        mine, other = an_endpoint(sink, "mine"), an_endpoint(sink, "other")

        def failed_at(when: Any, endpoint: WebhookEndpoint) -> Message:
            message = a_message(status=MessageStatus.FAILED, failed_at=when)
            DeliveryAttempt.objects.create(
                message=message,
                provider="webhook",
                outcome="permanent",
                provider_message_id=f"endpoint:{endpoint.pk}",
            )
            return message

        recent_mine = failed_at(now - timedelta(hours=1), mine)
        failed_at(now - timedelta(days=3), mine)  # before the time asked for
        failed_at(now - timedelta(hours=1), other)  # another endpoint's
        old_callback = StatusCallback.objects.create(
            endpoint=mine,
            type="message.sent",
            payload={},
            status="failed",
            failed_at=now - timedelta(minutes=5),
            attempt_count=max_attempts(),
        )
        with django_capture_on_commit_callbacks(execute=True):
            count = webhook_messages_replay_failed(
                since=now - timedelta(days=1), endpoint_id=mine.pk
            )
        queued = list(Message.objects.filter(status="queued").values_list("pk", flat=True))
        old_callback.refresh_from_db()

    assert count == 1
    assert queued == [recent_mine.pk]
    assert [ids for _, ids, _ in delivered] == [[str(recent_mine.pk)]]
    assert (old_callback.status, old_callback.attempt_count) == ("queued", 0)
    assert callbacks_published == [[str(old_callback.pk)]]
    assert other.pk


# --- the slow lane ----------------------------------------------------------------


def test_a_slow_endpoint_is_moved_to_the_slow_lane_and_served_there(
    tenant_a: Tenant,
    sink: HttpSink,
    django_capture_on_commit_callbacks: Capture,
    delivered: Published,
    settings: Any,
) -> None:
    settings.HERALD_WEBHOOK_SLOW_SECONDS = 0.3
    with tenant_context(tenant_a):
        slow = an_endpoint(sink, "slow")
        sink.reply(200, delay=0.4, path="/slow")
        with django_capture_on_commit_callbacks(execute=True):
            message_deliver(message_id=a_message().id)
        slow.refresh_from_db()
        assert slow.slow_until is not None
        assert slow.slow_until > timezone.now()

        second = a_message()
        with django_capture_on_commit_callbacks(execute=True):
            handed = message_deliver(message_id=second.id)
        second.refresh_from_db()
        assert (handed.attempted, second.status, second.attempt_count) == (False, "queued", 0)
        assert delivered.slow == [(tenant_a.schema_name, [str(second.id)], 0.0)]
        assert len(sink.requests) == 1  # the fast lane did not send it

        with django_capture_on_commit_callbacks(execute=True):
            served = message_deliver(message_id=second.id, slow_lane=True)
        slow.refresh_from_db()

    assert served.status == MessageStatus.SENT
    assert len(sink.requests) == 2
    assert slow.slow_until is None  # it answered quickly: back to the fast lane


def test_one_slow_endpoint_does_not_hold_back_the_others_of_the_same_message(
    tenant_a: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    with tenant_context(tenant_a):
        an_endpoint(sink, "slow")
        an_endpoint(sink, "quick")
        sink.reply(200, delay=1.0, path="/slow")
        with django_capture_on_commit_callbacks(execute=True):
            report = message_deliver(message_id=a_message().id)
        latencies = dict(DeliveryAttempt.objects.values_list("provider_message_id", "latency_ms"))
        quick, slow = (
            WebhookEndpoint.objects.get(url__endswith=f"/{name}").pk for name in ("quick", "slow")
        )

    assert report.status == MessageStatus.SENT
    slow_ms, quick_ms = latencies[f"endpoint:{slow}"] or 0, latencies[f"endpoint:{quick}"] or 0
    assert slow_ms >= 1000
    # Sent at the same time: the quick receiver did not wait for the slow one.
    assert quick_ms < slow_ms - 500
    arrivals = {request.path: request for request in sink.requests}
    assert set(arrivals) == {"/slow", "/quick"}


# --- integration rate limits ------------------------------------------------------


def test_an_integrations_rate_limit_holds_messages_back_without_spending_attempts(
    tenant_a: Tenant,
    sink: HttpSink,
    django_capture_on_commit_callbacks: Capture,
    delivered: Published,
) -> None:
    with tenant_context(tenant_a):
        integration = integration_create(
            channel=Channel.SMS,
            provider="http_gateway",
            name="gateway",
            config={"url": f"{sink.url}/sms"},
            rate_limit_per_second=2,
        )
        limits_redis().delete(integration_rate_key(integration))
        messages = [a_message(channel=Channel.SMS) for _ in range(5)]
        reports = []
        for message in messages:
            with django_capture_on_commit_callbacks(execute=True):
                reports.append(message_deliver(message_id=message.id))
        rows = {m.pk: m for m in Message.objects.filter(pk__in=[m.id for m in messages])}

    sent = [r for r in reports if r.status == MessageStatus.SENT]
    held = [r for r in reports if not r.attempted]
    assert len(sent) == 2  # the bucket holds two tokens
    assert len(held) == 3
    assert len(sink.requests) == 2
    for report in held:
        assert (rows[report.message_id].status, rows[report.message_id].attempt_count) == (
            "queued",
            0,
        )
    countdowns = [countdown for _, _, countdown in delivered]
    assert len(countdowns) == 3
    # Spread 1/rate apart, so the backlog does not come back all at once.
    assert all(0 < countdown <= 2.0 for countdown in countdowns)
    assert countdowns == sorted(countdowns)
    assert countdowns[2] - countdowns[0] >= 0.9


def test_an_integration_without_a_limit_never_waits(
    tenant_a: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    with tenant_context(tenant_a):
        integration_create(
            channel=Channel.SMS,
            provider="http_gateway",
            name="gateway",
            config={"url": f"{sink.url}/sms"},
        )
        for _ in range(5):
            with django_capture_on_commit_callbacks(execute=True):
                assert message_deliver(message_id=a_message(channel=Channel.SMS).id).attempted
    assert len(sink.requests) == 5


def test_a_rate_limit_is_a_whole_number_of_messages_a_second(tenant_a: Tenant) -> None:
    from channels_delivery.providers.base import ConfigInvalid
    from channels_delivery.services.integrations import integration_update

    with tenant_context(tenant_a):
        for bad in (-1, 1.5, "10", True, 100_001):
            with pytest.raises(ConfigInvalid, match="whole number of messages a second"):
                integration_create(
                    channel=Channel.SMS,
                    provider="http_gateway",
                    name="gateway",
                    config={"url": "http://127.0.0.1:9/send"},  # nothing is sent
                    rate_limit_per_second=bad,  # type: ignore[arg-type]
                )
        integration = integration_create(
            channel=Channel.SMS,
            provider="http_gateway",
            name="gateway",
            config={"url": "http://127.0.0.1:9/send"},  # nothing is sent
            rate_limit_per_second=10,
        )
        assert integration.rate_limit_per_second == 10
        integration_update(integration=integration, rate_limit_per_second=0)
        integration.refresh_from_db()
        assert integration.rate_limit_per_second is None
