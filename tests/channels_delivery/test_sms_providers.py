"""SMS providers against real HTTP servers on 127.0.0.1, and SMS segment counting."""

import base64
import json
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

import pytest

from channels_delivery import ssrf
from channels_delivery.providers.base import (
    RESPONSE_EXCERPT_MAX,
    ConfigInvalid,
    RenderedMessage,
    ResultKind,
    provider_get,
    providers_for,
)
from channels_delivery.providers.sms import (
    HttpGatewayProvider,
    SegmentInfo,
    TwilioProvider,
    retry_after_seconds,
    sms_segments,
)
from tests.channels_delivery.sinks import HttpSink, http_sink

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TWILIO_ERROR = {
    "code": 21211,
    "message": "The 'To' number +1555 is not a valid phone number.",
    "more_info": "https://www.twilio.com/docs/errors/21211",
    "status": 400,
}


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The sinks listen on 127.0.0.1, which the SSRF guard refuses in production."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


def sms(phone: Any = "+447700900123", text: str = "Your code is 1234") -> RenderedMessage:
    return RenderedMessage(
        message_id="m-1", channel="sms", content={"text": text}, address={"phone": phone}
    )


def gateway_config(sink: HttpSink, **overrides: Any) -> dict[str, Any]:
    return {"url": f"{sink.url}/send", "timeout": 2, **overrides}


def twilio_config(sink: HttpSink, **overrides: Any) -> dict[str, Any]:
    base = {"account_sid": ACCOUNT_SID, "auth_token": "s3cret", "from": "+15005550006"}
    return {**base, "base_url": sink.url, "timeout": 2, **overrides}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- registry -----------------------------------------------------------------


def test_both_providers_are_registered_for_sms() -> None:
    assert {"http_gateway", "twilio"} <= set(providers_for("sms"))
    assert isinstance(provider_get(channel="sms", key="twilio"), TwilioProvider)
    assert isinstance(provider_get(channel="sms", key="http_gateway"), HttpGatewayProvider)
    assert TwilioProvider.secret_fields == {"auth_token"}
    assert HttpGatewayProvider.secret_fields == {"token", "password"}


# --- HTTP gateway: request shape ----------------------------------------------


def test_gateway_json_body_with_bearer_token_and_message_id(sink: HttpSink) -> None:
    sink.reply(202, json.dumps({"data": {"message_id": "gw-42"}}))
    config = gateway_config(
        sink,
        auth="bearer",
        token="tok-1",
        **{"from": "Herald"},
        message_id_field="data.message_id",
    )

    result = HttpGatewayProvider().send(sms(), config)

    assert result.kind == ResultKind.ACCEPTED
    assert result.provider_message_id == "gw-42"
    assert result.response_status == 202
    [request] = sink.requests
    assert (request.method, request.path) == ("POST", "/send")
    assert request.headers["authorization"] == "Bearer tok-1"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "to": "+447700900123",
        "text": "Your code is 1234",
        "from": "Herald",
    }


def test_gateway_form_body_with_basic_auth_and_renamed_fields(sink: HttpSink) -> None:
    config = gateway_config(
        sink,
        method="put",
        auth="basic",
        username="acme",
        password="pa ss",
        body_format="form",
        fields={"to": "msisdn", "text": "message"},
    )

    result = HttpGatewayProvider().send(sms(text="Hi & bye €"), config)

    assert result.kind == ResultKind.ACCEPTED
    assert result.provider_message_id == ""  # the sink's empty answer carries no id
    [request] = sink.requests
    assert request.method == "PUT"
    assert request.headers["authorization"] == basic("acme", "pa ss")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    # no sender configured, so no "from" parameter at all
    assert parse_qs(request.body.decode()) == {
        "msisdn": ["+447700900123"],
        "message": ["Hi & bye €"],
    }


def test_gateway_answer_that_is_not_json_still_means_accepted(sink: HttpSink) -> None:
    sink.reply(200, "[" * 60_000)  # nested past the parser's recursion limit

    result = HttpGatewayProvider().send(sms(), gateway_config(sink))

    assert result.kind == ResultKind.ACCEPTED
    assert result.provider_message_id == ""


