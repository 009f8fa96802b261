"""Email through an ESP's HTTP API with django-anymail: key ``anymail``.

The tenant picks an ESP from a fixed list of anymail backends that need only
an API key (Mailjet: a key and a secret) and optionally a base URL, and Herald
builds one backend per send from the integration's config, never from
settings, so tenants never share credentials. The email itself is the one the
SMTP provider sends (``email_message_build``): multipart text and HTML, the
rendered headers (List-Unsubscribe, List-Unsubscribe-Post), reserved headers
refused. Outcomes map onto result kinds: the ESP's message id when accepted;
a refused or invalid recipient, or any other 4xx, is permanent; 5xx, 429
(honouring Retry-After), timeouts and connection failures are retryable;
401/403 and a redirect are the integration's fault (config_error).

``api_url`` overrides the ESP's base URL (an EU region, a self-hosted Postal,
a local sink in tests). It passes ``ssrf.url_check`` when saved and again just
before every send, and it must be https unless the development setting
HERALD_ALLOW_LOOPBACK_URLS is on (the API key travels in a header). anymail
talks through ``requests``, so Herald can not pin the connection to the
address it checked, as ``ssrf.safe_client`` does: ``requests`` resolves the
name again, and a DNS answer that changes in between (rebinding) is not
caught. The session is made not to follow redirects, nor to read proxies or
netrc from the environment; ``timeout`` bounds the connect and each read, not
the whole exchange, and the answer is read whole (it is the tenant's chosen
ESP's, and only an excerpt is kept).
"""

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import requests
from anymail.exceptions import (  # type: ignore[import-untyped]
    AnymailError,
    AnymailRecipientsRefused,
    AnymailRequestsAPIError,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import BadHeaderError, EmailMultiAlternatives, get_connection

from channels_delivery import ssrf
from channels_delivery.catalogue import Channel
from channels_delivery.providers.base import (
    RESPONSE_EXCERPT_MAX,
    ConfigInvalid,
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_register,
)
from channels_delivery.providers.email import email_address_checked, email_message_build
from channels_delivery.providers.sms import retry_after_seconds


@dataclass(frozen=True, kw_only=True)
class Esp:
    """One anymail backend and the names its credentials go by.

    SendGrid is left out on purpose: anymail 15 dropped official support for it
    (anymail issue 432) and warns on every backend it builds.
    """

    name: str  # as the ESP spells itself, for error texts
    backend: str  # dotted path for get_connection
    key_kwarg: str  # the backend's keyword for the API key
    default_url: str  # "" when there is no hosted service: the tenant gives api_url
    secret_kwarg: str = ""  # the backend's keyword for a second secret, when it has one


ESPS: dict[str, Esp] = {
    "postmark": Esp(
        name="Postmark",
        backend="anymail.backends.postmark.EmailBackend",
        key_kwarg="server_token",
        default_url="https://api.postmarkapp.com/",
    ),
    "mailgun": Esp(
        name="Mailgun",
        backend="anymail.backends.mailgun.EmailBackend",
        key_kwarg="api_key",
        default_url="https://api.mailgun.net/v3/",  # EU: https://api.eu.mailgun.net/v3/
    ),
    "mailjet": Esp(
        name="Mailjet",
        backend="anymail.backends.mailjet.EmailBackend",
        key_kwarg="api_key",
        default_url="https://api.mailjet.com/v3.1/",
        secret_kwarg="secret_key",  # noqa: S106 (a keyword's name, not a password)
    ),
    "resend": Esp(
        name="Resend",
        backend="anymail.backends.resend.EmailBackend",
        key_kwarg="api_key",
        default_url="https://api.resend.com/",
    ),
    "brevo": Esp(
        name="Brevo",
        backend="anymail.backends.brevo.EmailBackend",
        key_kwarg="api_key",
        default_url="https://api.brevo.com/v3/",
    ),
    "sparkpost": Esp(
        name="SparkPost",
        backend="anymail.backends.sparkpost.EmailBackend",
        key_kwarg="api_key",
        default_url="https://api.sparkpost.com/api/v1/",  # EU: https://api.eu.sparkpost.com/api/v1/
    ),
    "postal": Esp(
        name="Postal",
        backend="anymail.backends.postal.EmailBackend",
        key_kwarg="api_key",
        default_url="",  # self-hosted only
    ),
}

DEFAULT_TIMEOUT_SECONDS = 10.0
SECRET_MAX_LENGTH = 512
DETAIL_MAX = 300
# Postal answers 200 with {"status": "error", "data": {"code": ...}}; these codes
# mean the server key is wrong, not the message.
POSTAL_CREDENTIAL_CODES = frozenset({"InvalidServerAPIKey", "AccessDenied", "ServerSuspended"})
RECIPIENT_FAILED = frozenset({"failed"})  # anymail raises for "rejected" and "invalid" itself


def _loopback_allowed() -> bool:
    return bool(getattr(settings, "HERALD_ALLOW_LOOPBACK_URLS", False))


def _secret_checked(value: object, *, field: str, errors: dict[str, str]) -> str:
    """A credential; the error never repeats the value."""
    if value in (None, ""):
        errors[field] = "required"
        return ""
    if not isinstance(value, str):
        errors[field] = "must be a string"
        return ""
    value = value.strip()
    if not value or len(value) > SECRET_MAX_LENGTH:
        errors[field] = f"must be 1 to {SECRET_MAX_LENGTH} characters"
        return ""
    if any(char.isspace() or not char.isprintable() for char in value):
        errors[field] = "must not contain spaces, line breaks or control characters"
        return ""
    return value


def _api_url_checked(value: object, *, errors: dict[str, str], resolve: bool) -> str:
    """The base URL, ending in "/" so anymail joins its endpoint below it. With
    ``resolve`` (when the config is saved) the SSRF check resolves the name;
    a send resolves it again itself (AnymailProvider._send)."""
    if not isinstance(value, str) or not value.strip():
        errors["api_url"] = "must be an https URL"
        return ""
    url = value.strip()
    try:
        if resolve:
            ssrf.url_check(url)
        else:
            ssrf.url_parse(url)
    except ssrf.UnsafeUrl as refused:
        errors["api_url"] = refused.reason
        return ""
    if not url.lower().startswith("https://") and not _loopback_allowed():
        errors["api_url"] = "must be https: the API key is sent with every request"
        return ""
    if "?" in url or "#" in url:
        errors["api_url"] = "must not have a query string or a fragment"
        return ""
    return url if url.endswith("/") else f"{url}/"


def _timeout_checked(value: object, *, errors: dict[str, str]) -> float:
    if value is None:
        return DEFAULT_TIMEOUT_SECONDS
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= ssrf.MAX_TIMEOUT_SECONDS
    ):
        errors["timeout"] = f"seconds, more than 0 and at most {ssrf.MAX_TIMEOUT_SECONDS:g}"
        return DEFAULT_TIMEOUT_SECONDS
    return float(value)


