"""Channels Herald delivers itself, with no tenant Integration: in_app (the row is
the inbox item, pushed live to the subscriber's sockets) and webhook (to every
enabled endpoint that receives the event type, signed the Standard Webhooks way)."""

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django_tenants.utils import tenant_context
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from channels_delivery.catalogue import Channel
from channels_delivery.inbox_auth import inbox_secret_get, subscriber_hash
from channels_delivery.models import (
    DeliveryAttempt,
    Integration,
    Message,
    MessageStatus,
    WebhookEndpoint,
)
from channels_delivery.routing import websocket_urlpatterns
from channels_delivery.services.delivery import BUILT_IN, DeliveryReport, message_deliver
from channels_delivery.services.webhooks import endpoint_create, endpoint_secret
from rules_engine.event_types import event_types_forget
from rules_engine.models import Event, Subscriber
from rules_engine.services.event_types import event_type_save
from rules_engine.services.pipeline import event_process
from rules_engine.services.rules import rule_create
from rules_engine.services.templates import template_create
from tenants.models import Tenant
from tests.channels_delivery.conftest import Published
from tests.channels_delivery.sinks import HttpSink, SinkRequest
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

application = URLRouter(websocket_urlpatterns)
Capture = Callable[..., Any]
BODY = '{"type": "order.shipped", "order": "A-17"}'


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The sink listens on 127.0.0.1, which the SSRF guard refuses in production."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@pytest.fixture(autouse=True)
def _keep_the_test_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """database_sync_to_async closes a connection left in a transaction, as the
    test's is; the consumer's queries must run in it to see the test's rows."""
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)


def socket_url(tenant: Tenant, external_id: str, signature: str) -> str:
    query = urlencode({"tenant": tenant.slug, "subscriber": external_id, "hash": signature})
    return f"/ws/inbox?{query}"


def hash_for(tenant: Tenant, external_id: str) -> str:
    with tenant_context(tenant):
        return subscriber_hash(secret=inbox_secret_get().secret, external_id=external_id)


def a_message(
    *, channel: str, content: dict[str, Any], event_type: str = "order.shipped"
) -> Message:
    subscriber, _ = Subscriber.objects.get_or_create(external_id="ada", defaults={"name": "Ada"})
    return Message.objects.create(
        event=Event.objects.create(event_type_key=event_type, payload={}),
        subscriber=subscriber,
        channel=channel,
        content=content,
    )


def deliver(message: Message | uuid.UUID, capture: Capture, **kwargs: Any) -> DeliveryReport:
    """What the delivery worker does for one id, with after-commit work run."""
    message_id = message.id if isinstance(message, Message) else message
    with capture(execute=True):
        return message_deliver(message_id=message_id, **kwargs)


def verified(request: SinkRequest, secret: str) -> Any:
    """What a receiver using the standardwebhooks library makes of the request."""
    return Webhook(secret).verify(request.body, dict(request.headers))


# --- in_app -----------------------------------------------------------------------


def test_both_built_in_channels_name_a_registered_provider() -> None:
    from channels_delivery.providers.base import providers_for

    for channel, key in BUILT_IN.items():
        assert key in providers_for(channel), channel