def test_gateway_without_auth_sends_no_authorization_header(sink: HttpSink) -> None:
    HttpGatewayProvider().send(sms(), gateway_config(sink))

    [request] = sink.requests
    assert "authorization" not in request.headers


# --- HTTP gateway: result kinds -------------------------------------------------


def test_429_is_retryable_with_retry_after_seconds(sink: HttpSink) -> None:
    sink.reply(429, "slow down", headers={"Retry-After": "17"})

    result = HttpGatewayProvider().send(sms(), gateway_config(sink))

    assert result.kind == ResultKind.RETRYABLE
    assert result.retry_after_seconds == 17
    assert result.response_status == 429
    assert result.error == "HTTP 429: slow down"


def test_503_retry_after_as_http_date(sink: HttpSink) -> None:
    sink.reply(503, headers={"Retry-After": formatdate(time.time() + 120, usegmt=True)})

    result = HttpGatewayProvider().send(sms(), gateway_config(sink))

    assert result.kind == ResultKind.RETRYABLE
    assert result.retry_after_seconds is not None
    assert 110 <= result.retry_after_seconds <= 121


def test_500_is_retryable_without_retry_after(sink: HttpSink) -> None:
    sink.reply(500, "boom")

    result = HttpGatewayProvider().send(sms(), gateway_config(sink))

    assert result.kind == ResultKind.RETRYABLE
    assert result.retry_after_seconds is None
    assert result.response_excerpt == "boom"


def test_400_is_permanent_with_the_gateway_reason(sink: HttpSink) -> None:
    sink.reply(400, '{"error": "destination barred"}')

    result = HttpGatewayProvider().send(sms(), gateway_config(sink))

    assert result.kind == ResultKind.PERMANENT
    assert result.response_status == 400
    assert "destination barred" in result.error


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_config_errors(sink: HttpSink, status: int) -> None:
    sink.reply(status, "bad token")

    result = HttpGatewayProvider().send(sms(), gateway_config(sink, auth="bearer", token="x"))

    assert result.kind == ResultKind.CONFIG_ERROR
    assert f"HTTP {status}" in result.error


def test_redirect_is_not_followed_and_is_a_config_error(sink: HttpSink) -> None:
    sink.reply(302, headers={"Location": f"{sink.url}/elsewhere"})

    result = HttpGatewayProvider().send(sms(), gateway_config(sink))

    assert result.kind == ResultKind.CONFIG_ERROR
    assert "not followed" in result.error
    assert [request.path for request in sink.requests] == ["/send"]


def test_slow_gateway_times_out_as_retryable(sink: HttpSink) -> None:
    sink.reply(200, '{"id": "too-late"}', delay=5)

    started = time.monotonic()
    result = HttpGatewayProvider().send(sms(), gateway_config(sink, timeout=0.3))

    assert time.monotonic() - started < 2
    assert result.kind == ResultKind.RETRYABLE
    assert "timed out" in result.error
    assert result.provider_message_id == ""


def test_body_that_trickles_in_is_cut_off_as_retryable(sink: HttpSink) -> None:
    sink.reply(200, '{"id": "' + "x" * 100 + '"}', trickle=0.05)

    started = time.monotonic()
    result = HttpGatewayProvider().send(sms(), gateway_config(sink, timeout=0.3))

    assert time.monotonic() - started < 2  # each byte came within the timeout
    assert result.kind == ResultKind.RETRYABLE
    assert "ReadTimeout" in result.error


def test_refused_connection_is_retryable() -> None:
    with http_sink() as gone:
        url = gone.url  # the port is free again once the sink has stopped

    result = HttpGatewayProvider().send(sms(), {"url": url, "timeout": 1})

    assert result.kind == ResultKind.RETRYABLE
    assert "ConnectError" in result.error


def test_loopback_gateway_is_refused_by_the_ssrf_guard(sink: HttpSink, settings: Any) -> None:
    config = HttpGatewayProvider().validate_config(gateway_config(sink))
    settings.HERALD_ALLOW_LOOPBACK_URLS = False

    result = HttpGatewayProvider().send(sms(), config)

    assert result.kind == ResultKind.CONFIG_ERROR
    assert "loopback" in result.error
    assert sink.requests == []
    # validation checks the spelling only (no DNS): a loopback name is refused there
    with pytest.raises(ConfigInvalid) as raised:
        TwilioProvider().validate_config(
            twilio_config(sink, base_url=sink.url.replace("127.0.0.1", "localhost"))
        )
    assert "loopback" in raised.value.errors["base_url"]


