"""SMS over HTTP: a generic gateway provider and a Twilio-compatible one (httpx, no SDK).

Both refuse an address that is not E.164 before any request is made, read at
most a bounded part of the response, and turn every outcome into a
``ProviderResult`` through ``http_result`` so the meaning of a status code is
decided in one place. ``sms_segments`` says how many parts a text costs.
"""

import email.utils
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx

from channels_delivery.catalogue import Channel
from channels_delivery.providers.base import (
    RESPONSE_EXCERPT_MAX,
    ConfigInvalid,
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_register,
)
from channels_delivery.ssrf import (
    MAX_TIMEOUT_SECONDS,
    HostUnresolved,
    UnsafeUrl,
    safe_client,
    url_check,
    url_parse,
)

# --- segments ---------------------------------------------------------------

# GSM 03.38 default alphabet, without ESC (0x1B), which only introduces the extension table.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Sent as ESC + character, so each costs two septets.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

# A concatenated message spends part of each segment on the user data header.
GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67


@dataclass(frozen=True, kw_only=True)
class SegmentInfo:
    encoding: Literal["GSM-7", "UCS-2"]
    characters: int  # encoded length: GSM-7 septets, or UTF-16 code units for UCS-2
    segments: int


def sms_segments(text: str) -> SegmentInfo:
    """How a text is encoded and how many SMS segments it takes.

    A two-unit character (a GSM-7 extension character, or a UCS-2 surrogate
    pair such as an emoji) is never split across segments, so a long text can
    take one more segment than its length divided by the segment size.
    """
    if all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text):
        costs = [2 if char in GSM7_EXTENSION else 1 for char in text]
        return SegmentInfo(
            encoding="GSM-7",
            characters=sum(costs),
            segments=_segment_count(costs, single=GSM7_SINGLE, multi=GSM7_MULTI),
        )
    costs = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return SegmentInfo(
        encoding="UCS-2",
        characters=sum(costs),
        segments=_segment_count(costs, single=UCS2_SINGLE, multi=UCS2_MULTI),
    )


def _segment_count(costs: list[int], *, single: int, multi: int) -> int:
    total = sum(costs)
    if total <= single:
        return 1 if total else 0
    segments, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            segments, used = segments + 1, 0
        used += cost
    return segments


# --- addresses ----------------------------------------------------------------

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# An alphanumeric sender ID: up to 11 characters, at least one of them a letter.
ALPHANUMERIC_SENDER = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")


def phone_e164_error(phone: object) -> str:
    """Why ``phone`` is not an E.164 number, or "" when it is one."""
    if not isinstance(phone, str) or not phone:
        return "the message has no phone number"
    if not E164.fullmatch(phone):
        return (
            f"phone number {phone[:40]!r} is not in E.164 format "
            "(a '+', the country code, then the number: 2 to 15 digits, no spaces)"
        )
    return ""


def _sender_error(sender: object) -> str:
    if not isinstance(sender, str):
        return "must be a string"
    if sender and not (E164.fullmatch(sender) or ALPHANUMERIC_SENDER.fullmatch(sender)):
        return "must be an E.164 number or an alphanumeric sender ID of at most 11 characters"
    return ""


# --- HTTP outcome -> result -----------------------------------------------------

RESPONSE_READ_MAX = 64 * 1024  # enough for any gateway's JSON answer; a larger body is cut
TIMEOUT_DEFAULT = 10.0


@dataclass(frozen=True, kw_only=True)
class HttpAnswer:
    """A response, read up to RESPONSE_READ_MAX bytes."""

    status: int
    headers: httpx.Headers
    body: bytes


