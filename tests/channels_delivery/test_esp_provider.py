"""The anymail provider over real sockets: HTTP servers on 127.0.0.1 answer as the
ESPs' APIs do (Postmark's /email above all, and the other listed ESPs' send
endpoints), and django-anymail's own backends talk to them."""

import base64
import json
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote_plus

import pytest
from django_tenants.utils import tenant_context

from channels_delivery import ssrf
from channels_delivery.providers.base import (
    ConfigInvalid,
    ResultKind,
    provider_get,
    providers_for,
)
from channels_delivery.providers.esp import ESPS, AnymailProvider
from channels_delivery.services.delivery import message_deliver
from channels_delivery.services.integrations import integration_config, integration_create
from tenants.models import Tenant
from tests.channels_delivery.sinks import HttpSink, http_sink
from tests.channels_delivery.test_delivery import a_message, attempts_of, fresh
from tests.channels_delivery.test_email_provider import rendered
from tests.ports import free_port

API_KEY = "pm-server-token-7f3a9c2e51"
SECRET_KEY = "mj-secret-key-0b8d4e6f21"
POSTMARK_ID = "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"
POSTMARK_OK = {
    "To": "ada@example.com",
    "SubmittedAt": "2026-11-23T11:00:00.0000000Z",
    "MessageID": POSTMARK_ID,
    "ErrorCode": 0,
    "Message": "OK",
}

anymail = AnymailProvider()


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The sinks listen on 127.0.0.1, which the SSRF guard refuses in production."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


def esp_config(sink: HttpSink, esp: str = "postmark", **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "esp": esp,
        "api_key": API_KEY,
        "from_email": "Acme <no-reply@acme.example>",
        "reply_to": "support@acme.example",
        "api_url": sink.url,
        "timeout": 2,
    }
    if esp == "mailjet":
        config["secret_key"] = SECRET_KEY
    config.update(overrides)
    return config


def no_secret_in(*texts: str) -> bool:
    return not any(API_KEY in text or SECRET_KEY in text for text in texts)


# --- registry -----------------------------------------------------------------------


def test_registered_for_email_with_its_secrets() -> None:
    assert "anymail" in providers_for("email")
    provider = provider_get(channel="email", key="anymail")
    assert isinstance(provider, AnymailProvider)
    assert provider.secret_fields == frozenset({"api_key", "secret_key"})


# --- Postmark: what is sent, and success ---------------------------------------------


def test_postmark_gets_the_multipart_message_with_headers_and_the_key(sink: HttpSink) -> None:
    sink.reply(200, json.dumps(POSTMARK_OK), headers={"Content-Type": "application/json"})

    result = anymail.send(rendered(), esp_config(sink))

    assert result.kind == ResultKind.ACCEPTED, result.error
    assert result.provider_message_id == POSTMARK_ID
    assert result.response_status == 200
    assert POSTMARK_ID in result.response_excerpt
    [request] = sink.requests
    assert (request.method, request.path) == ("POST", "/email")
    assert request.headers["x-postmark-server-token"] == API_KEY
    sent = json.loads(request.body)
    assert sent["From"] == "Acme <no-reply@acme.example>"
    assert sent["To"] == "ada@example.com"
    assert sent["ReplyTo"] == "support@acme.example"
    assert sent["Subject"] == "Your order shipped"
    assert sent["TextBody"] == "Order 42 is on its way."
    assert sent["HtmlBody"] == "<p>Order <b>42</b> is on its way.</p>"
    headers = {header["Name"]: header["Value"] for header in sent["Headers"]}
    assert headers["List-Unsubscribe"] == "<https://herald.example/u/abc>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The Message-ID the SMTP provider would set: stable across retries.
    assert headers["Message-ID"] == "<6f1c9a52-0000-4000-8000-000000000001@acme.example>"


def test_an_html_only_message_is_sent_as_html(sink: HttpSink) -> None:
    sink.reply(200, json.dumps(POSTMARK_OK))
    message = rendered(content={"subject": "Hi", "html": "<p>Hi</p>"})

    assert anymail.send(message, esp_config(sink)).kind == ResultKind.ACCEPTED

    sent = json.loads(sink.requests[0].body)
    assert sent["HtmlBody"] == "<p>Hi</p>"
    assert "TextBody" not in sent


