"""Secrets never leave in logs, error pages, the dashboard or Sentry events.

Every secret kind Herald holds is set up with a recognisable value (an
integration's token and password, a webhook endpoint's signing secret, an API
key's token, a tenant admin's password); then the paths that log and fail are
exercised with every logger at DEBUG, and each log record, response and Sentry
event is searched for those values.
"""

import json
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import pytest
import sentry_sdk
from django.conf import settings as django_settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client, RequestFactory
from django_tenants.utils import tenant_context

from channels_delivery.models import (
    DeliveryAttempt,
    Integration,
    Message,
    MessageStatus,
    WebhookEndpoint,
)
from channels_delivery.services.delivery import message_deliver
from channels_delivery.services.integrations import integration_create
from channels_delivery.services.webhooks import endpoint_create
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.channels_delivery.conftest import Published
from tests.channels_delivery.sinks import HttpSink, http_sink
from tests.conftest import TENANT_PASSWORD, CapturingTransport
from tests.factories import api_key_issue

pytestmark = pytest.mark.django_db

HOST = "alpha.localhost"


@dataclass(frozen=True, kw_only=True, repr=False)
class Secrets:
    """No repr: Sentry records a frame's variables by repr, and this one is in
    the failing function's closure."""

    sms_token: str
    sms_password: str
    webhook_secret: str
    api_token: str
    admin_password: str

    def values(self) -> list[str]:
        webhook_key = self.webhook_secret.removeprefix("whsec_")
        return [
            self.sms_token,
            self.sms_password,
            self.webhook_secret,
            webhook_key,
            self.api_token,
            self.admin_password,
        ]


def leaked(text: str, values: list[str]) -> list[str]:
    return [value for value in values if value in text]


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The sinks listen on 127.0.0.1, which the SSRF guard refuses in production."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@pytest.fixture
def every_logger_at_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as a handler would write it (message, arguments, traceback)."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = []
    for record in caplog.records:
        lines.append(formatter.format(record))
        lines.append(repr(record.args))
        lines.append(repr(getattr(record, "__dict__", {})))
    return "\n".join(lines)


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with http_sink() as running:
        yield running


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> Published:
    from channels_delivery.services import dispatch

    sent = Published()
    monkeypatch.setattr(dispatch, "publish_to_delivery", sent.record)
    return sent


@pytest.fixture
def held(tenant_a: Tenant, sink: HttpSink) -> Secrets:
    values = Secrets(
        sms_token=f"smstok{secrets.token_hex(12)}",
        sms_password=f"smspw{secrets.token_hex(12)}",
        webhook_secret="whsec_" + secrets.token_urlsafe(24).replace("-", "A").replace("_", "B"),
        api_token=api_key_issue(tenant=tenant_a).token,
        admin_password=TENANT_PASSWORD,
    )
    with tenant_context(tenant_a):
        integration_create(
            channel="sms",
            provider="http_gateway",
            name="gateway",
            config={
                "url": f"{sink.url}/send",
                "timeout": 2,
                "auth": "bearer",
                "token": values.sms_token,
                "password": values.sms_password,
            },
        )
        endpoint_create(url=f"{sink.url}/hooks", secret=values.webhook_secret)
    return values


def event_types_api() -> Any:
    """The API module, imported the way the URLconf imports it (directly, it is circular)."""
    import_module(django_settings.API_URLCONF)
    return import_module("rules_engine.api.event_types")


def a_message(channel: str, content: dict[str, Any]) -> Message:
    subscriber, _ = Subscriber.objects.get_or_create(
        external_id="ann", defaults={"phone": "+447700900123", "name": "Ann"}
    )
    event = Event.objects.create(event_type_key="order.shipped", payload={"order": "A-1"})
    return Message.objects.create(
        event=event, subscriber=subscriber, channel=channel, content=content
    )


# --- logs and stored attempts ------------------------------------------------------------


