"""What ESPs report about the email Herald sent through them: delivered, bounced,
opened, clicked, complained. ``/hooks/esp/<token>/``, one URL per integration.

The token is signed with ``django.core.signing`` and names the tenant's schema
and the integration, so the URL is answered on Herald's public address before
any tenant lookup, as the links in emails are (channels_delivery.views_tracking).
The ESP proves itself with HTTP basic auth (anymail's ``WEBHOOK_SECRET``): the
password is an HMAC of the token under SECRET_KEY, so there is nothing to store
and no form to lose it in, and a SECRET_KEY rotation keeps old URLs working as
long as the old key is in SECRET_KEY_FALLBACKS. ESPs that sign their webhooks
too (Mailgun, Postal, Resend) are checked by anymail's view as well.

The payload is never parsed here: anymail's ``<Esp>TrackingWebhookView`` checks
the request and turns it into ``AnymailTrackingEvent``s, and this module maps
those onto the message's status. It calls the view's validators and parser
itself instead of sending anymail's global ``tracking`` signal, so that the
integration and tenant an event belongs to are never a guess. An event moves
the message only if its status allows (``message_transition``); one that does
not (a second delivery report, an open after a click) is ignored, and so is
an id Herald does not know: the ESP gets 200 for those, because sending them
again would change nothing.
"""

import logging
import math
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from anymail.exceptions import AnymailWebhookValidationFailure  # type: ignore[import-untyped]
from anymail.signals import EventType  # type: ignore[import-untyped]
from anymail.utils import get_request_basic_auth  # type: ignore[import-untyped]
from anymail.webhooks.brevo import BrevoTrackingWebhookView  # type: ignore[import-untyped]
from anymail.webhooks.mailgun import MailgunTrackingWebhookView  # type: ignore[import-untyped]
from anymail.webhooks.mailjet import MailjetTrackingWebhookView  # type: ignore[import-untyped]
from anymail.webhooks.postal import PostalTrackingWebhookView  # type: ignore[import-untyped]
from anymail.webhooks.postmark import PostmarkTrackingWebhookView  # type: ignore[import-untyped]
from anymail.webhooks.resend import ResendTrackingWebhookView  # type: ignore[import-untyped]
from anymail.webhooks.sparkpost import SparkPostTrackingWebhookView  # type: ignore[import-untyped]
from django.conf import settings
from django.core import signing
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac
from django_tenants.utils import get_public_schema_name, schema_context

from channels_delivery.crypto import SecretsUnreadable
from channels_delivery.models import DeliveryAttempt, Integration, Message, MessageStatus
from channels_delivery.providers.esp import AnymailProvider
from channels_delivery.services.delivery import (
    ERROR_MAX,
    TransitionRefused,
    message_transition,
)
from channels_delivery.services.integrations import integration_config
from tenants.db import tenant_connection
from tenants.models import Tenant

logger = logging.getLogger(__name__)

ESP_TRACKING_PREFIX = "/hooks/esp/"
TOKEN_SALT = "herald.esp-tracking"  # noqa: S105 (a salt, not a password)
BASIC_AUTH_SALT = "herald.esp-tracking.basic-auth"
BASIC_AUTH_USERNAME = "herald"
PROVIDER_KEY = AnymailProvider.key
PROVIDER_MESSAGE_ID_MAX = 200  # what AnymailProvider keeps of the ESP's id
NO_STORE = {"Cache-Control": "no-store"}

# Every ESP Herald sends through (providers.esp.ESPS), with anymail's view for its
# tracking webhook.
TRACKING_VIEWS: Mapping[str, type] = {
    "postmark": PostmarkTrackingWebhookView,
    "mailgun": MailgunTrackingWebhookView,
    "mailjet": MailjetTrackingWebhookView,
    "resend": ResendTrackingWebhookView,
    "brevo": BrevoTrackingWebhookView,
    "sparkpost": SparkPostTrackingWebhookView,
    "postal": PostalTrackingWebhookView,
}

# anymail's normalised event types, and the status each moves a message to.
# deferred and queued say the ESP is still trying: nothing to record. Every
# kind of failure to deliver is a bounce for the tenant's timeline.
EVENT_STATUS: Mapping[str, str] = {
    EventType.DELIVERED: MessageStatus.DELIVERED,
    EventType.BOUNCED: MessageStatus.BOUNCED,
    EventType.REJECTED: MessageStatus.BOUNCED,
    EventType.FAILED: MessageStatus.BOUNCED,
    EventType.OPENED: MessageStatus.OPENED,
    EventType.CLICKED: MessageStatus.CLICKED,
}
# Events that change no status but that the tenant should see on the message: the
# ESP will suppress this address from now on.
EVENT_NOTES: Mapping[str, str] = {
    EventType.COMPLAINED: "the recipient reported the message as spam",
    EventType.UNSUBSCRIBED: "the recipient unsubscribed at the ESP",
}


