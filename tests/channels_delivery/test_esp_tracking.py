"""ESP tracking webhooks (/hooks/esp/<token>/): what Postmark, Mailgun and SparkPost
report about the email Herald sent through them, posted through Django's test
client to the real URL and read by anymail's own webhook views, moves the
message's status, in the token's tenant and integration only."""

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from django.core import signing
from django.test import Client
from django_tenants.utils import tenant_context

from channels_delivery.esp_tracking import (
    TOKEN_SALT,
    TRACKING_VIEWS,
    TrackingTokenInvalid,
    TrackingUnavailable,
    esp_tracking_token_make,
    esp_tracking_token_read,
    esp_tracking_webhook,
)
from channels_delivery.models import (
    AttemptOutcome,
    CallbackType,
    DeliveryAttempt,
    Integration,
    Message,
    MessageStatus,
    StatusCallback,
    WebhookEndpoint,
)
from channels_delivery.providers.esp import ESPS
from channels_delivery.services.delivery import message_deliver
from channels_delivery.services.integrations import integration_create
from tenants.models import Tenant
from tests.channels_delivery.sinks import HttpSink
from tests.channels_delivery.test_delivery import a_message, smtp_integration
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

PUBLIC = "https://herald.example"
POSTMARK_ID = "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"
MAILGUN_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
MAILGUN_ID = "20261123110000.1.ABCDEF0123456789@mg.acme.example"


@pytest.fixture(autouse=True)
def _public_url(settings: Any) -> None:
    settings.HERALD_PUBLIC_URL = PUBLIC
    settings.HERALD_ALLOW_LOOPBACK_URLS = True  # the ESP sink is on 127.0.0.1


@pytest.fixture
def client() -> Client:
    # A host no tenant has: the hook is answered before the tenant lookup.
    return Client(HTTP_HOST="herald.example")


def esp_integration(esp: str = "postmark", name: str = "", **config: Any) -> Integration:
    return integration_create(
        channel="email",
        provider="anymail",
        name=name or esp,
        config={
            "esp": esp,
            "api_key": MAILGUN_KEY if esp == "mailgun" else "pm-server-token-7f3a9c2e51",
            "from_email": "Acme <no-reply@acme.example>",
            **config,
        },
    )


def sent_through(integration: Integration, provider_message_id: str) -> Message:
    """A message the ESP accepted with ``provider_message_id``, as delivery leaves it."""
    message = a_message(status=MessageStatus.SENT, integration=integration)
    DeliveryAttempt.objects.create(
        message=message,
        integration=integration,
        provider="anymail",
        outcome=AttemptOutcome.ACCEPTED,
        response_status=200,
        provider_message_id=provider_message_id,
    )
    return message


def fresh(tenant: Tenant, message: Message) -> Message:
    with tenant_context(tenant):
        return Message.objects.get(pk=message.pk)


def hook_of(tenant: Tenant, integration: Integration) -> tuple[str, dict[str, str]]:
    """The hook's path and the Authorization header the ESP sends."""
    with tenant_context(tenant):
        webhook = esp_tracking_webhook(integration=integration)
    assert webhook.url.startswith(f"{PUBLIC}/hooks/esp/")
    credentials = base64.b64encode(f"{webhook.username}:{webhook.password}".encode()).decode()
    return webhook.url.removeprefix(PUBLIC), {"Authorization": f"Basic {credentials}"}


def post(client: Client, path: str, payload: Any, headers: dict[str, str]) -> Any:
    return client.post(path, json.dumps(payload), content_type="application/json", headers=headers)


# Postmark's webhook bodies, as its documentation and anymail's tests show them.
def postmark_delivery(message_id: str = POSTMARK_ID) -> dict[str, Any]:
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": message_id,
        "Recipient": "ann@example.com",
        "Tag": "",
        "DeliveredAt": "2026-11-23T11:05:52Z",
        "Details": "Test delivery webhook details",
        "Metadata": {},
    }