def test_failing_deliveries_log_no_secret(
    tenant_a: Tenant,
    held: Secrets,
    sink: HttpSink,
    delivered: Published,
    every_logger_at_debug: pytest.LogCaptureFixture,
) -> None:
    sink.reply(500, "gateway exploded", path="/send")
    sink.reply(401, "bad credentials", path="/send")
    sink.reply(500, "receiver exploded", path="/hooks")
    with tenant_context(tenant_a):
        sms = a_message("sms", {"text": "Order A-1 shipped"})
        hook = a_message("webhook", {"body": json.dumps({"type": "order.shipped"})})
        message_deliver(message_id=sms.id)
        message_deliver(message_id=hook.id)
        # The provider really was called with the secrets, and really failed.
        by_path = {request.path: request for request in sink.requests}
        assert by_path["/send"].headers["authorization"] == f"Bearer {held.sms_token}"
        assert by_path["/hooks"].headers["webhook-signature"].startswith("v1,")
        attempts = list(DeliveryAttempt.objects.filter(message__in=[sms, hook]))
        assert attempts
        assert all(attempt.error or attempt.response_status for attempt in attempts)
        assert Message.objects.get(pk=sms.pk).status != MessageStatus.SENT
        stored = json.dumps(
            [
                {field.name: str(getattr(attempt, field.attname)) for field in attempt._meta.fields}
                for attempt in attempts
            ]
            + [str(Integration.objects.get().config)]
        )
    assert "gateway exploded" in stored or "exploded" in logged_text(every_logger_at_debug)
    assert leaked(stored, held.values()) == []
    assert every_logger_at_debug.records, "nothing was logged: the check would be empty"
    assert leaked(logged_text(every_logger_at_debug), held.values()) == []


def test_bad_api_keys_are_not_logged(
    held: Secrets, every_logger_at_debug: pytest.LogCaptureFixture
) -> None:
    almost = held.api_token[:-4] + ("aaaa" if not held.api_token.endswith("aaaa") else "bbbb")
    client = Client()
    for header in (f"Bearer {almost}", f"Basic {held.api_token}", held.api_token):
        response = client.get("/api/v1/event-types", headers={"Authorization": header})
        assert response.status_code == 401
        assert leaked(response.content.decode(), [almost, *held.values()]) == []
    assert leaked(logged_text(every_logger_at_debug), [almost, *held.values()]) == []


def test_admin_login_logs_and_echoes_no_password(
    tenant_a: Tenant, held: Secrets, every_logger_at_debug: pytest.LogCaptureFixture
) -> None:
    client = Client(HTTP_HOST=HOST)
    wrong = f"wrong{secrets.token_hex(8)}"
    refused = client.post(
        "/admin/login/", {"username": "admin@alpha.example.com", "password": wrong}
    )
    assert refused.status_code == 200  # the form again, with an error
    assert wrong not in refused.content.decode()
    ok = client.post(
        "/admin/login/", {"username": "admin@alpha.example.com", "password": held.admin_password}
    )
    assert ok.status_code == 302
    assert leaked(logged_text(every_logger_at_debug), [wrong, held.admin_password]) == []


# --- the dashboard ------------------------------------------------------------------------