class TrackingTokenInvalid(ValueError):
    """A hook token that Herald did not sign, that was altered, or is malformed."""


class TrackingUnavailable(ValueError):
    """An integration whose ESP reports can not be received: not an ESP
    integration, or an ESP whose webhook can not be checked with what it holds."""


@dataclass(frozen=True, kw_only=True)
class TrackingToken:
    schema: str
    integration_id: int


@dataclass(frozen=True, kw_only=True)
class TrackingWebhook:
    """What a tenant enters at its ESP: the URL and the basic-auth credentials."""

    esp: str
    url: str
    username: str
    password: str
    url_with_credentials: str


@dataclass(frozen=True, kw_only=True)
class TrackingReport:
    """What one webhook call did: events received, and messages moved or noted."""

    received: int
    applied: int


# --- tokens and credentials ----------------------------------------------------------


def esp_tracking_token_make(*, schema: str, integration_id: int) -> str:
    """The token of an integration's hook URL; the same for the same integration
    (no timestamp), so the URL a tenant entered at its ESP stays valid."""
    return signing.dumps({"s": schema, "i": integration_id}, salt=TOKEN_SALT)


def esp_tracking_token_read(token: str) -> TrackingToken:
    """Raises TrackingTokenInvalid."""
    try:
        value = signing.loads(token, salt=TOKEN_SALT)
    except signing.BadSignature:
        raise TrackingTokenInvalid("the hook's token is not Herald's or was altered") from None
    except ValueError:
        raise TrackingTokenInvalid("the hook's token is malformed") from None
    if not isinstance(value, dict):
        raise TrackingTokenInvalid("the hook's token is malformed")
    schema, integration_id = value.get("s"), value.get("i")
    if not isinstance(schema, str) or not schema:
        raise TrackingTokenInvalid("the hook's token names no tenant")
    if not isinstance(integration_id, int) or isinstance(integration_id, bool):
        raise TrackingTokenInvalid("the hook's token names no integration")
    return TrackingToken(schema=schema, integration_id=integration_id)


def _password(token: str, *, key: str) -> str:
    return salted_hmac(BASIC_AUTH_SALT, token, secret=key, algorithm="sha256").hexdigest()


def esp_tracking_basic_auth(*, token: str) -> list[str]:
    """The ``user:password`` strings that open the hook of ``token``: the current
    one first, then those of the keys in SECRET_KEY_FALLBACKS."""
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
    return [f"{BASIC_AUTH_USERNAME}:{_password(token, key=key)}" for key in keys]


def _public_url(path: str) -> str:
    return settings.HERALD_PUBLIC_URL.rstrip("/") + path