def test_api_url_with_a_path_is_joined_below_it(sink: HttpSink) -> None:
    sink.reply(200, json.dumps(POSTMARK_OK))
    anymail.send(rendered(), esp_config(sink, api_url=f"{sink.url}/postmark"))
    assert sink.requests[0].path == "/postmark/email"


# --- the other ESPs ------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# esp, api_url path, request path, auth header, its value, answer status, answer, id
OTHER_ESPS: list[tuple[str, str, str, str, str, int, Any, str]] = [
    (
        "mailgun",
        "/v3",
        "/v3/acme.example/messages",
        "authorization",
        basic("api", API_KEY),
        200,
        {"id": "<20261123110000.1.ABC@acme.example>", "message": "Queued. Thank you."},
        "<20261123110000.1.ABC@acme.example>",
    ),
    (
        "mailjet",
        "/v3.1/",
        "/v3.1/send",
        "authorization",
        basic(API_KEY, SECRET_KEY),
        200,
        {
            "Messages": [
                {
                    "Status": "success",
                    "To": [
                        {
                            "Email": "ada@example.com",
                            "MessageUUID": "1ab23cd4-e567-8901-2345-6789f0gh1i2j",
                            "MessageID": 576460752303423488,
                            "MessageHref": "https://api.mailjet.com/v3/message/576460752303423488",
                        }
                    ],
                }
            ]
        },
        "576460752303423488",
    ),
    (
        "resend",
        "",
        "/emails",
        "authorization",
        f"Bearer {API_KEY}",
        200,
        {"id": "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794"},
        "49a3999c-0ce1-4ea6-ab68-afcd6dc2e794",
    ),
    (
        "brevo",
        "/v3/",
        "/v3/smtp/email",
        "api-key",
        API_KEY,
        201,
        {"messageId": "<202611231100.12345678901@smtp-relay.mailin.fr>"},
        "<202611231100.12345678901@smtp-relay.mailin.fr>",
    ),
    (
        "sparkpost",
        "/api/v1/",
        "/api/v1/transmissions/",
        "authorization",
        API_KEY,
        200,
        {
            "results": {
                "total_rejected_recipients": 0,
                "total_accepted_recipients": 1,
                "id": "11668787484950529",
            }
        },
        "11668787484950529",
    ),
    (
        "postal",
        "",
        "/api/v1/send/message",
        "x-server-api-key",
        API_KEY,
        200,
        {
            "status": "success",
            "time": 0.05,
            "flags": {},
            "data": {
                "message_id": "a1b2c3@postal.acme.example",
                "messages": {"ada@example.com": {"id": 37, "token": "Xk3gQ2"}},
            },
        },
        "37",
    ),
]


def test_every_listed_esp_is_exercised() -> None:
    assert {case[0] for case in OTHER_ESPS} | {"postmark"} == set(ESPS)


@pytest.mark.parametrize(
    ("esp", "base", "path", "auth_header", "auth_value", "status", "answer", "message_id"),
    OTHER_ESPS,
    ids=[case[0] for case in OTHER_ESPS],
)
def test_each_esp_gets_the_key_the_message_and_answers_with_an_id(
    sink: HttpSink,
    esp: str,
    base: str,
    path: str,
    auth_header: str,
    auth_value: str,
    status: int,
    answer: Any,
    message_id: str,
) -> None:
    sink.reply(status, json.dumps(answer) if answer else "")

    result = anymail.send(rendered(), esp_config(sink, esp, api_url=f"{sink.url}{base}"))

    assert result.kind == ResultKind.ACCEPTED, result.error
    assert result.response_status == status
    [request] = sink.requests
    assert (request.method, request.path) == ("POST", path)
    assert request.headers[auth_header] == auth_value
    body = request.body.decode()
    if request.headers["content-type"] == "application/x-www-form-urlencoded":
        body = unquote_plus(body)  # Mailgun takes a form
    for expected in (
        "Your order shipped",
        "Order 42 is on its way.",
        "List-Unsubscribe",
        "List-Unsubscribe=One-Click",
        "ada@example.com",
        "no-reply@acme.example",
    ):
        assert expected in body, (esp, expected)
    assert result.provider_message_id == message_id