def test_response_excerpt_is_capped(sink: HttpSink) -> None:
    sink.reply(500, "x" * 200_000)

    result = HttpGatewayProvider().send(sms(), gateway_config(sink))

    assert result.kind == ResultKind.RETRYABLE
    assert result.response_excerpt == "x" * RESPONSE_EXCERPT_MAX
    assert len(result.error) < 300


# --- E.164 and empty messages ---------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    [
        "07700900123",
        "+44 7700 900123",
        "+0447700900123",
        "+1234567890123456",
        "+",
        None,
        447700900123,
    ],
)
def test_invalid_phone_is_permanent_without_any_request(sink: HttpSink, phone: Any) -> None:
    for provider, config in (
        (HttpGatewayProvider(), gateway_config(sink)),
        (TwilioProvider(), twilio_config(sink)),
    ):
        result = provider.send(sms(phone=phone), config)

        assert result.kind == ResultKind.PERMANENT
        assert "E.164" in result.error or "no phone number" in result.error
    assert sink.requests == []


def test_message_without_text_is_permanent_without_any_request(sink: HttpSink) -> None:
    result = TwilioProvider().send(sms(text="  "), twilio_config(sink))

    assert result.kind == ResultKind.PERMANENT
    assert result.error == "the message has no text"
    assert sink.requests == []


# --- Twilio ---------------------------------------------------------------------


def test_twilio_request_shape_and_sid(sink: HttpSink) -> None:
    sink.reply(201, json.dumps({"sid": "SM" + "f" * 32, "status": "queued"}))

    result = TwilioProvider().send(sms(), twilio_config(sink, messaging_service_sid="MG123"))

    assert result.kind == ResultKind.ACCEPTED
    assert result.provider_message_id == "SM" + "f" * 32
    [request] = sink.requests
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request.headers["authorization"] == basic(ACCOUNT_SID, "s3cret")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.body.decode()) == {
        "To": ["+447700900123"],
        "Body": ["Your code is 1234"],
        "From": ["+15005550006"],
        "MessagingServiceSid": ["MG123"],
    }


def test_twilio_messaging_service_without_from(sink: HttpSink) -> None:
    config = twilio_config(sink, messaging_service_sid="MG123")
    del config["from"]

    TwilioProvider().send(sms(), config)

    assert "From" not in parse_qs(sink.requests[0].body.decode())


def test_twilio_error_json_becomes_the_error_text(sink: HttpSink) -> None:
    sink.reply(400, json.dumps(TWILIO_ERROR))

    result = TwilioProvider().send(sms(), twilio_config(sink))

    assert result.kind == ResultKind.PERMANENT
    assert result.error == (
        "HTTP 400: Twilio error 21211: The 'To' number +1555 is not a valid phone number. "
        "(https://www.twilio.com/docs/errors/21211)"
    )


def test_twilio_bad_credentials_are_a_config_error(sink: HttpSink) -> None:
    sink.reply(401, json.dumps({"code": 20003, "message": "Authenticate", "status": 401}))

    result = TwilioProvider().send(sms(), twilio_config(sink))

    assert result.kind == ResultKind.CONFIG_ERROR
    assert "Twilio error 20003: Authenticate" in result.error


def test_twilio_rate_limit_is_retryable(sink: HttpSink) -> None:
    sink.reply(
        429,
        json.dumps({"code": 20429, "message": "Too Many Requests"}),
        headers={"Retry-After": "3"},
    )

    result = TwilioProvider().send(sms(), twilio_config(sink))

    assert result.kind == ResultKind.RETRYABLE
    assert result.retry_after_seconds == 3


def test_twilio_timeout_is_retryable(sink: HttpSink) -> None:
    sink.reply(201, '{"sid": "SMlate"}', delay=5)

    result = TwilioProvider().send(sms(), twilio_config(sink, timeout=0.3))

    assert result.kind == ResultKind.RETRYABLE
    assert "timed out" in result.error


# --- config validation ----------------------------------------------------------


def public_names(host: str, port: int) -> list[str]:
    """What a resolver answers for every name in these tests: an outside address."""
    return ["93.184.216.34"]