def _with_credentials(url: str, *, username: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def _esp_of(integration: Integration) -> str:
    """The integration's ESP key; raises TrackingUnavailable."""
    if integration.provider != PROVIDER_KEY:
        raise TrackingUnavailable(
            f"integration {integration.pk} sends through {integration.provider!r}; only "
            f"{PROVIDER_KEY!r} integrations (an ESP's API) take ESP tracking webhooks"
        )
    esp = integration.config.get("esp")
    if not isinstance(esp, str) or esp not in TRACKING_VIEWS:
        raise TrackingUnavailable(
            f"integration {integration.pk} uses ESP {esp!r}, whose tracking webhook Herald "
            "can not receive"
        )
    if esp == "postal" and not integration.config.get("webhook_key"):
        # Postal signs with its server's key; without it nothing can be checked.
        raise TrackingUnavailable(
            f"integration {integration.pk} (Postal) has no webhook_key, the public key "
            "Postal signs its webhooks with"
        )
    return esp


def esp_tracking_url(*, integration: Integration, schema: str | None = None) -> str | None:
    """The hook URL of ``integration`` (in ``schema``, the current one by default),
    or None when it takes no ESP tracking webhooks. Cheap: reads no secret."""
    try:
        _esp_of(integration)
    except TrackingUnavailable:
        return None
    token = esp_tracking_token_make(
        schema=schema or tenant_connection.schema_name, integration_id=integration.pk
    )
    return _public_url(f"{ESP_TRACKING_PREFIX}{token}/")


def esp_tracking_webhook(*, integration: Integration, schema: str | None = None) -> TrackingWebhook:
    """The URL and credentials to enter at the ESP. Raises TrackingUnavailable."""
    esp = _esp_of(integration)
    token = esp_tracking_token_make(
        schema=schema or tenant_connection.schema_name, integration_id=integration.pk
    )
    url = _public_url(f"{ESP_TRACKING_PREFIX}{token}/")
    username, _, password = esp_tracking_basic_auth(token=token)[0].partition(":")
    return TrackingWebhook(
        esp=esp,
        url=url,
        username=username,
        password=password,
        url_with_credentials=_with_credentials(url, username=username, password=password),
    )


def _view_for(*, integration: Integration, esp: str, token: str) -> Any:
    """anymail's view for ``esp``, configured from the integration alone: every
    option anymail would otherwise read from settings is passed, so one tenant's
    webhook is never checked with another's (or the platform's) secret.
    Raises SecretsUnreadable, and ValueError for an unusable stored key."""
    options: dict[str, Any] = {"webhook_secret": esp_tracking_basic_auth(token=token)}
    if esp == "mailgun":
        config = integration_config(integration=integration)
        # Mailgun signs with the account's webhook signing key; anymail falls back
        # to the API key, as older Mailgun accounts sign with it.
        signing_key = config.get("webhook_signing_key") or config.get("api_key") or ""
        options.update(webhook_signing_key=str(signing_key), api_key=None)
    elif esp == "resend":
        config = integration_config(integration=integration)
        options["signing_secret"] = config.get("webhook_signing_secret") or None
    elif esp == "postal":
        options["webhook_key"] = str(integration.config.get("webhook_key", ""))
    elif esp == "sparkpost":
        # "initial_open" and "open" both count: a second open is ignored anyway.
        options["track_initial_open_as_opened"] = True
    try:
        return TRACKING_VIEWS[esp](**options)
    except (UnicodeError, TypeError) as error:
        raise ValueError(f"the {esp} webhook key can not be used: {error}") from None


# --- applying events -------------------------------------------------------------------


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _failure_reason(event: Any, *, esp_name: str) -> str:
    kind = {
        EventType.REJECTED: "rejected the message",
        EventType.FAILED: "could not send the message",
    }.get(event.event_type, "reported a bounce")
    detail = "; ".join(
        part
        for part in dict.fromkeys(
            (
                _text(getattr(event, "description", None)),
                _text(getattr(event, "mta_response", None)),
            )
        )
        if part
    )
    reason = _text(getattr(event, "reject_reason", None))
    text = f"{esp_name} {kind}" + (f" ({reason})" if reason else "")
    return (f"{text}: {detail}" if detail else text)[:ERROR_MAX]


def _message_id_of(event: Any) -> str:
    value = getattr(event, "message_id", None)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value).strip()[:PROVIDER_MESSAGE_ID_MAX]


def _in_time_order(events: Iterable[Any]) -> list[Any]:
    """ESPs that batch (SparkPost, Mailjet) do not promise order: apply the
    delivery before the open it came with. Undated events go last."""

    def when(event: Any) -> float:
        stamp = getattr(event, "timestamp", None)
        return stamp.timestamp() if isinstance(stamp, datetime) else math.inf

    return sorted(events, key=when)


def esp_tracking_events_apply(
    *, integration: Integration, events: Sequence[Any], esp_name: str
) -> TrackingReport:
    """Apply anymail tracking events to the messages sent through ``integration``,
    in the current (tenant's) schema. Only attempts made through this integration
    are looked at, so one integration's credentials never touch another's
    messages. Idempotent: a status the message can not move to is skipped."""
    wanted = [
        (event, _message_id_of(event))
        for event in _in_time_order(events)
        if event.event_type in EVENT_STATUS or event.event_type in EVENT_NOTES
    ]
    ids = {provider_id for _, provider_id in wanted if provider_id}
    if not ids:
        return TrackingReport(received=len(events), applied=0)
    messages: dict[str, set[uuid.UUID]] = {}
    attempts = DeliveryAttempt.objects.filter(
        integration=integration, provider_message_id__in=ids
    ).values_list("provider_message_id", "message_id")
    for provider_id, message_id in attempts:
        messages.setdefault(provider_id, set()).add(message_id)
    applied = 0
    for event, provider_id in wanted:
        for message_id in sorted(messages.get(provider_id, ())):
            if _event_apply(event, message_id=message_id, esp_name=esp_name):
                applied += 1
    return TrackingReport(received=len(events), applied=applied)


def _event_apply(event: Any, *, message_id: uuid.UUID, esp_name: str) -> bool:
    note = EVENT_NOTES.get(event.event_type)
    if note is not None:
        error = f"{esp_name}: {note}; it will not send to this address again"
        updated = Message.objects.filter(pk=message_id).update(
            error=error[:ERROR_MAX], updated_at=timezone.now()
        )
        return updated > 0
    to = EVENT_STATUS[event.event_type]
    fields: dict[str, Any] = {}
    if to == MessageStatus.BOUNCED:
        fields["error"] = _failure_reason(event, esp_name=esp_name)
    try:
        message_transition(message_id=message_id, to=to, **fields)
    except (TransitionRefused, Message.DoesNotExist):
        return False
    return True