def postmark_bounce(message_id: str = POSTMARK_ID, kind: str = "HardBounce") -> dict[str, Any]:
    return {
        "RecordType": "Bounce",
        "ID": 4323372036854775807,
        "Type": kind,
        "TypeCode": 1,
        "Name": "Hard bounce",
        "Tag": "",
        "MessageID": message_id,
        "ServerID": 23,
        "MessageStream": "outbound",
        "Description": "The server was unable to deliver your message "
        "(ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": "ann@example.com",
        "From": "no-reply@acme.example",
        "BouncedAt": "2026-11-23T11:06:10Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Order A-1 shipped",
    }


def postmark_open(message_id: str = POSTMARK_ID) -> dict[str, Any]:
    return {
        "RecordType": "Open",
        "MessageStream": "outbound",
        "FirstOpen": True,
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
        "Platform": "WebMail",
        "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5)",
        "ReadSeconds": 5,
        "Geo": {},
        "MessageID": message_id,
        "Metadata": {},
        "ReceivedAt": "2026-11-23T11:10:00Z",
        "Tag": "",
        "Recipient": "ann@example.com",
    }


def postmark_click(message_id: str = POSTMARK_ID) -> dict[str, Any]:
    return {
        "RecordType": "Click",
        "MessageStream": "outbound",
        "ClickLocation": "HTML",
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
        "Platform": "Desktop",
        "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5)",
        "OriginalLink": "https://shop.example/orders/A-1",
        "Geo": {},
        "MessageID": message_id,
        "Metadata": {},
        "ReceivedAt": "2026-11-23T11:11:00Z",
        "Tag": "",
        "Recipient": "ann@example.com",
    }


def postmark_complaint(message_id: str = POSTMARK_ID) -> dict[str, Any]:
    return {
        **postmark_bounce(message_id, kind="SpamComplaint"),
        "RecordType": "SpamComplaint",
        "Name": "Spam complaint",
        "Description": "The subscriber explicitly marked this message as spam.",
    }


# --- the happy paths ------------------------------------------------------------------------


def test_a_message_sent_through_postmark_is_delivered_opened_and_clicked(
    client: Client, tenant_a: Tenant, sink: HttpSink
) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration(api_url=sink.url, timeout=2)
        message = a_message()
        sink.reply(
            200,
            json.dumps(
                {
                    "To": "ann@example.com",
                    "SubmittedAt": "2026-11-23T11:00:00.0000000Z",
                    "MessageID": POSTMARK_ID,
                    "ErrorCode": 0,
                    "Message": "OK",
                }
            ),
        )
        assert message_deliver(message_id=message.id).status == "sent"
        assert DeliveryAttempt.objects.get(message=message).provider_message_id == POSTMARK_ID
    path, auth = hook_of(tenant_a, integration)

    delivered = post(client, path, postmark_delivery(), auth)

    assert delivered.status_code == 200, delivered.content
    assert delivered.json() == {"received": 1, "applied": 1}
    after = fresh(tenant_a, message)
    assert after.status == MessageStatus.DELIVERED
    assert after.delivered_at is not None

    assert post(client, path, postmark_open(), auth).status_code == 200
    assert fresh(tenant_a, message).status == MessageStatus.OPENED
    assert post(client, path, postmark_click(), auth).status_code == 200
    assert fresh(tenant_a, message).status == MessageStatus.CLICKED
    # Clicked is final: a late open changes nothing, and is no error.
    late = post(client, path, postmark_open(), auth)
    assert (late.status_code, late.json()) == (200, {"received": 1, "applied": 0})
    assert fresh(tenant_a, message).status == MessageStatus.CLICKED


