"""Webhook endpoints: URLs checked when saved, secrets encrypted and rotated with
an overlap, disabling, tenant isolation, and the Standard Webhooks signature."""

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django_tenants.utils import tenant_context
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from channels_delivery import ssrf
from channels_delivery.models import WebhookEndpoint
from channels_delivery.providers.base import (
    ConfigInvalid,
    ProviderResult,
    RenderedMessage,
    ResultKind,
)
from channels_delivery.providers.webhook import WebhookProvider
from channels_delivery.services.webhooks import (
    endpoint_address,
    endpoint_create,
    endpoint_delivery_record,
    endpoint_disable,
    endpoint_secret,
    endpoint_secret_rotate,
    endpoint_signing_secrets,
    endpoint_update,
    webhook_secret_generate,
    webhook_signature_headers,
)
from tenants.models import Tenant
from tests.channels_delivery.sinks import HttpSink, http_sink

PUBLIC = "93.184.216.34"
URL = "https://hooks.acme.example/herald"


@pytest.fixture
def resolve(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, list[str]]], None]:
    """Names resolve only as a test maps them: no DNS server, no internet."""

    def install(mapping: dict[str, list[str]]) -> None:
        def resolver(host: str, port: int) -> list[str]:
            if host not in mapping:
                raise AssertionError(f"unexpected lookup of {host!r}")
            return mapping[host]

        monkeypatch.setattr(ssrf, "resolver", resolver)

    install({"hooks.acme.example": [PUBLIC]})
    return install


@pytest.fixture
def sink(settings: Any) -> Iterator[HttpSink]:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True  # the sink listens on 127.0.0.1
    with http_sink() as running:
        yield running


def raw_secrets_column(endpoint: WebhookEndpoint) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT secrets FROM channels_delivery_webhookendpoint WHERE id = %s", [endpoint.pk]
        )
        return str(cursor.fetchone()[0])


# --- create / update ---------------------------------------------------------------


def test_create_generates_a_whsec_secret_stored_encrypted(
    in_tenant_a: Tenant, resolve: Any
) -> None:
    endpoint = endpoint_create(url=f" {URL} ", description="Orders", event_types=["order.shipped"])
    endpoint.refresh_from_db()
    assert endpoint.url == URL
    assert endpoint.enabled is True
    assert endpoint.event_types == ["order.shipped"]
    secret = endpoint_secret(endpoint=endpoint)
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret not in raw_secrets_column(endpoint)
    assert secret.removeprefix("whsec_") not in raw_secrets_column(endpoint)
    assert endpoint_signing_secrets(endpoint=endpoint) == [secret]
    assert endpoint_address(endpoint=endpoint) == {
        "endpoint_id": endpoint.pk,
        "url": URL,
        "secrets": [secret],
    }
    assert secret not in repr(endpoint) + str(endpoint)


def test_create_accepts_a_secret_the_tenant_brings(in_tenant_a: Tenant, resolve: Any) -> None:
    own = "whsec_" + base64.b64encode(b"k" * 24).decode()
    endpoint = endpoint_create(url=URL, secret=own)
    assert endpoint_secret(endpoint=endpoint) == own


def test_a_private_address_is_refused_at_save_naming_the_url_field(
    in_tenant_a: Tenant, resolve: Callable[[dict[str, list[str]]], None]
) -> None:
    resolve({"hooks.acme.example": [PUBLIC, "10.0.0.7"]})
    with pytest.raises(ConfigInvalid) as refused:
        endpoint_create(url=URL)
    assert set(refused.value.errors) == {"url"}
    assert "10.0.0.7" in refused.value.errors["url"]
    assert not WebhookEndpoint.objects.exists()


def test_the_model_clean_refuses_a_private_address_for_forms(
    in_tenant_a: Tenant, resolve: Callable[[dict[str, list[str]]], None]
) -> None:
    resolve({"metadata.acme.example": ["169.254.169.254"]})
    with pytest.raises(ValidationError) as refused:
        WebhookEndpoint(url="http://metadata.acme.example/").full_clean()
    assert "metadata" in refused.value.message_dict["url"][0]


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"url": ""}, "url", "required"),
        ({"url": "ftp://hooks.acme.example/"}, "url", "only http and https"),
        ({"url": "http://localhost:8000/"}, "url", "loopback"),
        ({"url": "https://u:p@hooks.acme.example/"}, "url", "user name or password"),
        ({"description": "x" * 201}, "description", "at most 200"),
        ({"event_types": "order.shipped"}, "event_types", "must be a list"),
        ({"event_types": ["ok", 3]}, "event_types", "not an event type key"),
        ({"event_types": [" "]}, "event_types", "not an event type key"),
        ({"secret": "not-whsec"}, "secret", "must start with 'whsec_'"),
        ({"secret": "whsec_!!!"}, "secret", "standard base64"),
        ({"secret": "whsec_" + base64.b64encode(b"short").decode()}, "secret", "24 to 64"),
    ],
)
def test_create_refuses_bad_input_naming_the_field(
    in_tenant_a: Tenant, resolve: Any, kwargs: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigInvalid) as refused:
        endpoint_create(**{"url": URL, **kwargs})
    assert set(refused.value.errors) == {field}
    assert message in refused.value.errors[field]