# --- failures ------------------------------------------------------------------------


def test_500_is_retryable_with_the_answer_kept(sink: HttpSink) -> None:
    sink.reply(500, '{"ErrorCode": 100, "Message": "Maintenance"}')

    result = anymail.send(rendered(), esp_config(sink))

    assert result.kind == ResultKind.RETRYABLE
    assert result.response_status == 500
    assert result.retry_after_seconds is None
    assert result.error == "Postmark answered HTTP 500: Maintenance"
    assert result.response_excerpt == '{"ErrorCode": 100, "Message": "Maintenance"}'


def test_429_is_retryable_honouring_retry_after(sink: HttpSink) -> None:
    sink.reply(
        429, '{"ErrorCode": 429, "Message": "Rate limit exceeded"}', headers={"Retry-After": "17"}
    )

    result = anymail.send(rendered(), esp_config(sink))

    assert result.kind == ResultKind.RETRYABLE
    assert result.response_status == 429
    assert result.retry_after_seconds == 17


def test_503_retry_after_as_an_http_date(sink: HttpSink) -> None:
    sink.reply(503, headers={"Retry-After": formatdate(time.time() + 120, usegmt=True)})

    result = anymail.send(rendered(), esp_config(sink, "resend"))

    assert result.kind == ResultKind.RETRYABLE
    assert result.retry_after_seconds is not None
    assert 110 <= result.retry_after_seconds <= 121


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_config_errors_and_the_key_is_not_repeated(
    sink: HttpSink, status: int
) -> None:
    # An API that echoes the token it refused: Herald keeps neither copy.
    sink.reply(status, json.dumps({"ErrorCode": 10, "Message": f"Bad token {API_KEY}"}))

    result = anymail.send(rendered(), esp_config(sink))

    assert result.kind == ResultKind.CONFIG_ERROR
    assert result.response_status == status
    assert "refused the API key" in result.error
    assert "[secret]" in result.error
    assert "[secret]" in result.response_excerpt
    assert no_secret_in(result.error, result.response_excerpt)


def test_mailjet_secret_key_is_not_repeated_either(sink: HttpSink) -> None:
    sink.reply(401, f"API key authentication/authorization failure ({API_KEY}:{SECRET_KEY})")

    result = anymail.send(rendered(), esp_config(sink, "mailjet", api_url=f"{sink.url}/v3.1/"))

    assert result.kind == ResultKind.CONFIG_ERROR
    assert no_secret_in(result.error, result.response_excerpt)


def test_postmark_422_invalid_recipient_is_permanent(sink: HttpSink) -> None:
    sink.reply(
        422, json.dumps({"ErrorCode": 300, "Message": "Invalid 'To' address: 'ada@example.com'."})
    )

    result = anymail.send(rendered(), esp_config(sink))

    assert result.kind == ResultKind.PERMANENT
    assert result.response_status == 422
    assert "refused the recipient: ada@example.com (invalid)" in result.error


def test_postmark_422_inactive_recipient_is_permanent(sink: HttpSink) -> None:
    sink.reply(
        422,
        json.dumps(
            {
                "ErrorCode": 406,
                "Message": "You tried to send to a recipient that has been marked as inactive.\n"
                "Found inactive addresses: ada@example.com.\n"
                "Inactive recipients are ones that have generated a hard bounce or a spam "
                "complaint. ",
            }
        ),
    )

    result = anymail.send(rendered(), esp_config(sink))

    assert result.kind == ResultKind.PERMANENT
    assert "ada@example.com (rejected)" in result.error


def test_postmark_422_about_the_message_is_permanent(sink: HttpSink) -> None:
    sink.reply(422, json.dumps({"ErrorCode": 300, "Message": "Invalid 'From' address"}))

    result = anymail.send(rendered(), esp_config(sink))

    assert result.kind == ResultKind.PERMANENT
    assert result.error == "Postmark answered HTTP 422: Invalid 'From' address"