def unresolvable(host: str, port: int) -> list[str]:
    raise ssrf.HostUnresolved(f"the host {host!r} does not resolve (no answer)")


def test_gateway_config_is_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssrf, "resolver", public_names)
    config = HttpGatewayProvider().validate_config({"url": " https://sms.example.com/send "})

    assert config == {
        "url": "https://sms.example.com/send",
        "method": "POST",
        "auth": "none",
        "token": "",
        "username": "",
        "password": "",
        "body_format": "json",
        "fields": {"to": "to", "text": "text", "from": "from"},
        "from": "",
        "message_id_field": "id",
        "timeout": 10.0,
    }


def test_gateway_config_errors_name_each_field() -> None:
    with pytest.raises(ConfigInvalid) as raised:
        HttpGatewayProvider().validate_config(
            {
                "url": "ftp://example.com",
                "method": "GET",
                "auth": "bearer",
                "body_format": "xml",
                "fields": {"to": "x", "text": "x", "cc": "y"},
                "from": "Far too long a sender",
                "timeout": 0,
                "colour": "blue",
            }
        )

    assert set(raised.value.errors) == {
        "url",
        "method",
        "token",
        "body_format",
        "fields",
        "from",
        "timeout",
        "colour",
    }
    assert "bearer" in raised.value.errors["token"]


def test_gateway_basic_auth_needs_username_and_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssrf, "resolver", public_names)
    with pytest.raises(ConfigInvalid) as raised:
        HttpGatewayProvider().validate_config({"url": "https://x.example", "auth": "basic"})

    assert set(raised.value.errors) == {"username", "password"}


def test_gateway_field_names_must_differ() -> None:
    with pytest.raises(ConfigInvalid) as raised:
        HttpGatewayProvider().validate_config(
            {"url": "https://x.example", "fields": {"to": "text"}}
        )

    assert "different" in raised.value.errors["fields"]


def test_twilio_config_defaults_and_errors() -> None:
    config = TwilioProvider().validate_config(
        {"account_sid": ACCOUNT_SID, "auth_token": "t", "from": "+15005550006"}
    )
    assert config["base_url"] == "https://api.twilio.com"
    assert config["timeout"] == 10.0

    with pytest.raises(ConfigInvalid) as raised:
        TwilioProvider().validate_config(
            {"account_sid": "AC/../x", "base_url": "https://x.example?q=1"}
        )
    assert set(raised.value.errors) == {"account_sid", "auth_token", "from", "base_url"}
    assert raised.value.errors["from"] == "required unless messaging_service_sid is set"