# --- the hook ------------------------------------------------------------------------------


def is_esp_tracking_path(path: str) -> bool:
    return path.startswith(ESP_TRACKING_PREFIX)


def _not_found() -> HttpResponse:
    return HttpResponse(
        "No such ESP tracking webhook.", status=404, content_type="text/plain", headers=NO_STORE
    )


def _refused(status: int, text: str, **headers: str) -> HttpResponse:
    return HttpResponse(text, status=status, content_type="text/plain", headers=headers)


def _unavailable(what: str) -> HttpResponse:
    logger.exception("database unavailable while %s", what)
    return _refused(503, "Service unavailable", **{"Retry-After": "5"})


def _token_of(path: str) -> str:
    token = path.removeprefix(ESP_TRACKING_PREFIX)
    token = token.removesuffix("/")
    return "" if "/" in token else token


def _active_tenant(schema: str) -> bool:
    """A token outlives a deleted or suspended tenant."""
    if schema == get_public_schema_name():
        return False
    return Tenant.objects.filter(schema_name=schema, is_active=True).exists()


def _basic_auth_ok(request: HttpRequest, *, token: str) -> bool:
    given = get_request_basic_auth(request)
    if not isinstance(given, str):
        return False
    return any(
        constant_time_compare(given, allowed) for allowed in esp_tracking_basic_auth(token=token)
    )


def esp_tracking_dispatch(request: HttpRequest) -> HttpResponse:
    """Answer a request under ESP_TRACKING_PREFIX: 404 unless the token names an
    active tenant's ESP integration whose webhook Herald can check; 401 without
    the basic-auth credentials, 403 when the ESP's own signature is wrong, 400 for
    a payload anymail can not read, 200 once its events are applied."""
    token = _token_of(request.path_info)
    if not token:
        return _not_found()
    try:
        read = esp_tracking_token_read(token)
    except TrackingTokenInvalid:
        return _not_found()
    try:
        if not _active_tenant(read.schema):
            return _not_found()
        with schema_context(read.schema):
            return _answer(request, token=token, read=read)
    except DatabaseError:
        return _unavailable("receiving an ESP tracking webhook")


def _answer(request: HttpRequest, *, token: str, read: TrackingToken) -> HttpResponse:
    integration = Integration.objects.filter(pk=read.integration_id).first()
    if integration is None:
        return _not_found()
    try:
        esp = _esp_of(integration)
    except TrackingUnavailable:
        return _not_found()
    if request.method in ("HEAD", "OPTIONS"):
        # Some ESPs check the URL answers before they save it; anymail answers these
        # without credentials too.
        return HttpResponse(headers={"Allow": "POST, HEAD, OPTIONS", **NO_STORE})
    if request.method != "POST":
        return _refused(405, "Method not allowed", Allow="POST, HEAD, OPTIONS")
    if not _basic_auth_ok(request, token=token):
        return _refused(
            401,
            "Missing or wrong basic-auth credentials for this webhook.",
            **{"WWW-Authenticate": 'Basic realm="herald-esp-tracking", charset="UTF-8"'},
        )
    try:
        view = _view_for(integration=integration, esp=esp, token=token)
    except (SecretsUnreadable, ValueError):
        logger.exception(
            "ESP tracking webhook of integration %s can not be checked", integration.pk
        )
        return _refused(503, "This webhook can not be checked now.", **{"Retry-After": "60"})
    view.setup(request)
    events = _checked_events(view, request)
    if isinstance(events, HttpResponse):
        return events
    report = esp_tracking_events_apply(
        integration=integration, events=events, esp_name=view.esp_name
    )
    return JsonResponse({"received": report.received, "applied": report.applied}, headers=NO_STORE)


def _checked_events(view: Any, request: HttpRequest) -> list[Any] | HttpResponse:
    """anymail's checks and parse of the request: its events, or the answer that
    refuses it. Nothing a sender puts in a payload is a 500."""
    steps: tuple[tuple[str, Callable[[], Any]], ...] = (
        ("validate", lambda: view.run_validators(request)),
        ("parse", lambda: view.parse_events(request)),
    )
    result: Any = None
    for step, run in steps:
        try:
            result = run()
        except AnymailWebhookValidationFailure as refused:
            return _refused(403, f"{refused}.")
        except RequestDataTooBig:
            return _refused(413, "The payload is too large.")
        except Exception as error:  # a payload anymail could not read
            logger.info("unreadable ESP tracking payload (%s): %r", step, error)
            return _refused(400, f"The payload could not be read ({type(error).__name__}).")
    if not isinstance(result, list):
        return _refused(400, "The payload holds no events.")
    return result