def _scrubbed(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of the integration's secrets (an ESP may echo a key back)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[secret]")
    return text


def _json(response: requests.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):
        return None


def _first_text(*candidates: object) -> str:
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return ""


def _detail(response: requests.Response) -> str:
    """The ESP's own reason, from the error shapes the listed ESPs answer with."""
    parsed = _json(response)
    if isinstance(parsed, dict):
        errors = parsed.get("errors")
        first_error = errors[0] if isinstance(errors, list) and errors else {}
        data = parsed.get("data")
        detail = _first_text(
            parsed.get("Message"),  # Postmark
            parsed.get("message"),  # Mailgun, Resend, Brevo
            parsed.get("ErrorMessage"),  # Mailjet
            first_error.get("message") if isinstance(first_error, dict) else None,  # SendGrid
            data.get("message") if isinstance(data, dict) else None,  # Postal
        )
        if detail:
            return detail[:DETAIL_MAX]
    lines = response.content[:DETAIL_MAX].decode("utf-8", errors="replace").splitlines()
    return lines[0].strip() if lines else ""


def _excerpt(response: requests.Response) -> str:
    return response.content[:RESPONSE_EXCERPT_MAX].decode("utf-8", errors="replace")


def _answered(response: requests.Response, *, esp: Esp) -> ProviderResult:
    """What an answer anymail took for a failure means (a 2xx too: see below)."""
    status = response.status_code
    common: dict[str, Any] = {"response_status": status, "response_excerpt": _excerpt(response)}
    detail = _detail(response)
    error = f"{esp.name} answered HTTP {status}" + (f": {detail}" if detail else "")
    if status == 429 or status >= 500:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        return ProviderResult(
            kind=ResultKind.RETRYABLE, error=error, retry_after_seconds=retry_after, **common
        )
    if status in (401, 403):
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR,
            error=f"{error} (the ESP refused the API key)",
            **common,
        )
    if 300 <= status < 400:
        location = response.headers.get("location", "")[:200]
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR,
            error=f"{error}: redirect to {location!r} not followed; fix the api_url",
            **common,
        )
    if 200 <= status < 300:
        return _answered_ok_but_failed(response, esp=esp, error=error, common=common)
    return ProviderResult(kind=ResultKind.PERMANENT, error=error, **common)


