"""The webhook provider over a real local HTTP sink: Standard Webhooks headers
that verify with the standardwebhooks library on the receiving side, a stable
webhook-id, and what each answer of the receiver means."""

import json
import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from channels_delivery import ssrf
from channels_delivery.providers.base import (
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_get,
    providers_for,
)
from channels_delivery.providers.webhook import WebhookProvider
from channels_delivery.services.webhooks import webhook_secret_generate
from tests.channels_delivery.sinks import HttpSink, SinkRequest, http_sink

SECRET = webhook_secret_generate()
BODY = '{"type": "order.shipped", "data": {"order": "A-17", "note": "caf\\u00e9 ☕"}}'


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The sink listens on 127.0.0.1, which the SSRF guard refuses in production."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


def webhook(
    sink_url: str,
    *,
    secrets: list[str] | None = None,
    body: Any = BODY,
    idempotency_key: str = "msg_2a0b9c7d",
) -> RenderedMessage:
    return RenderedMessage(
        message_id="5b0e8f1c-0000-4000-8000-000000000001",
        channel="webhook",
        content={"body": body},
        address={"endpoint_id": 7, "url": f"{sink_url}/hooks", "secrets": secrets or [SECRET]},
        idempotency_key=idempotency_key,
    )


def send(message: RenderedMessage, **config: Any) -> ProviderResult:
    return WebhookProvider().send(message, {"timeout": 2, **config})


def verified(request: SinkRequest, secret: str) -> Any:
    """What a receiver using the standardwebhooks library makes of the request."""
    return Webhook(secret).verify(request.body, dict(request.headers))


def test_the_webhook_provider_is_registered() -> None:
    assert providers_for("webhook") == ["webhook"]
    assert isinstance(provider_get(channel="webhook", key="webhook"), WebhookProvider)


def test_a_2xx_is_accepted_and_the_request_verifies_on_the_receiving_side(
    sink: HttpSink,
) -> None:
    sink.reply(200, "ok")
    result = send(webhook(sink.url))
    assert result.kind is ResultKind.ACCEPTED
    assert result.response_status == 200
    assert result.disable_endpoint is False
    [request] = sink.requests
    assert request.method == "POST"
    assert request.path == "/hooks"
    assert request.headers["content-type"] == "application/json"
    assert request.body == BODY.encode()  # the rendered body as it is, byte for byte
    assert request.headers["webhook-id"] == "msg_2a0b9c7d"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5
    assert request.headers["webhook-signature"].startswith("v1,")
    assert verified(request, SECRET) == json.loads(BODY)


def test_a_wrong_secret_or_a_changed_body_does_not_verify(sink: HttpSink) -> None:
    send(webhook(sink.url))
    [request] = sink.requests
    with pytest.raises(WebhookVerificationError):
        verified(request, webhook_secret_generate())
    tampered = SinkRequest(
        method=request.method,
        path=request.path,
        headers=request.headers,
        body=request.body.replace(b"A-17", b"A-18"),
    )
    with pytest.raises(WebhookVerificationError):
        verified(tampered, SECRET)


def test_with_two_secrets_each_signature_verifies_alone(sink: HttpSink) -> None:
    new, old = webhook_secret_generate(), webhook_secret_generate()
    send(webhook(sink.url, secrets=[new, old]))
    [request] = sink.requests
    signatures = request.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret in (new, old):
        assert verified(request, secret) == json.loads(BODY)
    # Each value is the signature of one secret: with only the other value in
    # the header, the other secret no longer verifies.
    for signature, other in ((signatures[0], old), (signatures[1], new)):
        alone = {**request.headers, "webhook-signature": signature}
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(request.body, alone)
    assert Webhook(new).verify(
        request.body, {**request.headers, "webhook-signature": signatures[0]}
    )
    assert Webhook(old).verify(
        request.body, {**request.headers, "webhook-signature": signatures[1]}
    )


def test_the_webhook_id_is_the_same_on_every_send_of_a_message(sink: HttpSink) -> None:
    sink.reply(500)
    message = webhook(sink.url)
    assert send(message).kind is ResultKind.RETRYABLE
    assert send(message).kind is ResultKind.ACCEPTED
    first, second = sink.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_2a0b9c7d"
    for request in (first, second):
        assert verified(request, SECRET) == json.loads(BODY)


def test_without_an_idempotency_key_the_message_id_is_the_webhook_id(sink: HttpSink) -> None:
    send(webhook(sink.url, idempotency_key=""))
    [request] = sink.requests
    assert request.headers["webhook-id"] == "5b0e8f1c-0000-4000-8000-000000000001"


def test_a_body_given_as_a_json_value_is_sent_as_json(sink: HttpSink) -> None:
    send(webhook(sink.url, body={"ok": True, "n": [1, 2]}))
    [request] = sink.requests
    assert json.loads(request.body) == {"ok": True, "n": [1, 2]}
    assert verified(request, SECRET) == {"ok": True, "n": [1, 2]}