def http_result(
    outcome: HttpAnswer | httpx.HTTPError | UnsafeUrl,
    *,
    provider_message_id: str = "",
    detail: str = "",
    now: float | None = None,
) -> ProviderResult:
    """The one place a status code or a network failure gets its meaning.

    2xx accepted; 429 and 5xx retryable, honouring Retry-After; 401/403 a
    config error (the credentials are wrong); a redirect a config error (the
    URL is wrong, and redirects are never followed); other 4xx permanent;
    timeouts and connection errors retryable; a URL or address the SSRF guard
    refuses a config error, but a host name that gave no address retryable
    (it resolved when the URL was saved: a resolver outage passes).
    ``detail`` is the provider's own reading of an error body, used as the
    error text when given.
    """
    if isinstance(outcome, HostUnresolved):
        return ProviderResult(kind=ResultKind.RETRYABLE, error=outcome.reason)
    if isinstance(outcome, UnsafeUrl):
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR, error=f"the URL is refused: {outcome.reason}"
        )
    if isinstance(outcome, httpx.HTTPError):
        if isinstance(outcome, httpx.TimeoutException):
            error = f"timed out ({type(outcome).__name__}: {outcome})"[:500]
        else:
            error = f"{type(outcome).__name__}: {outcome}"[:500]
        return ProviderResult(kind=ResultKind.RETRYABLE, error=error)

    status = outcome.status
    excerpt = outcome.body.decode("utf-8", errors="replace")[:RESPONSE_EXCERPT_MAX]
    common: dict[str, Any] = {"response_status": status, "response_excerpt": excerpt}
    if 200 <= status < 300:
        return ProviderResult(
            kind=ResultKind.ACCEPTED, provider_message_id=provider_message_id, **common
        )
    error = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status == 429 or status >= 500:
        retry_after = retry_after_seconds(outcome.headers.get("retry-after"), now=now)
        return ProviderResult(
            kind=ResultKind.RETRYABLE, error=error, retry_after_seconds=retry_after, **common
        )
    if status in (401, 403):
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR,
            error=f"{error} (the provider refused the credentials)",
            **common,
        )
    if 300 <= status < 400:
        location = outcome.headers.get("location", "")[:200]
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR,
            error=f"{error}: redirect to {location!r} not followed; fix the URL",
            **common,
        )
    return ProviderResult(kind=ResultKind.PERMANENT, error=error, **common)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header (delay in seconds, or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _exchange(
    request: httpx.Request, *, timeout: float, auth: httpx.Auth | None = None
) -> HttpAnswer | httpx.HTTPError | UnsafeUrl:
    """One request through the SSRF guard, which also bounds the whole exchange in time."""
    try:
        with safe_client(timeout=timeout, max_response_bytes=RESPONSE_READ_MAX) as client:
            response = client.send(request, auth=auth, stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
            finally:
                response.close()
    except (httpx.HTTPError, UnsafeUrl) as failure:
        return failure
    return HttpAnswer(
        status=response.status_code, headers=response.headers, body=bytes(body[:RESPONSE_READ_MAX])
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: a deeply nested answer
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _message_text(message: RenderedMessage) -> str:
    text = message.content.get("text")
    return text if isinstance(text, str) else ""


def _undeliverable(message: RenderedMessage) -> ProviderResult | None:
    """A PERMANENT result for a message no request could deliver, else None."""
    error = phone_e164_error(message.address.get("phone"))
    if not error and not _message_text(message).strip():
        error = "the message has no text"
    return ProviderResult(kind=ResultKind.PERMANENT, error=error) if error else None


# --- config helpers -------------------------------------------------------------


def _unknown_fields(config: Mapping[str, Any], known: frozenset[str]) -> dict[str, str]:
    return {name: "unknown field" for name in config if name not in known}


def _http_url(value: object, *, resolve: bool, allow_query: bool = True) -> tuple[str, str]:
    """(normalised URL, error). With ``resolve`` (when the config is saved) what
    the host resolves to is checked too; every connection checks it again."""
    if not isinstance(value, str) or not value.strip():
        return "", "required: an http(s) URL"
    url = value.strip()
    try:
        if resolve:
            url_check(url)
        else:
            url_parse(url)
    except UnsafeUrl as refused:
        return "", refused.reason
    if not allow_query and urlsplit(url).query:
        return "", "must not have a query string"
    return url, ""


def _timeout(value: object) -> tuple[float, str]:
    if value is None:
        return TIMEOUT_DEFAULT, ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0, "must be a number of seconds"
    if not 0 < value <= MAX_TIMEOUT_SECONDS:
        return 0.0, f"must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds"
    return float(value), ""


def _required_string(value: object) -> tuple[str, str]:
    if not isinstance(value, str) or not value.strip():
        return "", "required"
    return value.strip(), ""


# --- providers --------------------------------------------------------------------

GATEWAY_FIELD_DEFAULTS = {"to": "to", "text": "text", "from": "from"}


@provider_register
class HttpGatewayProvider:
    """Any SMS gateway that takes one HTTP request per message.

    Config: url; method (POST or PUT); auth none/bearer (token)/basic
    (username, password); body_format json/form; fields, renaming the to /
    text / from parameters; from (the sender, sent only when set);
    message_id_field (a dotted path into the JSON answer, default "id");
    timeout in seconds.
    """

    channel: ClassVar[str] = Channel.SMS.value
    key: ClassVar[str] = "http_gateway"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"token", "password"})
    known_fields: ClassVar[frozenset[str]] = frozenset(
        {"url", "method", "auth", "token", "username", "password", "body_format"}
        | {"fields", "from", "message_id_field", "timeout"}
    )
    config_fields: ClassVar[frozenset[str]] = known_fields

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return self._validated(config, resolve=True)

    def _validated(self, config: Mapping[str, Any], *, resolve: bool) -> dict[str, Any]:
        errors = _unknown_fields(config, self.known_fields)
        url, errors["url"] = _http_url(config.get("url"), resolve=resolve)
        method = str(config.get("method") or "POST").upper()
        errors["method"] = "" if method in ("POST", "PUT") else "must be POST or PUT"
        auth = config.get("auth") or "none"
        errors["auth"] = (
            "" if auth in ("none", "bearer", "basic") else "must be none, bearer or basic"
        )
        token = config.get("token") or ""
        username = config.get("username") or ""
        password = config.get("password") or ""
        required = f"required when auth is {auth}"
        if auth == "bearer" and not (isinstance(token, str) and token):
            errors["token"] = required
        if auth == "basic":
            if not (isinstance(username, str) and username) or ":" in str(username):
                errors["username"] = f"{required}, without ':'"
            if not (isinstance(password, str) and password):
                errors["password"] = required
        body_format = config.get("body_format") or "json"
        errors["body_format"] = "" if body_format in ("json", "form") else "must be json or form"
        fields, errors["fields"] = self._fields(config.get("fields"))
        sender = config.get("from") or ""
        errors["from"] = _sender_error(sender)
        id_field = config.get("message_id_field", "id")
        if not isinstance(id_field, str):
            errors["message_id_field"] = "must be a dotted path such as id or data.message_id"
        timeout, errors["timeout"] = _timeout(config.get("timeout"))
        errors = {name: error for name, error in errors.items() if error}
        if errors:
            raise ConfigInvalid(errors)
        return {
            "url": url,
            "method": method,
            "auth": auth,
            "token": token if auth == "bearer" else "",
            "username": username if auth == "basic" else "",
            "password": password if auth == "basic" else "",
            "body_format": body_format,
            "fields": fields,
            "from": sender,
            "message_id_field": id_field,
            "timeout": timeout,
        }

    @staticmethod
    def _fields(value: object) -> tuple[dict[str, str], str]:
        if value is None:
            return dict(GATEWAY_FIELD_DEFAULTS), ""
        if not isinstance(value, Mapping):
            return {}, "must map to / text / from to the gateway's parameter names"
        unknown = sorted(str(name) for name in value if name not in GATEWAY_FIELD_DEFAULTS)
        if unknown:
            return {}, f"unknown key(s) {', '.join(unknown)}; only to, text and from"
        fields = {**GATEWAY_FIELD_DEFAULTS, **value}
        if not all(isinstance(name, str) and name for name in fields.values()):
            return {}, "each parameter name must be a non-empty string"
        if len(set(fields.values())) != len(fields):
            return {}, "to, text and from must use different parameter names"
        return fields, ""

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        try:
            config = self._validated(config, resolve=False)
        except ConfigInvalid as invalid:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(invalid))
        refused = _undeliverable(message)
        if refused:
            return refused
        fields = config["fields"]
        params = {fields["to"]: message.address["phone"], fields["text"]: _message_text(message)}
        if config["from"]:
            params[fields["from"]] = config["from"]
        headers = {"Accept": "application/json"}
        auth: httpx.Auth | None = None
        if config["auth"] == "bearer":
            headers["Authorization"] = f"Bearer {config['token']}"
        elif config["auth"] == "basic":
            auth = httpx.BasicAuth(config["username"], config["password"])
        if config["body_format"] == "json":
            request = httpx.Request(config["method"], config["url"], headers=headers, json=params)
        else:
            request = httpx.Request(config["method"], config["url"], headers=headers, data=params)
        outcome = _exchange(request, timeout=config["timeout"], auth=auth)
        if not isinstance(outcome, HttpAnswer):
            return http_result(outcome)
        if not 200 <= outcome.status < 300:
            first_line = outcome.body[:200].decode("utf-8", errors="replace").splitlines()
            return http_result(outcome, detail=first_line[0].strip() if first_line else "")
        answer = _json_object(outcome.body)
        return http_result(outcome, provider_message_id=_dig(answer, config["message_id_field"]))


