"""Replaying failed webhooks through the API: one message
(POST /messages/{id}/replay) and everything that failed at an endpoint since a
time (POST /webhook-endpoints/{id}/replay); then the delivery core sends them
again to a real HTTP sink. The admin scope, the problems for what can not be
replayed, and tenant isolation."""

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context
from standardwebhooks.webhooks import Webhook

from channels_delivery.catalogue import Channel
from channels_delivery.models import (
    AttemptOutcome,
    CallbackStatus,
    DeliveryAttempt,
    Message,
    MessageStatus,
    StatusCallback,
    WebhookEndpoint,
)
from channels_delivery.retry import max_attempts
from channels_delivery.services.delivery import message_deliver
from channels_delivery.services.webhooks import (
    endpoint_create,
    endpoint_disable,
    endpoint_secret,
)
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.channels_delivery.conftest import Published
from tests.channels_delivery.sinks import HttpSink
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
BODY = '{"order": "A-17"}'


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


def post(client: Client, url: str, body: Any = None) -> Any:
    if body is None:
        return client.post(url, "", content_type="application/json")
    return client.post(url, body, content_type="application/json")


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"urn:herald:problem:{slug}"
    assert body["detail"]
    return body


def pointers(response: Any) -> dict[str, str]:
    body = assert_problem(response, 422, "validation-failed")
    return {error["pointer"]: error["detail"] for error in body["errors"]}


def an_endpoint(sink: HttpSink, path: str) -> WebhookEndpoint:
    return endpoint_create(url=f"{sink.url}/{path}")


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


def failed_at(endpoint: WebhookEndpoint, when: datetime) -> Message:
    """A webhook message whose every attempt at ``endpoint`` failed, as the
    delivery core leaves it: a permanent attempt naming the endpoint."""
    message = a_message(
        status=MessageStatus.FAILED, failed_at=when, attempt_count=1, error="HTTP 400"
    )
    DeliveryAttempt.objects.create(
        message=message,
        provider="webhook",
        outcome=AttemptOutcome.PERMANENT,
        response_status=400,
        error="HTTP 400",
        provider_message_id=f"endpoint:{endpoint.pk}",
    )
    return message


def status_of(tenant: Tenant, message: Message) -> str:
    with tenant_context(tenant):
        return str(Message.objects.get(pk=message.pk).status)


# --- POST /messages/{id}/replay --------------------------------------------------------


def test_a_failed_webhook_message_is_replayed_and_then_delivered_to_the_endpoint(
    api_a: ApiClient,
    tenant_a: Tenant,
    sink: HttpSink,
    delivered: Published,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    with tenant_context(tenant_a):
        endpoint = an_endpoint(sink, "orders")
        message = failed_at(endpoint, timezone.now() - timedelta(minutes=5))

    with django_capture_on_commit_callbacks(execute=True):
        response = post(api_a, f"/api/v1/messages/{message.pk}/replay")
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["id"], body["channel"], body["status"]) == (str(message.pk), "webhook", "queued")
    assert body["subscriber_id"] == "ada"
    # Published for delivery once the replay committed.
    assert delivered == [(tenant_a.schema_name, [str(message.pk)], 0.0)]

    with tenant_context(tenant_a):
        row = Message.objects.get(pk=message.pk)
        assert (row.status, row.attempt_count, row.failed_at) == ("queued", 0, None)
        with django_capture_on_commit_callbacks(execute=True):
            report = message_deliver(message_id=message.pk)
        attempts = list(
            DeliveryAttempt.objects.filter(message=message).values_list("outcome", flat=True)
        )
        secret = endpoint_secret(endpoint=endpoint)

    assert report.status == MessageStatus.SENT
    [request] = sink.requests
    assert request.path == "/orders"
    assert request.headers["webhook-id"] == str(message.pk)
    Webhook(secret).verify(request.body, dict(request.headers))
    assert json.loads(request.body) == json.loads(BODY)
    assert attempts == [AttemptOutcome.PERMANENT, AttemptOutcome.ACCEPTED]  # history kept


@pytest.mark.parametrize(
    ("channel", "status", "reason"),
    [
        (Channel.WEBHOOK, MessageStatus.SENT, "is a webhook message that is sent"),
        (Channel.WEBHOOK, MessageStatus.QUEUED, "is a webhook message that is queued"),
        (Channel.SMS, MessageStatus.FAILED, "is a sms message that is failed"),
    ],
)
def test_a_message_that_is_not_a_failed_webhook_message_is_409_with_the_reason(
    api_a: ApiClient,
    tenant_a: Tenant,
    delivered: Published,
    django_capture_on_commit_callbacks: Capture,
    channel: str,
    status: str,
    reason: str,
) -> None:
    with tenant_context(tenant_a):
        message = a_message(channel=channel, status=status)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(api_a, f"/api/v1/messages/{message.pk}/replay")
    body = assert_problem(response, 409, "not-replayable")
    assert reason in body["detail"]
    assert "only failed webhook messages can be replayed" in body["detail"]
    assert status_of(tenant_a, message) == status
    assert delivered == []