def test_an_in_app_message_is_delivered_without_an_integration_and_pushed_live(
    tenant_a: Tenant, django_capture_on_commit_callbacks: Capture, delivered: Published
) -> None:
    with tenant_context(tenant_a):
        assert not Integration.objects.filter(channel=Channel.IN_APP).exists()
        message = a_message(
            channel=Channel.IN_APP, content={"title": "Shipped", "body": "A-17 is on its way"}
        )
    adas_url = socket_url(tenant_a, "ada", hash_for(tenant_a, "ada"))

    def deliver_in_tenant() -> DeliveryReport:
        with tenant_context(tenant_a):
            return deliver(message, django_capture_on_commit_callbacks)

    async def scenario() -> tuple[DeliveryReport, dict[str, Any]]:
        socket = WebsocketCommunicator(application, adas_url)
        assert (await socket.connect())[0]
        report = await sync_to_async(deliver_in_tenant)()
        received = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return report, received

    report, received = async_to_sync(scenario)()

    assert (report.status, report.outcome, report.action) == ("delivered", "accepted", "sent")
    assert received["type"] == "message"
    assert received["item"]["id"] == str(message.id)
    assert received["item"]["title"] == "Shipped"
    assert received["unread_count"] == 1
    with tenant_context(tenant_a):
        message.refresh_from_db()
        (attempt,) = DeliveryAttempt.objects.filter(message=message)
    assert message.status == MessageStatus.DELIVERED
    assert message.sent_at is not None
    assert message.delivered_at is not None
    assert message.integration_id is None
    assert (attempt.provider, attempt.outcome, attempt.integration_id) == (
        "inbox",
        "accepted",
        None,
    )
    assert delivered == []  # nothing to retry


def test_an_in_app_message_without_a_subscriber_fails_with_the_reason(
    tenant_a: Tenant, django_capture_on_commit_callbacks: Capture
) -> None:
    with tenant_context(tenant_a):
        message = a_message(channel=Channel.IN_APP, content={"title": "Gone"})
        Message.objects.filter(pk=message.pk).update(subscriber=None)
        report = deliver(message, django_capture_on_commit_callbacks)
        message.refresh_from_db()
    assert report.status == MessageStatus.FAILED
    assert "subscriber was erased" in message.error


def test_an_event_posted_to_the_api_reaches_the_subscribers_socket_end_to_end(
    api_a: ApiClient,
    tenant_a: Tenant,
    tenant_b: Tenant,
    django_capture_on_commit_callbacks: Capture,
    published: list[tuple[str, list[str]]],
    delivered: Published,
) -> None:
    with tenant_context(tenant_a):
        event_type_save(key="comment.added", category="social")
        event_types_forget(schema_name=tenant_a.schema_name)
        Subscriber.objects.create(external_id="ada", name="Ada")
        template_create(
            key="comment-inbox",
            channel="in_app",
            variants={
                "en": {
                    "title": "New comment from {{ event.payload.author }}",
                    "body": "{{ event.payload.text }}",
                }
            },
            fallback_locale="en",
            created_by="test",
        )
        rule_create(
            name="comments to the inbox",
            event_type_key="comment.added",
            actions=[{"channel": "in_app", "template": "comment-inbox"}],
            recipients={"kind": "event"},
            created_by="test",
        )
    adas_url = socket_url(tenant_a, "ada", hash_for(tenant_a, "ada"))
    # Ada's external id signed with the other tenant's secret.
    foreign_url = socket_url(tenant_a, "ada", hash_for(tenant_b, "ada"))

    def pipeline() -> tuple[str, list[DeliveryReport]]:
        with django_capture_on_commit_callbacks(execute=True):
            response = api_a.post(
                "/api/v1/events",
                {
                    "event": "comment.added",
                    "to": ["ada"],
                    "payload": {"author": "Bo", "text": "Hi"},
                },
                content_type="application/json",
            )
        assert response.status_code == 202, response.content
        event_id = response.json()["id"]
        assert published == [("alpha", [event_id])]
        with tenant_context(tenant_a):
            with django_capture_on_commit_callbacks(execute=True):
                event_process(event_id=event_id)
            # The pipeline handed the message to the delivery queue; the worker's
            # part is called directly here.
            ids = [message_id for _, chunk, _ in delivered for message_id in chunk]
            reports = [
                deliver(uuid.UUID(message_id), django_capture_on_commit_callbacks)
                for message_id in ids
            ]
        return event_id, reports

    async def scenario() -> tuple[str, list[DeliveryReport], dict[str, Any], Any, Any]:
        foreign = WebsocketCommunicator(application, foreign_url)
        await foreign.connect()
        refused = await foreign.receive_json_from(timeout=5)
        refused_close = await foreign.receive_output(timeout=5)
        socket = WebsocketCommunicator(application, adas_url)
        assert (await socket.connect())[0]
        event_id, reports = await sync_to_async(pipeline)()
        received = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return event_id, reports, received, refused, refused_close

    event_id, reports, received, refused, refused_close = async_to_sync(scenario)()
    event_types_forget(schema_name=tenant_a.schema_name)

    assert [(report.status, report.outcome) for report in reports] == [("delivered", "accepted")]
    assert received["item"]["id"] == str(reports[0].message_id)
    assert received["item"]["title"] == "New comment from Bo"
    assert received["item"]["body"] == "Hi"
    with tenant_context(tenant_a):
        message = Message.objects.get(pk=reports[0].message_id)
    assert str(message.event_id) == event_id
    assert message.status == MessageStatus.DELIVERED
    assert refused["problem"]["type"] == "urn:herald:problem:invalid-subscriber-hash"
    assert refused_close["type"] == "websocket.close"