def test_410_is_permanent_and_asks_for_the_endpoint_to_be_disabled(sink: HttpSink) -> None:
    sink.reply(410, "gone")
    result = send(webhook(sink.url))
    assert result.kind is ResultKind.PERMANENT
    assert result.disable_endpoint is True
    assert result.response_status == 410
    assert "410 Gone" in result.error


def test_a_redirect_is_not_followed_and_is_permanent(sink: HttpSink) -> None:
    sink.reply(301, headers={"Location": f"{sink.url}/elsewhere"})
    result = send(webhook(sink.url))
    assert result.kind is ResultKind.PERMANENT
    assert result.disable_endpoint is False
    assert "redirects are not followed" in result.error
    assert "/elsewhere" in result.error
    assert [request.path for request in sink.requests] == ["/hooks"]


def test_429_is_retryable_with_retry_after(sink: HttpSink) -> None:
    sink.reply(429, headers={"Retry-After": "42"})
    result = send(webhook(sink.url))
    assert result.kind is ResultKind.RETRYABLE
    assert result.retry_after_seconds == 42
    assert result.response_status == 429


def test_500_is_retryable(sink: HttpSink) -> None:
    sink.reply(503, "down for maintenance", headers={"Retry-After": "5"})
    result = send(webhook(sink.url))
    assert result.kind is ResultKind.RETRYABLE
    assert result.retry_after_seconds == 5
    assert result.response_excerpt == "down for maintenance"
    sink.reply(500)
    assert send(webhook(sink.url)).kind is ResultKind.RETRYABLE


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_permanent(sink: HttpSink, status: int) -> None:
    sink.reply(status)
    result = send(webhook(sink.url))
    assert result.kind is ResultKind.PERMANENT
    assert result.disable_endpoint is False
    assert result.response_status == status


def test_a_timeout_is_retryable(sink: HttpSink) -> None:
    sink.reply(200, delay=3)
    started = time.monotonic()
    result = send(webhook(sink.url), timeout=0.3)
    assert result.kind is ResultKind.RETRYABLE
    assert "timed out" in result.error
    assert time.monotonic() - started < 2


def test_a_refused_connection_is_retryable() -> None:
    with http_sink() as stopped:
        url = stopped.url  # nothing listens there once the sink stopped
    result = send(webhook(url))
    assert result.kind is ResultKind.RETRYABLE


def test_a_private_address_is_refused_at_connect_as_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolved: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["10.1.2.3"]

    monkeypatch.setattr(ssrf, "resolver", rebinding)
    result = send(webhook("http://hooks.customer.test"))
    assert result.kind is ResultKind.CONFIG_ERROR
    assert "10.1.2.3" in result.error
    assert resolved == ["hooks.customer.test"]


def test_a_name_that_does_not_resolve_when_sending_is_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It resolved when the endpoint was saved: a resolver outage must not fail
    the message for good (nor flag the endpoint's configuration)."""

    def outage(host: str, port: int) -> list[str]:
        raise ssrf.HostUnresolved(f"the host {host!r} does not resolve (temporary failure)")

    monkeypatch.setattr(ssrf, "resolver", outage)
    result = send(webhook("https://hooks.customer.test/h"))
    assert result.kind is ResultKind.RETRYABLE
    assert "'hooks.customer.test' does not resolve" in result.error


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ({"url": "", "secrets": [SECRET]}, "has no URL"),
        ({"url": "https://example.com/h", "secrets": []}, "no signing secret"),
        ({"url": "https://example.com/h", "secrets": "whsec_x"}, "no signing secret"),
        ({"url": "https://example.com/h", "secrets": ["not-a-secret"]}, "must start with"),
    ],
)
def test_an_unusable_endpoint_is_a_config_error_without_a_request(
    address: dict[str, Any], error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssrf, "resolver", _no_lookup)
    message = RenderedMessage(
        message_id="m", channel="webhook", content={"body": BODY}, address=address
    )
    result = send(message)
    assert result.kind is ResultKind.CONFIG_ERROR
    assert error in result.error


@pytest.mark.parametrize(
    ("body", "error"),
    [(None, "has no body"), ("  ", "has no body"), ("{not json", "not valid JSON")],
)
def test_a_message_without_a_json_body_is_permanent(sink: HttpSink, body: Any, error: str) -> None:
    result = send(webhook(sink.url, body=body))
    assert result.kind is ResultKind.PERMANENT
    assert error in result.error
    assert sink.requests == []


@pytest.mark.parametrize(
    ("config", "field"),
    [({"timeout": 16}, "timeout"), ({"timeout": "5"}, "timeout"), ({"secret": "x"}, "secret")],
)
def test_config_is_validated(sink: HttpSink, config: dict[str, Any], field: str) -> None:
    result = WebhookProvider().send(webhook(sink.url), config)
    assert result.kind is ResultKind.CONFIG_ERROR
    assert field in result.error
    assert sink.requests == []
    assert WebhookProvider().validate_config({}) == {"timeout": 10.0}


def _no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"unexpected lookup of {host!r}")