@pytest.mark.parametrize(
    "message_id", ["5b0c8f5e-2f7e-4c55-9d6b-0d1f2a3b4c5d", "not-a-uuid", "123"]
)
def test_an_unknown_message_is_404(api_a: ApiClient, message_id: str) -> None:
    assert_problem(post(api_a, f"/api/v1/messages/{message_id}/replay"), 404, "not-found")


def test_another_tenants_message_is_404_and_stays_failed(
    api_b: ApiClient,
    tenant_a: Tenant,
    sink: HttpSink,
    delivered: Published,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    with tenant_context(tenant_a):
        message = failed_at(an_endpoint(sink, "orders"), timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        response = post(api_b, f"/api/v1/messages/{message.pk}/replay")
    assert_problem(response, 404, "not-found")
    assert status_of(tenant_a, message) == MessageStatus.FAILED
    assert delivered == []


# --- POST /webhook-endpoints/{id}/replay -------------------------------------------------


def test_an_endpoint_replays_what_failed_there_since_a_time(
    api_a: ApiClient,
    tenant_a: Tenant,
    sink: HttpSink,
    delivered: Published,
    callbacks_published: list[list[str]],
    django_capture_on_commit_callbacks: Capture,
) -> None:
    now = timezone.now()
    with tenant_context(tenant_a):
        mine, other = an_endpoint(sink, "mine"), an_endpoint(sink, "other")
        recent = failed_at(mine, now - timedelta(hours=1))
        older = failed_at(mine, now - timedelta(days=3))  # before `since`
        elsewhere = failed_at(other, now - timedelta(hours=1))  # another endpoint's
        callback = StatusCallback.objects.create(
            endpoint=mine,
            type="message.failed",
            payload={"id": "cb", "type": "message.failed", "timestamp": "", "data": {}},
            status=CallbackStatus.FAILED,
            failed_at=now - timedelta(minutes=5),
            attempt_count=max_attempts(),
        )

    # Any UTC offset: 2 hours east of UTC, one day back.
    since = (now - timedelta(days=1)).astimezone(timezone.get_fixed_timezone(120))
    with django_capture_on_commit_callbacks(execute=True):
        response = post(api_a, f"/api/v1/webhook-endpoints/{mine.pk}/replay", {"since": since})
    assert response.status_code == 202, response.content
    assert response.json() == {"replayed": 1}
    assert [ids for _, ids, _ in delivered] == [[str(recent.pk)]]
    assert callbacks_published == [[str(callback.pk)]]
    assert status_of(tenant_a, older) == MessageStatus.FAILED
    assert status_of(tenant_a, elsewhere) == MessageStatus.FAILED

    with tenant_context(tenant_a):
        with django_capture_on_commit_callbacks(execute=True):
            report = message_deliver(message_id=recent.pk)
        callback.refresh_from_db()
    assert report.status == MessageStatus.SENT
    assert (callback.status, callback.attempt_count) == (CallbackStatus.QUEUED, 0)
    assert {request.headers["webhook-id"] for request in sink.requests} == {str(recent.pk)}
    assert "/mine" in {request.path for request in sink.requests}


def test_an_endpoint_with_nothing_failed_replays_nothing(
    api_a: ApiClient, tenant_a: Tenant, sink: HttpSink, delivered: Published
) -> None:
    with tenant_context(tenant_a):
        endpoint = an_endpoint(sink, "fine")
    since = (timezone.now() - timedelta(days=30) + timedelta(minutes=1)).isoformat()
    response = post(api_a, f"/api/v1/webhook-endpoints/{endpoint.pk}/replay", {"since": since})
    assert response.status_code == 202, response.content
    assert response.json() == {"replayed": 0}
    assert delivered == []


def _iso(when: datetime) -> str:
    return when.isoformat()


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (None, ""),
        ({}, "required"),
        ({"since": "yesterday"}, ""),
        ({"since": "2026-11-20T10:00:00"}, "timezone"),  # no offset
        ({"since": _iso(timezone.now() + timedelta(hours=1))}, "may not be in the future"),
        ({"since": _iso(timezone.now() - timedelta(days=31))}, "at most 30 days ago"),
        ({"since": "0001-01-01T00:00:00+05:00"}, ""),
        ({"since": _iso(timezone.now()), "endpoint_id": 1}, ""),
    ],
)
def test_replay_refuses_a_bad_since_and_replays_nothing(
    api_a: ApiClient,
    tenant_a: Tenant,
    sink: HttpSink,
    delivered: Published,
    django_capture_on_commit_callbacks: Capture,
    body: dict[str, Any] | None,
    detail: str,
) -> None:
    with tenant_context(tenant_a):
        endpoint = an_endpoint(sink, "mine")
        message = failed_at(endpoint, timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        response = post(api_a, f"/api/v1/webhook-endpoints/{endpoint.pk}/replay", body)
    errors = pointers(response)
    pointer = "/endpoint_id" if body and "endpoint_id" in body else "/since"
    if body is None:  # no body at all: the body itself is missing
        assert errors, response.content
    else:
        assert pointer in errors, errors
        assert detail in errors[pointer]
    assert status_of(tenant_a, message) == MessageStatus.FAILED
    assert delivered == []


def test_a_disabled_endpoint_is_409_until_enabled(
    api_a: ApiClient,
    tenant_a: Tenant,
    sink: HttpSink,
    delivered: Published,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    with tenant_context(tenant_a):
        endpoint = an_endpoint(sink, "gone")
        message = failed_at(endpoint, timezone.now() - timedelta(hours=1))
        endpoint_disable(endpoint=endpoint, reason="the receiver answered 410 Gone")
    url = f"/api/v1/webhook-endpoints/{endpoint.pk}/replay"
    since = {"since": _iso(timezone.now() - timedelta(days=1))}
    with django_capture_on_commit_callbacks(execute=True):
        refused = post(api_a, url, since)
    body = assert_problem(refused, 409, "endpoint-disabled")
    assert "the receiver answered 410 Gone" in body["detail"]
    assert status_of(tenant_a, message) == MessageStatus.FAILED
    assert delivered == []

    enabled = api_a.patch(
        f"/api/v1/webhook-endpoints/{endpoint.pk}", {"enabled": True}, "application/json"
    )
    assert enabled.status_code == 200, enabled.content
    with django_capture_on_commit_callbacks(execute=True):
        replayed = post(api_a, url, since)
    assert replayed.json() == {"replayed": 1}
    assert status_of(tenant_a, message) == MessageStatus.QUEUED


def test_an_unknown_endpoint_is_404(api_a: ApiClient) -> None:
    since = {"since": _iso(timezone.now())}
    assert_problem(post(api_a, "/api/v1/webhook-endpoints/999999/replay", since), 404, "not-found")


def test_another_tenants_endpoint_is_404_and_nothing_is_replayed(
    api_b: ApiClient,
    tenant_a: Tenant,
    sink: HttpSink,
    delivered: Published,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    with tenant_context(tenant_a):
        endpoint = an_endpoint(sink, "mine")
        message = failed_at(endpoint, timezone.now() - timedelta(hours=1))
    since = {"since": _iso(timezone.now() - timedelta(days=1))}
    with django_capture_on_commit_callbacks(execute=True):
        response = post(api_b, f"/api/v1/webhook-endpoints/{endpoint.pk}/replay", since)
    assert_problem(response, 404, "not-found")
    assert status_of(tenant_a, message) == MessageStatus.FAILED
    assert delivered == []


# --- scope ------------------------------------------------------------------------------


@pytest.mark.parametrize("scopes", [["messages:read"], ["events:write"], ["subscribers:write"]])
def test_both_replays_need_the_admin_scope(
    api_client_for: Callable[..., ApiClient],
    tenant_a: Tenant,
    sink: HttpSink,
    delivered: Published,
    django_capture_on_commit_callbacks: Capture,
    scopes: list[str],
) -> None:
    with tenant_context(tenant_a):
        endpoint = an_endpoint(sink, "mine")
        message = failed_at(endpoint, timezone.now() - timedelta(hours=1))
    client = api_client_for(tenant_a, scopes=scopes)
    since = {"since": _iso(timezone.now() - timedelta(days=1))}
    with django_capture_on_commit_callbacks(execute=True):
        responses = [
            post(client, f"/api/v1/messages/{message.pk}/replay"),
            post(client, f"/api/v1/webhook-endpoints/{endpoint.pk}/replay", since),
        ]
    for response in responses:
        body = assert_problem(response, 403, "insufficient-scope")
        assert body["required_scope"] == "admin"
    assert status_of(tenant_a, message) == MessageStatus.FAILED
    assert delivered == []