def _answered_ok_but_failed(
    response: requests.Response, *, esp: Esp, error: str, common: dict[str, Any]
) -> ProviderResult:
    """A 2xx anymail could not take as a success.

    An ESP that reports an error in a 2xx body (Postal does, Mailjet and Postmark
    can) did not send the message. An answer that can not be read at all may
    still mean it was sent: it is taken as accepted, without an id, because
    sending it again could deliver it twice.
    """
    parsed = _json(response)
    if isinstance(parsed, dict):
        status = parsed.get("status")
        data = parsed.get("data")
        code = data.get("code") if isinstance(data, dict) else None
        if status in ("error", "parameter-error"):
            credentials_refused = isinstance(code, str) and code in POSTAL_CREDENTIAL_CODES
            kind = ResultKind.CONFIG_ERROR if credentials_refused else ResultKind.PERMANENT
            return ProviderResult(kind=kind, error=f"{error} ({code or status})", **common)
        if parsed.get("ErrorCode") not in (None, 0):
            return ProviderResult(kind=ResultKind.PERMANENT, error=error, **common)
    return ProviderResult(
        kind=ResultKind.ACCEPTED,
        error=f"{esp.name} answered HTTP {response.status_code} with a body Herald could not "
        "read; taken as sent, so that it is not sent twice",
        **common,
    )