def test_event_types_are_deduplicated_and_empty_means_all(
    in_tenant_a: Tenant, resolve: Any
) -> None:
    endpoint = endpoint_create(url=URL, event_types=["a.b", " a.b ", "c.d"])
    assert endpoint.event_types == ["a.b", "c.d"]
    assert endpoint.receives("c.d")
    assert not endpoint.receives("x.y")
    everything = endpoint_create(url=URL)
    assert everything.receives("x.y")


def test_update_checks_the_new_url_and_keeps_the_old_on_refusal(
    in_tenant_a: Tenant, resolve: Callable[[dict[str, list[str]]], None]
) -> None:
    endpoint = endpoint_create(url=URL)
    resolve({"hooks.acme.example": [PUBLIC], "internal.acme.example": ["172.16.0.1"]})
    with pytest.raises(ConfigInvalid, match=r"172\.16\.0\.1"):
        endpoint_update(endpoint=endpoint, url="https://internal.acme.example/")
    endpoint.refresh_from_db()
    assert endpoint.url == URL
    endpoint_update(endpoint=endpoint, description="Billing", event_types=[])
    endpoint.refresh_from_db()
    assert (endpoint.description, endpoint.event_types) == ("Billing", [])


def test_disable_needs_a_reason_and_enabling_clears_it(in_tenant_a: Tenant, resolve: Any) -> None:
    endpoint = endpoint_create(url=URL)
    with pytest.raises(ConfigInvalid, match="reason"):
        endpoint_disable(endpoint=endpoint, reason="  ")
    endpoint.failing_since = datetime(2026, 1, 1, tzinfo=UTC)
    endpoint.save()
    endpoint_disable(endpoint=endpoint, reason="the receiver answered 410 Gone")
    endpoint.refresh_from_db()
    assert endpoint.enabled is False
    assert endpoint.disabled_reason == "the receiver answered 410 Gone"
    endpoint_update(endpoint=endpoint, enabled=True)
    endpoint.refresh_from_db()
    assert endpoint.enabled is True
    assert endpoint.disabled_reason == ""
    assert endpoint.failing_since is None


def test_delivery_results_keep_the_failure_streak_and_410_disables(
    in_tenant_a: Tenant, resolve: Any
) -> None:
    endpoint = endpoint_create(url=URL)
    first = datetime(2026, 11, 20, tzinfo=UTC)
    retry = ProviderResult(kind=ResultKind.RETRYABLE, error="HTTP 500")
    endpoint_delivery_record(endpoint_id=endpoint.pk, result=retry, now=first)
    endpoint_delivery_record(endpoint_id=endpoint.pk, result=retry, now=first + timedelta(days=1))
    endpoint.refresh_from_db()
    assert endpoint.failing_since == first  # the streak started at the first failure
    assert endpoint.enabled is True
    endpoint_delivery_record(
        endpoint_id=endpoint.pk, result=ProviderResult(kind=ResultKind.ACCEPTED)
    )
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None
    gone = ProviderResult(
        kind=ResultKind.PERMANENT, error="HTTP 410 Gone: ...", disable_endpoint=True
    )
    endpoint_delivery_record(endpoint_id=endpoint.pk, result=gone)
    endpoint.refresh_from_db()
    assert endpoint.enabled is False
    assert endpoint.disabled_reason == "HTTP 410 Gone: ..."
    assert endpoint.failing_since is not None
    assert endpoint_delivery_record(endpoint_id=endpoint.pk + 1000, result=gone) is None


# --- rotation -----------------------------------------------------------------------