def test_brevo_400_is_permanent_with_its_reason(sink: HttpSink) -> None:
    sink.reply(
        400, json.dumps({"code": "invalid_parameter", "message": "email is not valid in to"})
    )

    result = anymail.send(rendered(), esp_config(sink, "brevo", api_url=f"{sink.url}/v3/"))

    assert result.kind == ResultKind.PERMANENT
    assert result.response_status == 400
    assert result.error == "Brevo answered HTTP 400: email is not valid in to"


def test_sparkpost_rejecting_every_recipient_is_permanent(sink: HttpSink) -> None:
    sink.reply(
        200,
        json.dumps(
            {
                "results": {
                    "total_rejected_recipients": 1,
                    "total_accepted_recipients": 0,
                    "id": "11668787484950530",
                }
            }
        ),
    )

    result = anymail.send(rendered(), esp_config(sink, "sparkpost"))

    assert result.kind == ResultKind.PERMANENT
    assert "ada@example.com (rejected)" in result.error


@pytest.mark.parametrize(
    ("code", "kind"),
    [("InvalidServerAPIKey", ResultKind.CONFIG_ERROR), ("UnauthenticatedFromAddress", "permanent")],
)
def test_postal_errors_in_a_200_answer(sink: HttpSink, code: str, kind: ResultKind) -> None:
    sink.reply(
        200,
        json.dumps(
            {"status": "error", "time": 0.01, "flags": {}, "data": {"code": code, "message": "No"}}
        ),
    )

    result = anymail.send(rendered(), esp_config(sink, "postal"))

    assert result.kind == kind
    assert code in result.error


def test_an_unreadable_2xx_is_taken_as_sent_without_an_id(sink: HttpSink) -> None:
    sink.reply(200, "<html>ok</html>")

    result = anymail.send(rendered(), esp_config(sink))

    assert result.kind == ResultKind.ACCEPTED
    assert result.provider_message_id == ""
    assert "could not read" in result.error


def test_an_answer_the_backend_trips_over_is_still_read(sink: HttpSink) -> None:
    """anymail's Postal backend raises KeyError on a 200 without "status"."""
    sink.reply(200, json.dumps({"id": 1}))

    result = anymail.send(rendered(), esp_config(sink, "postal"))

    assert result.kind == ResultKind.ACCEPTED
    assert result.response_status == 200
    assert "could not read" in result.error