def _result_for_error(error: Exception, *, esp: Esp, url: str, timeout: float) -> ProviderResult:
    """What a failed send means for this message and this integration."""
    if isinstance(error, AnymailRecipientsRefused):
        message = error.email_message
        recipients = getattr(getattr(message, "anymail_status", None), "recipients", {}) or {}
        refused = ", ".join(
            f"{address} ({status.status})" for address, status in sorted(recipients.items())
        )
        text = f"{esp.name} refused the recipient: {refused or 'every recipient'}"
        response = error.response
        if not isinstance(response, requests.Response):
            return ProviderResult(kind=ResultKind.PERMANENT, error=text)
        detail = _detail(response)
        return ProviderResult(
            kind=ResultKind.PERMANENT,
            response_status=response.status_code,
            response_excerpt=_excerpt(response),
            error=f"{text}: {detail}" if detail else text,
        )
    if isinstance(error, requests.TooManyRedirects):
        # The session follows none: the 3xx itself is on the cause.
        cause = error.__cause__
        redirected = getattr(cause, "response", None)
        if isinstance(redirected, requests.Response):
            return _answered(redirected, esp=esp)
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR, error=f"{esp.name} redirected; fix the api_url"
        )
    if isinstance(error, requests.Timeout):
        return ProviderResult(
            kind=ResultKind.RETRYABLE,
            error=f"{esp.name} ({url}) did not answer within {timeout:g} s",
        )
    if isinstance(error, requests.ConnectionError):
        cause = error.__cause__
        return ProviderResult(
            kind=ResultKind.RETRYABLE,
            error=f"could not connect to {esp.name} ({url}): {type(cause or error).__name__}",
        )
    if isinstance(error, AnymailRequestsAPIError) and error.response is not None:
        return _answered(error.response, esp=esp)
    if isinstance(error, requests.RequestException):
        return ProviderResult(
            kind=ResultKind.RETRYABLE,
            error=f"talking to {esp.name} ({url}) failed: "
            f"{type(error.__cause__ or error).__name__}",
        )
    if isinstance(error, ImproperlyConfigured):  # AnymailConfigurationError
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR, error=f"the {esp.name} backend is misconfigured: {error}"
        )
    # AnymailInvalidAddress, AnymailUnsupportedFeature, AnymailSerializationError and
    # kin: this message can not be sent through this ESP, however often it is tried.
    first_line = (str(error).splitlines() or [type(error).__name__])[0]
    return ProviderResult(
        kind=ResultKind.PERMANENT, error=f"{esp.name} can not send this message: {first_line}"
    )


def _accepted(email: EmailMultiAlternatives, *, esp: Esp) -> ProviderResult:
    """The ESP took the request; its per-recipient status says what became of it."""
    status = getattr(email, "anymail_status", None)
    response = getattr(status, "esp_response", None)
    common: dict[str, Any] = {}
    if isinstance(response, requests.Response):
        common = {"response_status": response.status_code, "response_excerpt": _excerpt(response)}
    recipients = getattr(status, "recipients", {}) or {}
    failed = sorted(
        address for address, recipient in recipients.items() if recipient.status in RECIPIENT_FAILED
    )
    if recipients and len(failed) == len(recipients):
        return ProviderResult(
            kind=ResultKind.PERMANENT,
            error=f"{esp.name} reported the message failed for {', '.join(failed)}",
            **common,
        )
    message_id = getattr(status, "message_id", None)
    if not isinstance(message_id, str | int) or isinstance(message_id, bool):
        # None, or a set of ids when recipients got different ones (never for one recipient).
        message_id = ""
    return ProviderResult(
        kind=ResultKind.ACCEPTED, provider_message_id=str(message_id)[:200], **common
    )