# --- webhook ----------------------------------------------------------------------


def an_endpoint(
    sink: HttpSink, path: str, *, event_types: list[str] | None = None
) -> WebhookEndpoint:
    return endpoint_create(
        url=f"{sink.url}/{path}",
        event_types=["order.shipped"] if event_types is None else event_types,
    )


def test_a_webhook_message_reaches_the_matching_endpoint_and_verifies_there(
    tenant_a: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    with tenant_context(tenant_a):
        assert not Integration.objects.filter(channel=Channel.WEBHOOK).exists()
        matching = an_endpoint(sink, "orders")
        catch_all = an_endpoint(sink, "everything", event_types=[])
        an_endpoint(sink, "invoices", event_types=["invoice.paid"])
        disabled = an_endpoint(sink, "disabled")
        WebhookEndpoint.objects.filter(pk=disabled.pk).update(enabled=False)
        message = a_message(channel=Channel.WEBHOOK, content={"body": BODY})
        report = deliver(message, django_capture_on_commit_callbacks)
        message.refresh_from_db()
        attempts = list(DeliveryAttempt.objects.filter(message=message).order_by("pk"))
        secrets = {
            "/orders": endpoint_secret(endpoint=matching),
            "/everything": endpoint_secret(endpoint=catch_all),
        }

    assert (report.status, report.outcome, report.action) == ("sent", "accepted", "sent")
    assert message.status == MessageStatus.SENT
    assert message.error == ""
    assert sorted(request.path for request in sink.requests) == ["/everything", "/orders"]
    for request in sink.requests:
        assert verified(request, secrets[request.path]) == {
            "type": "order.shipped",
            "order": "A-17",
        }
        assert request.headers["webhook-id"] == str(message.id)
    # Each endpoint's request is signed with that endpoint's secret only.
    other = "/everything" if sink.requests[0].path == "/orders" else "/orders"
    with pytest.raises(WebhookVerificationError):
        verified(sink.requests[0], secrets[other])
    assert [(attempt.provider, attempt.outcome) for attempt in attempts] == [
        ("webhook", "accepted"),
        ("webhook", "accepted"),
    ]


def test_a_410_disables_the_endpoint_and_the_others_still_get_the_message(
    tenant_a: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    with tenant_context(tenant_a):
        gone = an_endpoint(sink, "gone")
        alive = an_endpoint(sink, "alive")
        sink.reply(410, "gone", path="/gone")
        sink.reply(200, "ok", path="/alive")
        message = a_message(channel=Channel.WEBHOOK, content={"body": BODY})
        report = deliver(message, django_capture_on_commit_callbacks)
        gone.refresh_from_db()
        alive.refresh_from_db()
        outcomes = list(
            DeliveryAttempt.objects.filter(message=message)
            .order_by("pk")
            .values_list("response_status", "outcome")
        )

    # Sent to both at once: in no fixed order.
    assert sorted(request.path for request in sink.requests) == ["/alive", "/gone"]
    assert report.status == MessageStatus.SENT
    assert outcomes == [(410, "permanent"), (200, "accepted")]
    assert gone.enabled is False
    assert "410 Gone" in gone.disabled_reason
    assert gone.failing_since is not None
    assert alive.enabled is True
    assert alive.failing_since is None


def test_a_message_whose_only_endpoint_answers_410_fails_and_the_endpoint_is_disabled(
    tenant_a: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    with tenant_context(tenant_a):
        gone = an_endpoint(sink, "gone")
        sink.reply(410)
        message = a_message(channel=Channel.WEBHOOK, content={"body": BODY})
        report = deliver(message, django_capture_on_commit_callbacks)
        gone.refresh_from_db()
        message.refresh_from_db()
    assert report.status == MessageStatus.FAILED
    assert "410 Gone" in message.error
    assert f"endpoint {gone.pk}" in message.error
    assert gone.enabled is False


def test_a_retry_goes_only_to_the_endpoint_that_failed_with_the_same_webhook_id(
    tenant_a: Tenant,
    sink: HttpSink,
    django_capture_on_commit_callbacks: Capture,
    delivered: Published,
) -> None:
    with tenant_context(tenant_a):
        flaky = an_endpoint(sink, "flaky")
        an_endpoint(sink, "steady")
        sink.reply(503, "down for maintenance", path="/flaky")
        message = a_message(channel=Channel.WEBHOOK, content={"body": BODY})
        first = deliver(message, django_capture_on_commit_callbacks)
        flaky.refresh_from_db()
        failing_since = flaky.failing_since
        assert first.next_attempt_at is not None
        second = deliver(message, django_capture_on_commit_callbacks, now=first.next_attempt_at)
        flaky.refresh_from_db()
        message.refresh_from_db()
        attempts = DeliveryAttempt.objects.filter(message=message).count()

    assert (first.status, first.outcome, first.action) == ("queued", "retryable", "retry")
    assert (second.status, second.outcome) == ("sent", "accepted")
    paths = [request.path for request in sink.requests]
    assert sorted(paths[:2]) == ["/flaky", "/steady"]  # sent to both at once
    assert paths[2:] == ["/flaky"]
    ids = {request.headers["webhook-id"] for request in sink.requests}
    assert ids == {str(message.id)}
    assert failing_since is not None
    assert flaky.failing_since is None
    assert message.attempt_count == 2
    assert attempts == 3
    assert [ids for _, ids, _ in delivered] == [[str(message.id)]]  # the retry was queued


def test_a_webhook_message_with_no_matching_endpoint_fails_naming_the_event_type(
    tenant_a: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    with tenant_context(tenant_a):
        an_endpoint(sink, "invoices", event_types=["invoice.paid"])
        message = a_message(channel=Channel.WEBHOOK, content={"body": BODY})
        report = deliver(message, django_capture_on_commit_callbacks)
        message.refresh_from_db()
    assert report.status == MessageStatus.FAILED
    assert "no enabled webhook endpoint receives 'order.shipped' events" in message.error
    assert sink.requests == []


def test_a_batch_of_webhook_messages_costs_the_same_queries_whatever_its_size(
    tenant_a: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    """The delivery task's batch: one claim, one write of all attempts and one move
    of all sent messages, whatever the number of messages."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from channels_delivery.services.delivery import messages_deliver_many

    def queries_for(count: int) -> int:
        with tenant_context(tenant_a):
            ids = [
                a_message(channel=Channel.WEBHOOK, content={"body": BODY}).id for _ in range(count)
            ]
            with (
                CaptureQueriesContext(connection) as queries,
                django_capture_on_commit_callbacks(execute=True),
            ):
                reports = messages_deliver_many(message_ids=ids)
            assert [report.status for report in reports] == ["sent"] * count
            return len(queries)

    with tenant_context(tenant_a):
        an_endpoint(sink, "orders")
    queries_for(1)  # warm: per-process caches (callback subscriptions) are read once
    assert queries_for(3) == queries_for(30)
    ids = {request.headers["webhook-id"] for request in sink.requests}
    assert len(sink.requests) == len(ids) == 34