def test_a_postmark_hard_bounce_bounces_the_message_with_the_reason(
    client: Client, tenant_a: Tenant
) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        message = sent_through(integration, POSTMARK_ID)
        listener = WebhookEndpoint.objects.create(
            url="https://93.184.216.34/status", event_types=["message.failed"]
        )
    path, auth = hook_of(tenant_a, integration)

    response = post(client, path, postmark_bounce(), auth)

    assert response.status_code == 200
    after = fresh(tenant_a, message)
    assert after.status == MessageStatus.BOUNCED
    with tenant_context(tenant_a):
        callback = StatusCallback.objects.get(endpoint=listener)
    assert (callback.type, callback.payload["data"]["status"]) == ("message.failed", "bounced")
    assert after.error.startswith("Postmark reported a bounce (bounced): ")
    assert "mailbox not found" in after.error
    assert "550 5.1.1" in after.error


def test_a_transient_bounce_changes_nothing(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        message = sent_through(integration, POSTMARK_ID)
    path, auth = hook_of(tenant_a, integration)

    # Postmark's "Transient" is anymail's "deferred": the ESP is still trying.
    response = post(client, path, postmark_bounce(kind="Transient"), auth)

    assert (response.status_code, response.json()) == (200, {"received": 1, "applied": 0})
    assert fresh(tenant_a, message).status == MessageStatus.SENT


def test_a_spam_complaint_is_noted_without_a_status_change(
    client: Client, tenant_a: Tenant
) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        message = sent_through(integration, POSTMARK_ID)
    path, auth = hook_of(tenant_a, integration)
    assert post(client, path, postmark_delivery(), auth).status_code == 200

    response = post(client, path, postmark_complaint(), auth)

    assert response.status_code == 200
    after = fresh(tenant_a, message)
    assert after.status == MessageStatus.DELIVERED
    assert "reported the message as spam" in after.error


def test_repeated_delivery_reports_are_applied_once(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        WebhookEndpoint.objects.create(
            url="https://hooks.acme.example/herald", event_types=["message.delivered"]
        )
        integration = esp_integration()
        message = sent_through(integration, POSTMARK_ID)
    path, auth = hook_of(tenant_a, integration)

    first = post(client, path, postmark_delivery(), auth)
    delivered_at = fresh(tenant_a, message).delivered_at
    again = post(client, path, postmark_delivery(), auth)

    assert first.json() == {"received": 1, "applied": 1}
    assert (again.status_code, again.json()) == (200, {"received": 1, "applied": 0})
    after = fresh(tenant_a, message)
    assert (after.status, after.delivered_at) == (MessageStatus.DELIVERED, delivered_at)
    with tenant_context(tenant_a):
        callbacks = StatusCallback.objects.filter(message_id=message.pk)
        assert [c.type for c in callbacks] == [CallbackType.MESSAGE_DELIVERED]


def test_an_unknown_message_id_is_ignored(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        message = sent_through(integration, POSTMARK_ID)
    path, auth = hook_of(tenant_a, integration)

    response = post(client, path, postmark_delivery("00000000-0000-0000-0000-000000000000"), auth)

    assert (response.status_code, response.json()) == (200, {"received": 1, "applied": 0})
    assert fresh(tenant_a, message).status == MessageStatus.SENT


def test_a_message_sent_through_another_integration_is_not_touched(
    client: Client, tenant_a: Tenant
) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        other = esp_integration(name="postmark-eu")
        message = sent_through(other, POSTMARK_ID)
    path, auth = hook_of(tenant_a, integration)

    assert post(client, path, postmark_delivery(), auth).json()["applied"] == 0
    assert fresh(tenant_a, message).status == MessageStatus.SENT


# --- other ESPs: the mapping is anymail's, not Postmark's -------------------------------


def mailgun_signed(event_data: dict[str, Any], key: str = MAILGUN_KEY) -> dict[str, Any]:
    timestamp, token = str(int(time.time())), "651869375b9df3c98fc15c4889b102119add1235c38fc9"
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256)
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature.hexdigest()},
        "event-data": event_data,
    }