def test_dashboard_pages_show_no_secret(
    tenant_a: Tenant, held: Secrets, every_logger_at_debug: pytest.LogCaptureFixture
) -> None:
    client = Client(HTTP_HOST=HOST)
    assert (
        client.post(
            "/admin/login/",
            {"username": "admin@alpha.example.com", "password": held.admin_password},
        ).status_code
        == 302
    )
    with tenant_context(tenant_a):
        integration = Integration.objects.get()
        endpoint_pk = WebhookEndpoint.objects.get().pk
    pages = [
        "/admin/channels_delivery/integration/",
        f"/admin/channels_delivery/integration/{integration.pk}/change/",
        "/admin/channels_delivery/webhookendpoint/",
        f"/admin/channels_delivery/webhookendpoint/{endpoint_pk}/change/",
        "/admin/tenants/apikey/",
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert leaked(response.content.decode(), held.values()) == [], url
    # The integration's page says which secrets are stored, without their values.
    change = client.get(pages[1]).content.decode()
    assert 'name="secret_token"' in change
    assert leaked(logged_text(every_logger_at_debug), held.values()) == []


def test_an_unhandled_error_page_shows_no_secret(
    tenant_a: Tenant,
    held: Secrets,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    every_logger_at_debug: pytest.LogCaptureFixture,
) -> None:
    """A bug on the integration's page, with the decrypted config in a local
    variable: the 500 page and the log carry the traceback's place, not the values."""
    from channels_delivery.services.integrations import integration_config
    from dashboard import admin_delivery

    def broken(*, integration: Integration) -> list[str]:
        config = integration_config(integration=integration)
        assert config["token"]
        raise RuntimeError("the secrets form broke")

    settings.DEBUG = False
    monkeypatch.setattr(admin_delivery, "integration_secret_fields_set", broken)
    client = Client(HTTP_HOST=HOST, raise_request_exception=False)
    client.post(
        "/admin/login/", {"username": "admin@alpha.example.com", "password": held.admin_password}
    )
    with tenant_context(tenant_a):
        integration = Integration.objects.get()
    response = client.get(f"/admin/channels_delivery/integration/{integration.pk}/change/")
    assert response.status_code == 500
    assert "Traceback" not in response.content.decode()
    assert leaked(response.content.decode(), held.values()) == []
    text = logged_text(every_logger_at_debug)
    assert "the secrets form broke" in text
    assert leaked(text, held.values()) == []

    # The API's 500 is the same: a problem, no details.
    monkeypatch.setattr(
        event_types_api(), "event_type_list", lambda **kwargs: broken(integration=integration)
    )
    api = Client(raise_request_exception=False)
    failed = api.get("/api/v1/event-types", headers={"Authorization": f"Bearer {held.api_token}"})
    assert failed.status_code == 500
    assert json.loads(failed.content)["type"] == "urn:herald:problem:internal-error"
    assert leaked(failed.content.decode(), held.values()) == []
    assert leaked(logged_text(every_logger_at_debug), held.values()) == []


# --- Sentry -------------------------------------------------------------------------------


def wsgi_get(path: str, **headers: Any) -> str:
    """GET through Django's WSGI handler, as gunicorn calls it: Sentry reads the
    request's headers at that layer, which the test client skips."""
    environ = RequestFactory().get(path, **headers).environ
    answered: list[str] = []

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        answered.append(status)
        return lambda data: None

    # As the test client does: the rolled-back test transaction must survive the
    # start and end of the request, which would otherwise close the connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        response = WSGIHandler()(environ, start_response)
        b"".join(response)
        response.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return answered[0]


def frame_vars(event: dict[str, Any], function: str) -> dict[str, Any]:
    for exception in event.get("exception", {}).get("values", []):
        for frame in exception.get("stacktrace", {}).get("frames", []):
            if frame.get("function") == function:
                variables: dict[str, Any] = frame.get("vars", {})
                return variables
    raise AssertionError(f"no frame of {function} in the event")


def test_sentry_scrubs_request_headers_cookies_and_local_variables(
    tenant_a: Tenant,
    held: Secrets,
    sentry_events: CapturingTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = f"sess{secrets.token_hex(16)}"

    def failing_lookup(**kwargs: Any) -> Any:
        # Names Sentry's denylist knows, names it does not, and nested values.
        token = held.api_token
        auth_token = held.sms_token
        integration = {"url": "https://sms.example", "password": held.sms_password}
        signing = {"secrets": [held.webhook_secret]}
        header = f"Bearer {held.api_token}"
        used = len(token) + len(auth_token) + len(integration) + len(signing) + len(header)
        raise RuntimeError(f"lookup failed after reading {used} values")

    monkeypatch.setattr(event_types_api(), "event_type_list", failing_lookup)
    status = wsgi_get(
        "/api/v1/event-types",
        HTTP_AUTHORIZATION=f"Bearer {held.api_token}",
        HTTP_COOKIE=f"sessionid={session}; csrftoken={session}",
        HTTP_X_HERALD_NOTE="visible",
    )
    assert status.startswith("500")
    sentry_sdk.flush()

    assert sentry_events.events, "Sentry captured nothing: the check would be empty"
    event = sentry_events.events[-1]
    # The event is the real thing: the request and the frame's variables are there.
    assert event["request"]["headers"]["X-Herald-Note"] == "visible"
    assert "Authorization" in event["request"]["headers"]
    variables = frame_vars(event, "failing_lookup")
    assert set(variables) >= {"token", "auth_token", "integration", "signing", "header"}
    assert "sms.example" in json.dumps(variables["integration"])

    assert leaked(json.dumps(sentry_events.events), [session, *held.values()]) == []


def test_sentry_scrubs_secrets_in_messages_and_breadcrumbs(
    held: Secrets, sentry_events: CapturingTransport
) -> None:
    """A token quoted in a log line or exception message (a bug elsewhere) is
    masked by its shape: API keys and webhook secrets are recognisable."""
    logging.getLogger("herald.test").warning("retrying with %s", held.api_token)
    try:
        raise ValueError(f"endpoint refused {held.webhook_secret}")
    except ValueError:
        sentry_sdk.capture_exception()
    sentry_sdk.flush()
    assert sentry_events.events
    text = json.dumps(sentry_events.events)
    assert "endpoint refused" in text
    assert leaked(text, [held.api_token, held.webhook_secret]) == []