def test_a_gateway_url_is_resolved_when_saved(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = False
    monkeypatch.setattr(ssrf, "resolver", lambda host, port: ["10.0.0.5"])
    with pytest.raises(ConfigInvalid) as inward:
        HttpGatewayProvider().validate_config({"url": "https://sms.acme.test/send"})
    assert inward.value.errors["url"].startswith("the host 'sms.acme.test' resolves to 10.0.0.5")
    monkeypatch.setattr(ssrf, "resolver", unresolvable)
    with pytest.raises(ConfigInvalid) as nowhere:
        HttpGatewayProvider().validate_config({"url": "https://sms.acme.test/send"})
    assert "does not resolve" in nowhere.value.errors["url"]


def test_twilios_own_address_is_not_resolved_when_saved_but_another_base_url_is(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = False
    asked: list[str] = []

    def inward(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["10.0.0.5"]

    monkeypatch.setattr(ssrf, "resolver", inward)
    base = {"account_sid": ACCOUNT_SID, "auth_token": "t", "from": "+15005550006"}
    # Saving works offline: Twilio's own address is checked on every connection only.
    saved = TwilioProvider().validate_config(base)
    TwilioProvider().validate_config(saved)  # as an update passes the stored config back
    TwilioProvider().validate_config({**base, "base_url": "https://api.twilio.com/"})
    assert asked == []
    with pytest.raises(ConfigInvalid) as refused:
        TwilioProvider().validate_config({**base, "base_url": "https://twilio-proxy.acme.test"})
    assert "resolves to 10.0.0.5" in refused.value.errors["base_url"]
    assert asked == ["twilio-proxy.acme.test"]


def test_a_gateway_name_that_stops_resolving_is_retried_not_failed(
    sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolver outage is not the tenant's mistake: the message is retried."""
    monkeypatch.setattr(ssrf, "resolver", lambda host, port: ["127.0.0.1"])
    port = sink.url.rsplit(":", 1)[1]
    config = HttpGatewayProvider().validate_config({"url": f"http://sms.acme.test:{port}/send"})
    assert HttpGatewayProvider().send(sms(), config).kind is ResultKind.ACCEPTED

    monkeypatch.setattr(ssrf, "resolver", unresolvable)
    result = HttpGatewayProvider().send(sms(), config)
    assert result.kind is ResultKind.RETRYABLE
    assert result.error == "the host 'sms.acme.test' does not resolve (no answer)"
    assert len(sink.requests) == 1


def test_send_with_invalid_config_is_a_config_error_without_any_request(
    sink: HttpSink,
) -> None:
    result = TwilioProvider().send(sms(), twilio_config(sink, auth_token=""))

    assert result.kind == ResultKind.CONFIG_ERROR
    assert "auth_token" in result.error
    assert sink.requests == []


# --- Retry-After ------------------------------------------------------------------


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds("120", now=now) == 120
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now=now) == 30
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now=now) == 0
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds("-5", now=now) is None
    assert retry_after_seconds("\u00b2", now=now) is None  # str.isdigit() says yes
    assert retry_after_seconds(None, now=now) is None


# --- segments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SegmentInfo(encoding="GSM-7", characters=0, segments=0)),
        ("Hello world", SegmentInfo(encoding="GSM-7", characters=11, segments=1)),
        ("a" * 160, SegmentInfo(encoding="GSM-7", characters=160, segments=1)),
        ("a" * 161, SegmentInfo(encoding="GSM-7", characters=161, segments=2)),
        ("a" * 306, SegmentInfo(encoding="GSM-7", characters=306, segments=2)),
        ("a" * 307, SegmentInfo(encoding="GSM-7", characters=307, segments=3)),
        # Latin accents of the GSM basic set stay GSM-7
        ("Ça coûte 5 £ à Zürich", SegmentInfo(encoding="UCS-2", characters=21, segments=1)),
        ("Ça coute 5 £ à Zürich", SegmentInfo(encoding="GSM-7", characters=21, segments=1)),
        # extension characters take two septets each
        ("^{}\\[~]|€", SegmentInfo(encoding="GSM-7", characters=18, segments=1)),
        ("€" * 80, SegmentInfo(encoding="GSM-7", characters=160, segments=1)),
        ("€" * 81, SegmentInfo(encoding="GSM-7", characters=162, segments=2)),
        # an escape pair is not split: 306 septets, yet three segments
        ("a" * 152 + "€" + "a" * 152, SegmentInfo(encoding="GSM-7", characters=306, segments=3)),
        ("Привет", SegmentInfo(encoding="UCS-2", characters=6, segments=1)),
        ("ж" * 70, SegmentInfo(encoding="UCS-2", characters=70, segments=1)),
        ("ж" * 71, SegmentInfo(encoding="UCS-2", characters=71, segments=2)),
        ("ж" * 134, SegmentInfo(encoding="UCS-2", characters=134, segments=2)),
        ("ж" * 135, SegmentInfo(encoding="UCS-2", characters=135, segments=3)),
        # one non-GSM character switches the whole text to UCS-2
        ("a" * 159 + "ж", SegmentInfo(encoding="UCS-2", characters=160, segments=3)),
        # an emoji is a surrogate pair: two UTF-16 units, never split
        ("Hi 😀", SegmentInfo(encoding="UCS-2", characters=5, segments=1)),
        ("a" * 66 + "😀" + "a" * 66, SegmentInfo(encoding="UCS-2", characters=134, segments=3)),
    ],
)
def test_sms_segments(text: str, expected: SegmentInfo) -> None:
    assert sms_segments(text) == expected


def test_gsm7_tables_have_the_standard_sizes() -> None:
    from channels_delivery.providers.sms import GSM7_BASIC, GSM7_EXTENSION

    assert len(GSM7_BASIC) == 127  # 128 positions, less ESC
    assert len(GSM7_EXTENSION) == 10  # form feed and ^{}\[~]|€