def mailgun_event(event: str, **fields: Any) -> dict[str, Any]:
    return {
        "event": event,
        "id": "CPgfbmQMTCKtHW6uIWtuVe",
        "timestamp": time.time(),
        "recipient": "ann@example.com",
        "message": {"headers": {"message-id": MAILGUN_ID, "to": "ann@example.com"}},
        **fields,
    }


def test_mailgun_delivered_and_failed_with_its_signature(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration("mailgun")
        delivered = sent_through(integration, f"<{MAILGUN_ID}>")  # as anymail's backend keeps it
    path, auth = hook_of(tenant_a, integration)

    response = post(client, path, mailgun_signed(mailgun_event("delivered")), auth)

    assert response.status_code == 200, response.content
    assert fresh(tenant_a, delivered).status == MessageStatus.DELIVERED

    with tenant_context(tenant_a):
        DeliveryAttempt.objects.all().delete()
        failed = sent_through(integration, f"<{MAILGUN_ID}>")
    permanent = mailgun_event(
        "failed",
        severity="permanent",
        reason="bounce",
        **{"delivery-status": {"code": 550, "message": "5.1.1 No such user", "description": ""}},
    )
    assert post(client, path, mailgun_signed(permanent), auth).status_code == 200
    after = fresh(tenant_a, failed)
    assert after.status == MessageStatus.BOUNCED
    assert "No such user" in after.error


def test_mailgun_temporary_failure_changes_nothing(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration("mailgun")
        message = sent_through(integration, f"<{MAILGUN_ID}>")
    path, auth = hook_of(tenant_a, integration)

    temporary = mailgun_event("failed", severity="temporary", reason="generic")
    assert post(client, path, mailgun_signed(temporary), auth).status_code == 200
    assert fresh(tenant_a, message).status == MessageStatus.SENT


def test_mailgun_with_a_wrong_signature_is_forbidden(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration("mailgun")
        message = sent_through(integration, f"<{MAILGUN_ID}>")
    path, auth = hook_of(tenant_a, integration)

    forged = mailgun_signed(mailgun_event("delivered"), key="key-somebody-else")
    response = post(client, path, forged, auth)

    assert response.status_code == 403
    assert fresh(tenant_a, message).status == MessageStatus.SENT


def test_sparkpost_batch_is_applied_in_time_order(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration("sparkpost")
        message = sent_through(integration, "7000000000000001")
        bounced = sent_through(integration, "7000000000000002")
    path, auth = hook_of(tenant_a, integration)
    now = int(time.time())
    batch = [
        {  # the click comes first in the batch, but happened after the delivery
            "msys": {
                "track_event": {
                    "type": "click",
                    "transmission_id": "7000000000000001",
                    "timestamp": str(now + 60),
                    "target_link_url": "https://shop.example/orders/A-1",
                    "raw_rcpt_to": "ann@example.com",
                }
            }
        },
        {
            "msys": {
                "message_event": {
                    "type": "delivery",
                    "transmission_id": "7000000000000001",
                    "timestamp": str(now),
                    "raw_rcpt_to": "ann@example.com",
                }
            }
        },
        {
            "msys": {
                "message_event": {
                    "type": "bounce",
                    "bounce_class": "10",
                    "transmission_id": "7000000000000002",
                    "timestamp": str(now),
                    "raw_reason": "550 5.1.1 <ann@example.com>: Recipient address rejected",
                    "raw_rcpt_to": "ann@example.com",
                }
            }
        },
        {"msys": {}},  # SparkPost's ping
    ]

    response = post(client, path, batch, auth)

    assert (response.status_code, response.json()) == (200, {"received": 3, "applied": 3})
    assert fresh(tenant_a, message).status == MessageStatus.CLICKED
    after = fresh(tenant_a, bounced)
    assert after.status == MessageStatus.BOUNCED
    assert "Recipient address rejected" in after.error


def test_every_esp_has_a_tracking_view() -> None:
    assert set(TRACKING_VIEWS) == set(ESPS)


# --- refusals ---------------------------------------------------------------------------------


def test_missing_or_wrong_credentials_are_refused(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        other = esp_integration(name="postmark-eu")
        message = sent_through(integration, POSTMARK_ID)
    path, _ = hook_of(tenant_a, integration)
    _, others_auth = hook_of(tenant_a, other)
    wrong = base64.b64encode(b"herald:not-the-password").decode()

    for headers in ({}, {"Authorization": f"Basic {wrong}"}, others_auth, {"Authorization": "x"}):
        response = post(client, path, postmark_delivery(), headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert fresh(tenant_a, message).status == MessageStatus.SENT


def test_another_tenants_hook_can_not_touch_this_tenants_messages(
    client: Client, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with tenant_context(tenant_a):
        mine = esp_integration()
        message = sent_through(mine, POSTMARK_ID)
    with tenant_context(tenant_b):
        theirs = esp_integration()
    their_path, their_auth = hook_of(tenant_b, theirs)
    my_path, _ = hook_of(tenant_a, mine)

    # Tenant B's own hook, with tenant A's message id: B's schema has no such message.
    response = post(client, their_path, postmark_delivery(), their_auth)
    assert (response.status_code, response.json()) == (200, {"received": 1, "applied": 0})
    # B's credentials do not open A's hook.
    assert post(client, my_path, postmark_delivery(), their_auth).status_code == 401
    assert fresh(tenant_a, message).status == MessageStatus.SENT


def test_garbled_foreign_or_stale_tokens_are_not_found(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        gone = esp_integration(name="gone")
    path, auth = hook_of(tenant_a, integration)
    token = path.removeprefix("/hooks/esp/").removesuffix("/")
    gone_path, gone_auth = hook_of(tenant_a, gone)
    with tenant_context(tenant_a):
        gone.delete()
    unsalted = signing.dumps({"s": "alpha", "i": integration.pk})  # not the hook's salt
    public = esp_tracking_token_make(schema="public", integration_id=integration.pk)
    nowhere = esp_tracking_token_make(schema="nowhere", integration_id=integration.pk)

    for bad in (
        "/hooks/esp/",
        "/hooks/esp/garbled/",
        f"/hooks/esp/{token[:-2]}xx/",
        f"/hooks/esp/{unsalted}/",
        f"/hooks/esp/{public}/",
        f"/hooks/esp/{nowhere}/",
        f"/hooks/esp/{token}/extra/",
    ):
        assert post(client, bad, postmark_delivery(), auth).status_code == 404, bad
    assert post(client, gone_path, postmark_delivery(), gone_auth).status_code == 404
    # Without the trailing slash it is the same hook.
    assert post(client, path.removesuffix("/"), postmark_delivery(), auth).status_code == 200


def test_integrations_without_esp_tracking_are_not_found(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        smtp = smtp_integration("smtp", 2525)
        postal = esp_integration("postal", api_url="http://127.0.0.1:9")
    for integration in (smtp, postal):
        with tenant_context(tenant_a), pytest.raises(TrackingUnavailable):
            esp_tracking_webhook(integration=integration)
        token = esp_tracking_token_make(schema="alpha", integration_id=integration.pk)
        response = client.post(f"/hooks/esp/{token}/", "{}", content_type="application/json")
        assert response.status_code == 404


def test_payloads_anymail_can_not_read_are_400_never_500(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        sparkpost = esp_integration("sparkpost")
        mailgun = esp_integration("mailgun")
    path, auth = hook_of(tenant_a, integration)
    sparkpost_path, sparkpost_auth = hook_of(tenant_a, sparkpost)
    mailgun_path, mailgun_auth = hook_of(tenant_a, mailgun)
    inbound = {"FromFull": {"Email": "ann@example.com"}, "TextBody": "hi"}

    for hook, headers, body in (
        (path, auth, "not json"),
        (path, auth, "[1, 2]"),
        (path, auth, json.dumps(inbound)),  # Postmark's inbound webhook set to this URL
        (path, auth, b"\xff\xfe"),
        (sparkpost_path, sparkpost_auth, json.dumps({"msys": 1})),
        (sparkpost_path, sparkpost_auth, json.dumps([{"msys": {"a": {}, "b": {}}}])),
        (mailgun_path, mailgun_auth, json.dumps([1])),
        (mailgun_path, mailgun_auth, json.dumps({"signature": {}})),
    ):
        response = client.post(hook, body, content_type="application/json", headers=headers)
        assert response.status_code in (400, 403), (hook, body, response.content)


def test_only_post_is_taken_and_head_answers_for_url_checks(
    client: Client, tenant_a: Tenant
) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
    path, _ = hook_of(tenant_a, integration)

    assert client.head(path).status_code == 200
    assert client.get(path).status_code == 405


def test_an_old_secret_key_keeps_the_hook_working_through_rotation(
    client: Client, tenant_a: Tenant, settings: Any
) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        message = sent_through(integration, POSTMARK_ID)
    path, auth = hook_of(tenant_a, integration)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-for-the-rotation-test-" + "x" * 20

    assert hook_of(tenant_a, integration)[0] != path  # the new URL, for new set-ups
    assert post(client, path, postmark_delivery(), auth).status_code == 200
    assert fresh(tenant_a, message).status == MessageStatus.DELIVERED


def test_tokens_round_trip_and_refuse_tampering() -> None:
    token = esp_tracking_token_make(schema="alpha", integration_id=7)
    read = esp_tracking_token_read(token)
    assert (read.schema, read.integration_id) == ("alpha", 7)
    for bad in (
        "nope",
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        signing.dumps({"s": "alpha", "i": "7"}, salt=TOKEN_SALT),
        signing.dumps({"s": "", "i": 7}, salt=TOKEN_SALT),
        signing.dumps([1], salt=TOKEN_SALT),
    ):
        with pytest.raises(TrackingTokenInvalid):
            esp_tracking_token_read(bad)


# --- the API ---------------------------------------------------------------------------------


def test_the_api_answers_the_url_and_credentials_that_open_the_hook(
    client: Client, tenant_a: Tenant, api_a: ApiClient, api_b: ApiClient
) -> None:
    with tenant_context(tenant_a):
        integration = esp_integration()
        smtp = smtp_integration("smtp", 2525)
        message = sent_through(integration, POSTMARK_ID)

    read = api_a.get(f"/api/v1/integrations/{integration.pk}")
    webhook = api_a.get(f"/api/v1/integrations/{integration.pk}/tracking-webhook")

    assert read.status_code == 200
    url = read.json()["tracking_webhook_url"]
    assert url.startswith(f"{PUBLIC}/hooks/esp/")
    assert "password" not in read.json()
    assert webhook.status_code == 200
    body = webhook.json()
    assert (body["esp"], body["url"], body["username"]) == ("postmark", url, "herald")
    assert body["url_with_credentials"] == url.replace(
        "https://", f"https://herald:{body['password']}@"
    )
    credentials = base64.b64encode(f"herald:{body['password']}".encode()).decode()
    response = post(
        client,
        url.removeprefix(PUBLIC),
        postmark_delivery(),
        {"Authorization": f"Basic {credentials}"},
    )
    assert response.status_code == 200
    assert fresh(tenant_a, message).status == MessageStatus.DELIVERED

    assert api_a.get(f"/api/v1/integrations/{smtp.pk}").json()["tracking_webhook_url"] is None
    not_esp = api_a.get(f"/api/v1/integrations/{smtp.pk}/tracking-webhook")
    assert not_esp.status_code == 404
    assert "only 'anymail' integrations" in not_esp.json()["detail"]
    # Another tenant can not read this tenant's credentials.
    foreign = api_b.get(f"/api/v1/integrations/{integration.pk}/tracking-webhook")
    assert foreign.status_code == 404
