"""herald_client.WebhookVerifier on the tenant's receiving side, against what
Herald really sends: deliveries made by Herald's webhook provider over HTTP to
a local sink, and headers from Herald's own signing code."""

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from herald_client import VerifiedWebhook, WebhookVerificationError, WebhookVerifier

from channels_delivery.providers.base import RenderedMessage, ResultKind
from channels_delivery.providers.webhook import WebhookProvider
from channels_delivery.services.webhooks import webhook_secret_generate, webhook_signature_headers
from tests.channels_delivery.sinks import HttpSink, SinkRequest, http_sink

BODY = '{"type": "order.shipped", "data": {"order": "A-17", "note": "caf\\u00e9 ☕"}}'


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The sink listens on 127.0.0.1, which Herald's SSRF guard refuses by default."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


def delivered(secrets: list[str], *, body: str = BODY, message_key: str = "msg_1") -> SinkRequest:
    """What the tenant's endpoint receives when Herald delivers one webhook message."""
    with http_sink() as sink:
        message = RenderedMessage(
            message_id="5b0e8f1c-0000-4000-8000-000000000001",
            channel="webhook",
            content={"body": body},
            address={"endpoint_id": 7, "url": f"{sink.url}/hooks", "secrets": secrets},
            idempotency_key=message_key,
        )
        result = WebhookProvider().send(message, {"timeout": 5})
        assert result.kind == ResultKind.ACCEPTED, result
        return only(sink)


def only(sink: HttpSink) -> SinkRequest:
    (request,) = sink.requests
    return request


def test_a_delivery_from_herald_verifies() -> None:
    secret = webhook_secret_generate()
    request = delivered([secret], message_key="msg_42")

    webhook = WebhookVerifier(secret).verify(request.body, request.headers)

    assert isinstance(webhook, VerifiedWebhook)
    assert webhook.id == "msg_42"
    assert webhook.payload == json.loads(BODY)
    assert abs(webhook.timestamp - datetime.now(UTC)) < timedelta(seconds=30)


def test_during_a_rotation_either_secret_verifies() -> None:
    old, new = webhook_secret_generate(), webhook_secret_generate()
    request = delivered([new, old])
    assert len(request.headers["webhook-signature"].split()) == 2

    for verifier in (WebhookVerifier(old), WebhookVerifier(new), WebhookVerifier([new, old])):
        assert verifier.verify(request.body, request.headers).payload == json.loads(BODY)


def test_a_tampered_body_or_id_does_not_verify() -> None:
    secret = webhook_secret_generate()
    request = delivered([secret])
    verifier = WebhookVerifier(secret)

    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verifier.verify(request.body.replace(b"A-17", b"A-18"), request.headers)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(request.body, {**request.headers, "webhook-id": "msg_other"})
    with pytest.raises(WebhookVerificationError):
        WebhookVerifier(webhook_secret_generate()).verify(request.body, request.headers)


def test_an_old_or_future_timestamp_is_refused_though_signed() -> None:
    secret = webhook_secret_generate()
    verifier = WebhookVerifier(secret)
    now = int(time.time())

    for when in (now - 6 * 60, now + 6 * 60):
        headers = webhook_signature_headers(
            msg_id="msg_1", timestamp=when, body=BODY, secrets=[secret]
        )
        with pytest.raises(WebhookVerificationError, match="too far from now"):
            verifier.verify(BODY, headers)

    recent = webhook_signature_headers(
        msg_id="msg_1", timestamp=now - 60, body=BODY, secrets=[secret]
    )
    assert verifier.verify(BODY.encode(), recent).id == "msg_1"
    strict = WebhookVerifier(secret, tolerance=timedelta(seconds=30))
    with pytest.raises(WebhookVerificationError):
        strict.verify(BODY, recent)


def test_header_names_are_case_insensitive() -> None:
    secret = webhook_secret_generate()
    headers = webhook_signature_headers(
        msg_id="msg_1", timestamp=int(time.time()), body=BODY, secrets=[secret]
    )
    shouted = {name.upper(): value for name, value in headers.items()}

    assert WebhookVerifier(secret).verify(BODY, shouted).id == "msg_1"


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-signature": ""},
        {"webhook-signature": "garbage"},
        {"webhook-signature": "v1,not base64!"},
        {"webhook-signature": "v2,AAAA"},
        {"webhook-timestamp": "yesterday"},
        {"webhook-id": ""},
    ],
)
def test_malformed_headers_are_a_verification_error(change: dict[str, str]) -> None:
    secret = webhook_secret_generate()
    headers = webhook_signature_headers(
        msg_id="msg_1", timestamp=int(time.time()), body=BODY, secrets=[secret]
    )

    with pytest.raises(WebhookVerificationError):
        WebhookVerifier(secret).verify(BODY, {**headers, **change})


def test_a_body_that_is_not_utf8_or_json_is_refused() -> None:
    secret = webhook_secret_generate()
    now = int(time.time())
    verifier = WebhookVerifier(secret)
    text = webhook_signature_headers(msg_id="m", timestamp=now, body="not json", secrets=[secret])

    with pytest.raises(WebhookVerificationError, match="not JSON"):
        verifier.verify("not json", text)
    with pytest.raises(WebhookVerificationError, match="UTF-8"):
        verifier.verify(b"\xff\xfe", text)


def test_a_verifier_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        WebhookVerifier([])
    with pytest.raises(ValueError, match="not a webhook secret"):
        WebhookVerifier("whsec_")
