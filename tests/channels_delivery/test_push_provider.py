"""Web push: a real HTTP sink on 127.0.0.1 plays the push service and does what
a browser does with the request: verifies the VAPID token against the tenant's
public key and decrypts the body with the subscription's private key."""

import base64
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import http_ece  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django_tenants.utils import tenant_context
from py_vapid import Vapid  # type: ignore[import-untyped]

from channels_delivery.catalogue import Channel
from channels_delivery.crypto import _encrypted_fields, secrets_decrypt
from channels_delivery.models import DeliveryAttempt, Message, MessageStatus, PushSettings
from channels_delivery.providers.base import (
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_get,
    providers_for,
)
from channels_delivery.services.delivery import BUILT_IN, DeliveryReport, message_deliver
from channels_delivery.services.push import push_public_key_get
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.channels_delivery.sinks import HttpSink, SinkRequest

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
CONTENT = {
    "title": "Shipped",
    "body": "A-17 is on its way",
    "icon": "https://shop.example/icon.png",
    "url": "https://shop.example/orders/A-17",
}


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The sink listens on 127.0.0.1, which the SSRF guard refuses in production."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@pytest.fixture
def in_tenant(tenant_a: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant_a):
        yield tenant_a


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, kw_only=True)
class Browser:
    """A browser's push subscription, with the private half a push service never sees."""

    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    endpoint: str

    @property
    def subscription(self) -> dict[str, Any]:
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)},
        }

    def read(self, request: SinkRequest) -> Any:
        """Decrypt a push request's body the way the browser does (RFC 8291)."""
        assert request.headers["content-encoding"] == "aes128gcm"
        plain = http_ece.decrypt(
            request.body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
        )
        return json.loads(plain)


def a_browser(sink: HttpSink, path: str = "/push/abc") -> Browser:
    return Browser(
        private_key=ec.generate_private_key(ec.SECP256R1()),
        auth=os.urandom(16),
        endpoint=f"{sink.url}{path}",
    )