def _dig(answer: Mapping[str, Any], path: str) -> str:
    value: Any = answer
    for part in path.split(".") if path else []:
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    return str(value)[:200] if isinstance(value, str | int) and not isinstance(value, bool) else ""


TWILIO_BASE_URL = "https://api.twilio.com"
SID = re.compile(r"[A-Za-z0-9]{2,64}")


@provider_register
class TwilioProvider:
    """Twilio's Messages API, or any service that copies it.

    Config: account_sid, auth_token (secret), from and/or
    messaging_service_sid (one is required), base_url (default Twilio's), timeout.
    """

    channel: ClassVar[str] = Channel.SMS.value
    key: ClassVar[str] = "twilio"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"auth_token"})
    known_fields: ClassVar[frozenset[str]] = frozenset(
        {"account_sid", "auth_token", "from", "messaging_service_sid", "base_url", "timeout"}
    )
    config_fields: ClassVar[frozenset[str]] = known_fields

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return self._validated(config, resolve=True)

    def _validated(self, config: Mapping[str, Any], *, resolve: bool) -> dict[str, Any]:
        errors = _unknown_fields(config, self.known_fields)
        account_sid, errors["account_sid"] = _required_string(config.get("account_sid"))
        if account_sid and not SID.fullmatch(account_sid):
            errors["account_sid"] = "must be letters and digits only (Twilio's start with AC)"
        auth_token, errors["auth_token"] = _required_string(config.get("auth_token"))
        sender = config.get("from") or ""
        errors["from"] = _sender_error(sender)
        service_sid = config.get("messaging_service_sid") or ""
        if not isinstance(service_sid, str) or (service_sid and not SID.fullmatch(service_sid)):
            errors["messaging_service_sid"] = (
                "must be letters and digits only (Twilio's start with MG)"
            )
        elif not sender and not service_sid:
            errors["from"] = "required unless messaging_service_sid is set"
        # Twilio's own address is not resolved when saved (saving works offline);
        # another base_url the tenant gives is, like every tenant-supplied URL.
        given = config.get("base_url") or TWILIO_BASE_URL
        twilios = isinstance(given, str) and given.strip().rstrip("/") == TWILIO_BASE_URL
        base_url, errors["base_url"] = _http_url(
            given, resolve=resolve and not twilios, allow_query=False
        )
        timeout, errors["timeout"] = _timeout(config.get("timeout"))
        errors = {name: error for name, error in errors.items() if error}
        if errors:
            raise ConfigInvalid(errors)
        return {
            "account_sid": account_sid,
            "auth_token": auth_token,
            "from": sender,
            "messaging_service_sid": service_sid,
            "base_url": base_url.rstrip("/"),
            "timeout": timeout,
        }

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        try:
            config = self._validated(config, resolve=False)
        except ConfigInvalid as invalid:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(invalid))
        refused = _undeliverable(message)
        if refused:
            return refused
        form = {"To": message.address["phone"], "Body": _message_text(message)}
        if config["messaging_service_sid"]:
            form["MessagingServiceSid"] = config["messaging_service_sid"]
        if config["from"]:
            form["From"] = config["from"]
        url = f"{config['base_url']}/2010-04-01/Accounts/{config['account_sid']}/Messages.json"
        request = httpx.Request("POST", url, data=form, headers={"Accept": "application/json"})
        auth = httpx.BasicAuth(config["account_sid"], config["auth_token"])
        outcome = _exchange(request, timeout=config["timeout"], auth=auth)
        if not isinstance(outcome, HttpAnswer):
            return http_result(outcome)
        answer = _json_object(outcome.body)
        if 200 <= outcome.status < 300:
            return http_result(outcome, provider_message_id=_dig(answer, "sid"))
        return http_result(outcome, detail=_twilio_error(answer))


def _twilio_error(answer: Mapping[str, Any]) -> str:
    """Twilio's error body {code, message, more_info} as one line."""
    code, text, more_info = answer.get("code"), answer.get("message"), answer.get("more_info")
    parts = [f"Twilio error {code}" if code is not None else "", str(text or "")]
    line = ": ".join(str(part)[:300] for part in parts if part)
    if more_info:
        line += f" ({str(more_info)[:200]})"
    return line