def test_rotation_keeps_the_old_secret_signing_for_the_overlap(
    in_tenant_a: Tenant, resolve: Any, settings: Any
) -> None:
    settings.HERALD_WEBHOOK_SECRET_OVERLAP_HOURS = 24
    endpoint = endpoint_create(url=URL)
    old = endpoint_secret(endpoint=endpoint)
    now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    new = endpoint_secret_rotate(endpoint=endpoint, now=now)
    assert new != old
    assert new.startswith("whsec_")
    endpoint.refresh_from_db()
    assert endpoint_secret(endpoint=endpoint) == new
    assert endpoint_signing_secrets(endpoint=endpoint, now=now + timedelta(hours=23)) == [new, old]
    assert endpoint_signing_secrets(endpoint=endpoint, now=now + timedelta(hours=24)) == [new]
    assert old not in raw_secrets_column(endpoint)


def test_a_second_rotation_drops_the_oldest_secret(in_tenant_a: Tenant, resolve: Any) -> None:
    endpoint = endpoint_create(url=URL)
    first = endpoint_secret(endpoint=endpoint)
    second = endpoint_secret_rotate(endpoint=endpoint)
    third = endpoint_secret_rotate(endpoint=endpoint)
    active = endpoint_signing_secrets(endpoint=endpoint)
    assert active == [third, second]
    assert first not in active


def test_no_overlap_drops_the_old_secret_at_once(
    in_tenant_a: Tenant, resolve: Any, settings: Any
) -> None:
    settings.HERALD_WEBHOOK_SECRET_OVERLAP_HOURS = 0
    endpoint = endpoint_create(url=URL)
    new = endpoint_secret_rotate(endpoint=endpoint)
    assert endpoint_signing_secrets(endpoint=endpoint) == [new]


def test_during_rotation_a_delivery_verifies_with_either_secret(
    in_tenant_a: Tenant, sink: HttpSink
) -> None:
    endpoint = endpoint_create(url=f"{sink.url}/hooks")
    old = endpoint_secret(endpoint=endpoint)
    new = endpoint_secret_rotate(endpoint=endpoint)
    message = RenderedMessage(
        message_id="m-1",
        channel="webhook",
        content={"body": '{"type": "order.shipped"}'},
        address=endpoint_address(endpoint=endpoint),
        idempotency_key="msg_rotation",
    )
    assert WebhookProvider().send(message, {}).kind is ResultKind.ACCEPTED
    [request] = sink.requests
    signatures = request.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret, signature in ((new, signatures[0]), (old, signatures[1])):
        alone = {**request.headers, "webhook-signature": signature}
        assert Webhook(secret).verify(request.body, alone) == {"type": "order.shipped"}
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook_secret_generate()).verify(request.body, dict(request.headers))


# --- isolation ---------------------------------------------------------------------------


def test_endpoints_are_invisible_to_other_tenants(
    tenant_a: Tenant, tenant_b: Tenant, resolve: Any
) -> None:
    with tenant_context(tenant_a):
        mine = endpoint_create(url=URL, description="alpha's")
    with tenant_context(tenant_b):
        assert not WebhookEndpoint.objects.filter(description="alpha's").exists()
        assert not WebhookEndpoint.objects.filter(pk=mine.pk, url=URL).exists()
        theirs = endpoint_create(url=URL, description="beta's")
    with tenant_context(tenant_a):
        assert list(WebhookEndpoint.objects.values_list("description", flat=True)) == ["alpha's"]
        WebhookEndpoint.objects.all().delete()
    with tenant_context(tenant_b):
        assert WebhookEndpoint.objects.get(pk=theirs.pk).description == "beta's"
        WebhookEndpoint.objects.all().delete()


# --- signing -----------------------------------------------------------------------------


def test_signature_headers_match_the_standard_webhooks_test_vector() -> None:
    # From the Standard Webhooks reference libraries' tests.
    headers = webhook_signature_headers(
        msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=1614265330,
        body=b'{"test": 2432232314}',
        secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_signature_headers_sign_once_per_secret_and_accept_a_datetime() -> None:
    first, second = webhook_secret_generate(), webhook_secret_generate()
    when = datetime.now(UTC)
    body = json.dumps({"n": 1}).encode()
    headers = webhook_signature_headers(
        msg_id="msg_1", timestamp=when, body=body, secrets=[first, second]
    )
    assert headers["webhook-timestamp"] == str(int(when.timestamp()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (first, second):
        assert Webhook(secret).verify(body, headers) == {"n": 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secrets": []}, "at least one signing secret"),
        ({"secrets": ["whsec_"]}, "24 to 64"),
        ({"msg_id": ""}, "message id"),
    ],
)
def test_signature_headers_refuse_what_can_not_be_signed(
    kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {
        "msg_id": "msg_1",
        "timestamp": 1,
        "body": b"{}",
        "secrets": [webhook_secret_generate()],
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        webhook_signature_headers(**arguments)