def vapid_verified(request: SinkRequest, public_key: str) -> bool:
    """What a push service checks: the token verifies, with the tenant's key, for its origin."""
    authorization = request.headers["authorization"]
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid"
    parts = dict(part.split("=", 1) for part in params.split(","))
    assert parts["k"] == public_key
    token = parts["t"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"].startswith("http://127.0.0.1:")
    assert claims["sub"] == "mailto:ops@localhost"
    return bool(Vapid.verify(authorization)) and bool(
        Vapid.from_raw_public(public_key.encode()).verify_token(
            validation_token=token.rsplit(".", 1)[0].encode(),
            verification_token=token.rsplit(".", 1)[1],
        )
    )


def send(address: dict[str, Any], content: dict[str, Any] | None = None) -> ProviderResult:
    message = RenderedMessage(
        message_id=str(uuid.uuid4()),
        channel=Channel.PUSH,
        content=CONTENT if content is None else content,
        address=address,
    )
    return provider_get(channel=Channel.PUSH, key="webpush").send(message, {})


def a_message(channels: dict[str, Any]) -> Message:
    subscriber = Subscriber.objects.create(external_id="ada", name="Ada", channels=channels)
    return Message.objects.create(
        event=Event.objects.create(event_type_key="order.shipped", payload={}),
        subscriber=subscriber,
        channel=Channel.PUSH,
        content=CONTENT,
    )


def deliver(message: Message, capture: Capture) -> DeliveryReport:
    with capture(execute=True):
        return message_deliver(message_id=message.id)


def test_push_is_built_in_with_the_webpush_provider() -> None:
    assert BUILT_IN[Channel.PUSH] == "webpush"
    assert "webpush" in providers_for(Channel.PUSH)


def test_the_vapid_key_is_made_once_per_tenant_and_stored_encrypted(
    tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with tenant_context(tenant_a):
        key_a = push_public_key_get()
        assert push_public_key_get() == key_a
        row = PushSettings.objects.get()
        private = secrets_decrypt(token=row.private_key)["private_key"]
        assert private not in row.private_key
        # The stored private key is the one the public key belongs to.
        assert Vapid.from_raw(private.encode()).public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        ) == base64.urlsafe_b64decode(key_a + "=")
    with tenant_context(tenant_b):
        assert push_public_key_get() != key_a
    assert (PushSettings, "private_key") in _encrypted_fields()


def test_the_browser_decrypts_the_payload_and_the_vapid_token_verifies(
    in_tenant: Tenant, sink: HttpSink
) -> None:
    browser = a_browser(sink)
    sink.reply(201, headers={"Location": "/m/123"})
    result = send({"subscriber": "ada", **browser.subscription})
    assert result.kind is ResultKind.ACCEPTED, result.error
    assert result.response_status == 201
    (request,) = sink.requests
    assert request.method == "POST"
    assert request.path == "/push/abc"
    assert browser.read(request) == CONTENT
    assert vapid_verified(request, push_public_key_get())
    assert request.headers["ttl"] == "86400"
    assert request.headers["urgency"] == "normal"


def test_a_token_signed_by_another_tenant_does_not_verify_with_this_ones_key(
    tenant_a: Tenant, tenant_b: Tenant, sink: HttpSink
) -> None:
    browser = a_browser(sink)
    with tenant_context(tenant_b):
        send({"subscriber": "ada", **browser.subscription})
    with tenant_context(tenant_a):
        key_a = push_public_key_get()
    (request,) = sink.requests
    token = request.headers["authorization"].split("t=", 1)[1].split(",")[0]
    assert not Vapid.from_raw_public(key_a.encode()).verify_token(
        validation_token=token.rsplit(".", 1)[0].encode(),
        verification_token=token.rsplit(".", 1)[1],
    )


def test_a_list_of_subscriptions_gets_one_request_each(in_tenant: Tenant, sink: HttpSink) -> None:
    phone, laptop = a_browser(sink, "/push/phone"), a_browser(sink, "/push/laptop")
    result = send({"subscriber": "ada", "target": [phone.subscription, laptop.subscription]})
    assert result.kind is ResultKind.ACCEPTED
    by_path = {request.path: request for request in sink.requests}
    assert phone.read(by_path["/push/phone"]) == CONTENT
    assert laptop.read(by_path["/push/laptop"]) == CONTENT


def test_only_the_notification_fields_are_sent(in_tenant: Tenant, sink: HttpSink) -> None:
    browser = a_browser(sink)
    send({**browser.subscription}, {"title": "Hi", "secret": "no", "body": ""})
    assert browser.read(sink.requests[0]) == {"title": "Hi"}


def test_410_removes_the_subscription_and_fails_the_message(
    in_tenant: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    gone, kept = a_browser(sink, "/push/gone"), a_browser(sink, "/push/kept")
    message = a_message({"push": [gone.subscription, kept.subscription], "slack": "x"})
    sink.reply(410)
    sink.reply(500)
    report = deliver(message, django_capture_on_commit_callbacks)
    # The other subscription failed with a 500: the message is retried, without the gone one.
    assert report.outcome == ResultKind.RETRYABLE
    assert Subscriber.objects.get(external_id="ada").channels == {
        "push": [kept.subscription],
        "slack": "x",
    }


def test_410_on_the_only_subscription_removes_it_and_the_message_fails(
    in_tenant: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    browser = a_browser(sink)
    message = a_message({"push": browser.subscription})
    sink.reply(410)
    report = deliver(message, django_capture_on_commit_callbacks)
    assert report.status == MessageStatus.FAILED
    assert report.outcome == ResultKind.PERMANENT
    assert Subscriber.objects.get(external_id="ada").channels == {}
    attempt = DeliveryAttempt.objects.get(message=message)
    assert attempt.response_status == 410
    assert "unsubscribed" in attempt.error
    assert "/push/abc" not in attempt.error  # the endpoint path is the subscription's secret


def test_500_is_retryable_and_the_subscription_stays(
    in_tenant: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    browser = a_browser(sink)
    message = a_message({"push": browser.subscription})
    sink.reply(500)
    report = deliver(message, django_capture_on_commit_callbacks)
    assert report.outcome == ResultKind.RETRYABLE
    assert report.status == MessageStatus.QUEUED
    assert report.next_attempt_at is not None
    assert Subscriber.objects.get(external_id="ada").channels == {"push": browser.subscription}


def test_a_delivered_push_message_is_sent(
    in_tenant: Tenant, sink: HttpSink, django_capture_on_commit_callbacks: Capture
) -> None:
    browser = a_browser(sink)
    message = a_message({"push": browser.subscription})
    sink.reply(201)
    report = deliver(message, django_capture_on_commit_callbacks)
    assert report.status == MessageStatus.SENT
    assert browser.read(sink.requests[0]) == CONTENT


def test_429_is_retryable_with_retry_after(in_tenant: Tenant, sink: HttpSink) -> None:
    sink.reply(429, headers={"Retry-After": "30"})
    result = send(a_browser(sink).subscription)
    assert result.kind is ResultKind.RETRYABLE
    assert result.retry_after_seconds == 30


@pytest.mark.parametrize("status", [400, 413])
def test_other_4xx_are_permanent(in_tenant: Tenant, sink: HttpSink, status: int) -> None:
    sink.reply(status)
    result = send(a_browser(sink).subscription)
    assert result.kind is ResultKind.PERMANENT
    assert not result.disable_endpoint


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ({}, "no push subscription"),
        ({"target": "not a subscription"}, "must be an object"),
        ({"endpoint": "ftp://x/y", "keys": {"p256dh": "a", "auth": "b"}}, "endpoint URL"),
        ({"endpoint": "https://push.example/x", "keys": {"auth": "b"}}, "keys.p256dh"),
        (
            {
                "endpoint": "https://push.example/x",
                "keys": {"p256dh": "bm90IGEga2V5", "auth": "YQ"},
            },
            "unusable",
        ),
    ],
)
def test_an_unusable_subscription_is_permanent_without_a_request(
    in_tenant: Tenant, address: dict[str, Any], error: str
) -> None:
    result = send(address)
    assert result.kind is ResultKind.PERMANENT
    assert error in result.error


def test_a_message_without_a_title_is_permanent(in_tenant: Tenant, sink: HttpSink) -> None:
    result = send(a_browser(sink).subscription, {"body": "no title"})
    assert result.kind is ResultKind.PERMANENT
    assert "title" in result.error
    assert sink.requests == []


def test_a_private_address_is_refused(in_tenant: Tenant, settings: Any) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = False
    browser = Browser(
        private_key=ec.generate_private_key(ec.SECP256R1()),
        auth=os.urandom(16),
        endpoint="http://127.0.0.1:9/push",
    )
    result = send(browser.subscription)
    assert result.kind is ResultKind.CONFIG_ERROR
    assert "refused" in result.error