def test_a_proxy_from_the_environment_is_not_used(
    sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    with http_sink() as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        sink.reply(200, json.dumps(POSTMARK_OK))

        result = anymail.send(rendered(), esp_config(sink))

        assert proxy.requests == []
    assert result.kind == ResultKind.ACCEPTED
    assert len(sink.requests) == 1


def test_a_redirect_is_not_followed(sink: HttpSink) -> None:
    with http_sink() as elsewhere:
        sink.reply(307, headers={"Location": f"{elsewhere.url}/email"})

        result = anymail.send(rendered(), esp_config(sink))

        assert elsewhere.requests == []
    assert result.kind == ResultKind.CONFIG_ERROR
    assert result.response_status == 307
    assert "not followed" in result.error


def test_a_refused_connection_is_retryable() -> None:
    result = anymail.send(
        rendered(),
        {
            "esp": "postmark",
            "api_key": API_KEY,
            "from_email": "no-reply@acme.example",
            "api_url": f"http://127.0.0.1:{free_port()}/",
        },
    )
    assert result.kind == ResultKind.RETRYABLE
    assert "could not connect to Postmark" in result.error
    assert no_secret_in(result.error)


def test_a_silent_esp_times_out_within_the_timeout(sink: HttpSink) -> None:
    sink.reply(200, json.dumps(POSTMARK_OK), delay=10)

    started = time.monotonic()
    result = anymail.send(rendered(), esp_config(sink, timeout=1))
    elapsed = time.monotonic() - started

    assert result.kind == ResultKind.RETRYABLE
    assert "did not answer within 1 s" in result.error
    assert 0.9 <= elapsed < 2.5
    assert no_secret_in(result.error)


def test_a_message_that_can_not_be_built_is_permanent_and_not_sent(sink: HttpSink) -> None:
    no_address = anymail.send(rendered(address={}), esp_config(sink))
    assert no_address.kind == ResultKind.PERMANENT
    assert "no email address" in no_address.error
    overriding = anymail.send(rendered(headers={"From": "ceo@bank.example"}), esp_config(sink))
    assert overriding.kind == ResultKind.PERMANENT
    assert "From" in overriding.error
    injected = anymail.send(
        rendered(headers={"X-Campaign": "a\r\nBcc: victim@example.com"}), esp_config(sink)
    )
    assert injected.kind == ResultKind.PERMANENT
    assert sink.requests == []


def test_settings_never_replace_the_tenants_credentials_or_url(
    sink: HttpSink, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Herald's own ANYMAIL settings (if it ever has some) do not reach a tenant's
    send: not its URL, not its key, and no debug dump of the request."""
    with http_sink() as platform_esp:
        settings.ANYMAIL = {
            "POSTMARK_SERVER_TOKEN": "platform-token",
            "POSTMARK_API_URL": platform_esp.url,
            "DEBUG_API_REQUESTS": True,
            "IGNORE_RECIPIENT_STATUS": True,
        }
        sink.reply(200, json.dumps(POSTMARK_OK))

        result = anymail.send(rendered(), esp_config(sink))

        assert platform_esp.requests == []
    assert result.kind == ResultKind.ACCEPTED
    assert sink.requests[0].headers["x-postmark-server-token"] == API_KEY
    assert API_KEY not in capsys.readouterr().out


# --- config ----------------------------------------------------------------------------


def test_config_is_normalised(sink: HttpSink) -> None:
    config = anymail.validate_config(
        {
            "esp": "postmark",
            "api_key": f" {API_KEY} ",
            "from_email": "no-reply@acme.example",
            "api_url": sink.url,
            "secret_key": "left over from Mailjet",
        }
    )
    assert config == {
        "esp": "postmark",
        "api_key": API_KEY,
        "secret_key": "",
        "from_email": "no-reply@acme.example",
        "reply_to": "",
        "api_url": f"{sink.url}/",
        "timeout": 10.0,
    }
    without_url = anymail.validate_config(
        {"esp": "resend", "api_key": "k", "from_email": "a@b.example"}
    )
    assert without_url["api_url"] == ""  # the ESP's own URL is used


def test_config_errors_name_each_field_and_never_the_secret() -> None:
    bad_key = f"{API_KEY}\nX-Injected: 1"
    with pytest.raises(ConfigInvalid) as invalid:
        anymail.validate_config(
            {
                "esp": "mailchimp",
                "api_key": bad_key,
                "from_email": "not-an-address",
                "reply_to": "also bad",
                "api_url": "ftp://esp.example/",
                "timeout": 0,
                "colour": "blue",
            }
        )
    errors = invalid.value.errors
    assert set(errors) == {
        "esp",
        "api_key",
        "from_email",
        "reply_to",
        "api_url",
        "timeout",
        "colour",
    }
    assert errors["esp"].startswith("one of brevo, mailgun, mailjet, postal, postmark")
    assert errors["colour"] == "unknown field"
    assert "http" in errors["api_url"]
    assert no_secret_in(str(invalid.value))


def test_each_esp_requires_what_it_needs() -> None:
    with pytest.raises(ConfigInvalid) as mailjet:
        anymail.validate_config({"esp": "mailjet", "api_key": "k", "from_email": "a@b.example"})
    assert mailjet.value.errors == {"secret_key": "required"}
    with pytest.raises(ConfigInvalid) as postal:
        anymail.validate_config({"esp": "postal", "api_key": "k", "from_email": "a@b.example"})
    assert postal.value.errors == {"api_url": "required: the base URL of your Postal server"}
    with pytest.raises(ConfigInvalid) as keyless:
        anymail.validate_config({"esp": "postmark", "from_email": "a@b.example"})
    assert keyless.value.errors == {"api_key": "required"}


def test_api_url_must_be_https_outside_development(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = False
    monkeypatch.setattr(ssrf, "resolver", lambda host, port: ["93.184.216.34"])
    base = {"esp": "postal", "api_key": "k", "from_email": "a@b.example"}
    with pytest.raises(ConfigInvalid) as plain:
        anymail.validate_config({**base, "api_url": "http://postal.acme.example"})
    assert "must be https" in plain.value.errors["api_url"]
    config = anymail.validate_config({**base, "api_url": "https://postal.acme.example"})
    assert config["api_url"] == "https://postal.acme.example/"


def test_send_with_an_invalid_config_is_a_config_error() -> None:
    result = anymail.send(rendered(), {"esp": "postmark", "api_key": API_KEY})
    assert result.kind == ResultKind.CONFIG_ERROR
    assert "from_email" in result.error
    assert no_secret_in(result.error)


# --- SSRF ------------------------------------------------------------------------------


def test_a_loopback_api_url_is_refused_when_saved_and_when_sent(
    sink: HttpSink, settings: Any
) -> None:
    config = esp_config(sink)
    settings.HERALD_ALLOW_LOOPBACK_URLS = False

    with pytest.raises(ConfigInvalid) as refused:
        anymail.validate_config(config)
    assert "loopback" in refused.value.errors["api_url"]
    # A config saved while it was allowed is refused before anything is sent.
    result = anymail.send(rendered(), config)
    assert result.kind == ResultKind.CONFIG_ERROR
    assert "loopback" in result.error
    assert sink.requests == []


def test_a_private_api_url_is_refused() -> None:
    with pytest.raises(ConfigInvalid) as refused:
        anymail.validate_config(
            {
                "esp": "postal",
                "api_key": "k",
                "from_email": "a@b.example",
                "api_url": "https://10.0.0.5/",
            }
        )
    assert "private" in refused.value.errors["api_url"]


def dns_outage(host: str, port: int) -> list[str]:
    raise ssrf.HostUnresolved(f"the host {host!r} does not resolve (temporary failure)")


@pytest.mark.parametrize(
    ("later", "kind", "errors"),
    [
        (
            lambda host, port: ["169.254.169.254"],
            ResultKind.CONFIG_ERROR,
            ["'postal.acme.example' resolves to 169.254.169.254", "metadata"],
        ),
        # A resolver outage is not the tenant's mistake: retried, not failed.
        (dns_outage, ResultKind.RETRYABLE, ["'postal.acme.example' does not resolve"]),
    ],
    ids=["now-points-at-the-metadata-service", "dns-outage"],
)
def test_a_name_is_checked_again_before_each_send(
    later: Any, kind: ResultKind, errors: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved while the name pointed outward; what it resolves to at the send
    decides, and nothing is sent to an address that is refused."""
    config = {
        "esp": "postal",
        "api_key": API_KEY,
        "from_email": "a@b.example",
        "api_url": "https://postal.acme.example",
    }
    monkeypatch.setattr(ssrf, "resolver", lambda host, port: ["93.184.216.34"])
    anymail.validate_config(config)
    monkeypatch.setattr(ssrf, "resolver", later)

    result = anymail.send(rendered(), config)

    assert result.kind == kind
    for error in errors:
        assert error in result.error


# --- through the delivery core ------------------------------------------------------------


@pytest.fixture
def schema(tenant_a: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant_a):
        yield tenant_a


@pytest.mark.django_db
def test_a_message_is_delivered_through_postmark(schema: Tenant, sink: HttpSink) -> None:
    integration = integration_create(
        channel="email",
        provider="anymail",
        name="postmark",
        config={
            "esp": "postmark",
            "api_key": API_KEY,
            "from_email": "Acme <no-reply@acme.example>",
            "api_url": sink.url,
            "timeout": 2,
        },
    )
    assert "api_key" not in integration.config  # stored encrypted, apart
    assert integration_config(integration=integration)["api_key"] == API_KEY
    message = a_message()
    sink.reply(200, json.dumps({**POSTMARK_OK, "To": "ann@example.com"}))

    report = message_deliver(message_id=message.id)

    assert (report.status, report.outcome) == ("sent", "accepted")
    assert fresh(message).status == "sent"
    [attempt] = attempts_of(message)
    assert (attempt.provider, attempt.outcome, attempt.integration_id) == (
        "anymail",
        "accepted",
        integration.pk,
    )
    assert attempt.provider_message_id == POSTMARK_ID
    [request] = sink.requests
    sent = json.loads(request.body)
    assert sent["To"] == "ann@example.com"
    assert sent["Subject"] == "Order A-1 shipped"
    headers = {header["Name"]: header["Value"] for header in sent["Headers"]}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Unsubscribe"].startswith("<http")