@provider_register
class AnymailProvider:
    """An ESP's HTTP API through django-anymail.

    Config: esp (one of ESPS), api_key (secret), secret_key (secret, Mailjet
    only), from_email, reply_to, api_url (the ESP's base URL; required for
    Postal), timeout in seconds.
    """

    channel: ClassVar[str] = Channel.EMAIL
    key: ClassVar[str] = "anymail"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"api_key", "secret_key"})
    fields: ClassVar[frozenset[str]] = frozenset(
        {"esp", "api_key", "secret_key", "from_email", "reply_to", "api_url", "timeout"}
    )
    config_fields: ClassVar[frozenset[str]] = fields

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return self._validated(config, resolve=True)

    def _validated(self, config: Mapping[str, Any], *, resolve: bool) -> dict[str, Any]:
        errors: dict[str, str] = {
            unknown: "unknown field" for unknown in sorted(set(config) - self.fields)
        }
        name = config.get("esp")
        esp = ESPS.get(name) if isinstance(name, str) else None
        if esp is None:
            errors["esp"] = f"one of {', '.join(sorted(ESPS))}"
        api_key = _secret_checked(config.get("api_key"), field="api_key", errors=errors)
        secret_key = ""  # dropped for an ESP that takes none (one switched away from Mailjet)
        if esp is not None and esp.secret_kwarg:
            secret_key = _secret_checked(
                config.get("secret_key"), field="secret_key", errors=errors
            )
        from_email = email_address_checked(
            config.get("from_email"), field="from_email", errors=errors
        )
        reply_to = ""
        if config.get("reply_to"):
            reply_to = email_address_checked(config["reply_to"], field="reply_to", errors=errors)
        api_url = ""
        if config.get("api_url"):
            api_url = _api_url_checked(config["api_url"], errors=errors, resolve=resolve)
        elif esp is not None and not esp.default_url:
            errors["api_url"] = f"required: the base URL of your {esp.name} server"
        timeout = _timeout_checked(config.get("timeout"), errors=errors)
        if errors:
            raise ConfigInvalid(errors)
        return {
            "esp": name,
            "api_key": api_key,
            "secret_key": secret_key,
            "from_email": from_email,
            "reply_to": reply_to,
            "api_url": api_url,
            "timeout": timeout,
        }

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        secrets = [
            value.strip()
            for field in sorted(self.secret_fields)
            if isinstance(value := config.get(field), str) and value.strip()
        ]
        result = self._send(message, config)
        return dataclasses.replace(
            result,
            response_excerpt=_scrubbed(result.response_excerpt, secrets)[:RESPONSE_EXCERPT_MAX],
            error=_scrubbed(result.error, secrets),
        )

    def _send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        given_url = config.get("api_url")
        if isinstance(given_url, str) and given_url.strip():
            # Again at every send: the name may resolve elsewhere than when it was saved.
            try:
                ssrf.url_check(given_url.strip())
            except ssrf.HostUnresolved as unresolved:  # a resolver outage passes: retried
                return ProviderResult(kind=ResultKind.RETRYABLE, error=unresolved.reason)
            except ssrf.UnsafeUrl as refused:
                return ProviderResult(
                    kind=ResultKind.CONFIG_ERROR, error=f"api_url: {refused.reason}"
                )
        try:
            config = self._validated(config, resolve=False)
        except ConfigInvalid as invalid:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(invalid))
        esp = ESPS[config["esp"]]
        url = config["api_url"] or esp.default_url
        try:
            email, _ = email_message_build(
                message, from_email=config["from_email"], reply_to=config["reply_to"]
            )
        except (ValueError, BadHeaderError) as error:
            return ProviderResult(kind=ResultKind.PERMANENT, error=str(error))
        credentials = {esp.key_kwarg: config["api_key"]}
        if esp.secret_kwarg:
            credentials[esp.secret_kwarg] = config["secret_key"]
        try:
            backend = get_connection(
                esp.backend,
                fail_silently=False,
                api_url=url,
                timeout=config["timeout"],
                # Everything that would otherwise be read from settings and could
                # leak or redirect a tenant's mail (the debug dump prints the key).
                debug_api_requests=False,
                ignore_recipient_status=False,
                ignore_unsupported_features=False,
                send_defaults={},
                **credentials,
            )
            backend.open()
            try:
                session = getattr(backend, "session", None)
                if not isinstance(session, requests.Session):  # pragma: no cover
                    raise ImproperlyConfigured(f"{esp.backend} did not open a requests session")
                session.trust_env = False  # no proxy or netrc from the environment
                session.max_redirects = 0  # a 3xx raises, with the answer on the cause
                backend.send_messages([email])
            finally:
                backend.close()
        except (AnymailError, requests.RequestException, ImproperlyConfigured) as error:
            return _result_for_error(error, esp=esp, url=url, timeout=config["timeout"])
        except (KeyError, TypeError, ValueError):
            # A backend's parser tripped over an answer it did not expect (Postal's
            # reads keys without checking). Once the ESP has answered, the answer
            # decides; before that it is a bug, and the delivery code retries it.
            answer = getattr(getattr(email, "anymail_status", None), "esp_response", None)
            if isinstance(answer, requests.Response):
                return _answered(answer, esp=esp)
            raise
        return _accepted(email, esp=esp)
