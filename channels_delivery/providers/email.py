"""Email through Django's mail backends: ``smtp`` (a tenant's own server) and
``console`` (development: the message is printed).

Each send builds a backend from the integration's config rather than from
settings, so tenants never share a connection or credentials. ``send_many``
sends a batch over one SMTP connection. SMTP replies map onto result kinds:
5xx is permanent, 4xx and network trouble are retryable, and a refused login or
an untrusted certificate is the integration's fault (config_error).
"""

import contextlib
import ipaddress
import re
import smtplib
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from email.utils import parseaddr
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import BadHeaderError, EmailMultiAlternatives
from django.core.mail.backends.console import EmailBackend as ConsoleBackend
from django.core.mail.backends.smtp import EmailBackend as SmtpBackend
from django.core.validators import validate_email

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

SECURITY_MODES = ("none", "starttls", "ssl")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 60.0
# Headers the provider sets from the config and the address; a rendered message
# may not override them (the envelope and the Message-ID must match the result).
# RFC 5322 field-name: printable US-ASCII except the colon.
HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")
RESERVED_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "subject", "message-id"})


class SmtpHostRefused(OSError):
    """The SMTP host resolves to an address Herald may not connect to (DESIGN.md SSRF)."""


class SmtpHostUnresolved(OSError):
    """The SMTP host's name gave no address just now (a resolver outage, say)."""


class _CheckedSMTP(smtplib.SMTP):
    """Connects only to an address that passed the SSRF check just now, so a DNS
    answer that changes between check and connect can not point it inward. The
    certificate is still verified against the host name (smtplib keeps it)."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        allow_loopback = bool(getattr(settings, "HERALD_ALLOW_LOOPBACK_URLS", False))
        try:
            addresses = ssrf.host_resolve_checked(host, port, allow_loopback=allow_loopback)
        except ssrf.HostUnresolved as error:
            # Not a refusal: the name gave no address just now (_result_for_error retries).
            raise SmtpHostUnresolved(error.reason) from None
        except ssrf.UnsafeUrl as error:
            raise SmtpHostRefused(error.reason) from None
        # host_resolve_checked returns at least one address; the last one's error stands.
        for address in addresses[:-1]:
            try:
                return socket.create_connection((address, port), timeout, self.source_address)
            except OSError:
                continue
        return socket.create_connection((addresses[-1], port), timeout, self.source_address)


class _CheckedSMTPSSL(smtplib.SMTP_SSL, _CheckedSMTP):
    """SMTP_SSL wraps what _CheckedSMTP._get_socket opened (it calls super())."""


class _CheckedBackend(SmtpBackend):
    @property
    def connection_class(self) -> type[smtplib.SMTP]:
        return _CheckedSMTPSSL if self.use_ssl else _CheckedSMTP


def _host_refusal(host: str) -> str | None:
    """Why ``host`` is refused when saved (no DNS here: names are checked again, resolved,
    on every connection)."""
    allow_loopback = bool(getattr(settings, "HERALD_ALLOW_LOOPBACK_URLS", False))
    bare = host.rstrip(".").lower()
    if not allow_loopback and (bare == "localhost" or bare.endswith(".localhost")):
        return f"{host!r} is a loopback name"
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return None
    return ssrf.address_refusal(bare, allow_loopback=allow_loopback)


def email_address_checked(value: Any, *, field: str, errors: dict[str, str]) -> str:
    """An address, optionally with a display name ("Acme <no-reply@acme.io>"); an
    error is added to ``errors`` under ``field`` instead of raising, so a config's
    every bad field is named at once. Shared by every email provider."""
    if not isinstance(value, str) or not value.strip():
        errors[field] = "required" if value in (None, "") else "must be a string"
        return ""
    value = value.strip()
    if "\n" in value or "\r" in value:
        errors[field] = "must be on one line"
        return ""
    _, address = parseaddr(value)
    try:
        validate_email(address)
    except ValidationError:
        errors[field] = f"{value!r} is not an email address"
        return ""
    return value


def _domain_of(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2] or "herald.invalid"


def email_message_build(
    message: RenderedMessage, *, from_email: str, reply_to: str
) -> tuple[EmailMultiAlternatives, str]:
    """The email for ``message`` and its Message-ID; raises ValueError naming what
    the rendered message lacks. Every email provider sends what this builds, so a
    message looks the same through SMTP, the console and an ESP (multipart text and
    HTML, the rendered headers such as List-Unsubscribe, reserved headers refused)."""
    recipient = message.address.get("email")
    if not isinstance(recipient, str) or not recipient.strip():
        raise ValueError("the message has no email address")
    try:
        validate_email(recipient)
    except ValidationError:
        raise ValueError(f"{recipient!r} is not an email address") from None
    subject = message.content.get("subject", "")
    text = message.content.get("text") or ""
    html = message.content.get("html") or ""
    if not isinstance(subject, str) or not isinstance(text, str) or not isinstance(html, str):
        raise ValueError("subject, text and html must be strings")
    if not text and not html:
        raise ValueError("the message has neither a text nor an html body")
    malformed = sorted(name for name in message.headers if not HEADER_NAME.fullmatch(name))
    if malformed:
        raise ValueError(f"not valid header names: {', '.join(map(repr, malformed))}")
    reserved = sorted(name for name in message.headers if name.lower() in RESERVED_HEADERS)
    if reserved:
        raise ValueError(f"a rendered message may not set the header(s) {', '.join(reserved)}")
    # Django refuses these only when it writes MIME (SMTP); an ESP's JSON API gets
    # the headers as values, so a line break would otherwise reach it.
    broken = sorted(
        name for name, value in message.headers.items() if "\n" in str(value) or "\r" in str(value)
    )
    if broken:
        raise ValueError(f"header value(s) not on one line: {', '.join(map(repr, broken))}")
    # Stable across retries, so a receiver can drop a duplicate and a bounce can
    # be traced back to the Message.
    message_id = f"<{message.message_id}@{_domain_of(from_email)}>"
    email = EmailMultiAlternatives(
        subject=" ".join(subject.splitlines()),
        body=text or html,
        from_email=from_email,
        to=[recipient.strip()],
        reply_to=[reply_to] if reply_to else None,
        headers={**message.headers, "Message-ID": message_id},
    )
    if text and html:
        email.attach_alternative(html, "text/html")
    elif html:
        email.content_subtype = "html"
    return email, message_id


def _excerpt(reply: bytes | str) -> str:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return text[:RESPONSE_EXCERPT_MAX]


def _from_reply(code: int, reply: bytes | str, *, what: str) -> ProviderResult:
    kind = ResultKind.PERMANENT if code >= 500 else ResultKind.RETRYABLE
    excerpt = _excerpt(reply)
    return ProviderResult(
        kind=kind,
        response_status=code,
        response_excerpt=excerpt,
        error=f"{what}: {code} {excerpt}",
    )


def _result_for_error(error: Exception, *, host: str, port: int) -> ProviderResult:
    """What a failed SMTP conversation means for this message and this integration."""
    if isinstance(error, SmtpHostRefused):
        return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=f"refused: {error}")
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR,
            response_status=error.smtp_code,
            response_excerpt=_excerpt(error.smtp_error),
            error=f"{host} refused the username and password ({error.smtp_code})",
        )
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR,
            error=f"{host} does not support what the integration asks for: {error}",
        )
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(error.recipients.values()), (451, b"recipient refused"))
        return _from_reply(code, reply, what="recipient refused")
    if isinstance(error, smtplib.SMTPSenderRefused):
        if error.smtp_code >= 500:
            # Every message from this sender would fail the same way.
            return ProviderResult(
                kind=ResultKind.CONFIG_ERROR,
                response_status=error.smtp_code,
                response_excerpt=_excerpt(error.smtp_error),
                error=f"{host} refused the sender {error.sender!r} ({error.smtp_code})",
            )
        return _from_reply(error.smtp_code, error.smtp_error, what="sender refused for now")
    if isinstance(error, smtplib.SMTPConnectError | smtplib.SMTPHeloError):
        if error.smtp_code >= 500:
            # The server turns this client away, whatever the message.
            return ProviderResult(
                kind=ResultKind.CONFIG_ERROR,
                response_status=error.smtp_code,
                response_excerpt=_excerpt(error.smtp_error),
                error=f"{host} refused the session ({error.smtp_code})",
            )
        return _from_reply(error.smtp_code, error.smtp_error, what="session refused for now")
    if isinstance(error, smtplib.SMTPServerDisconnected) and isinstance(
        error.__context__, TimeoutError
    ):
        # smtplib reports a read that timed out as a disconnection.
        return ProviderResult(
            kind=ResultKind.RETRYABLE, error=f"{host}:{port} did not answer in time"
        )
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return ProviderResult(
            kind=ResultKind.RETRYABLE, error=f"{host}:{port} closed the connection: {error}"
        )
    if isinstance(error, smtplib.SMTPResponseException):
        return _from_reply(error.smtp_code, error.smtp_error, what="refused")
    if isinstance(error, ssl.SSLCertVerificationError):
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR,
            error=f"the TLS certificate of {host} is not trusted: {error.verify_message}",
        )
    if isinstance(error, ssl.SSLError):
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR,
            error=f"the TLS handshake with {host}:{port} failed ({error.reason}); "
            "is the security mode right for this port?",
        )
    if isinstance(error, TimeoutError):
        return ProviderResult(
            kind=ResultKind.RETRYABLE, error=f"{host}:{port} did not answer in time"
        )
    if isinstance(error, ConnectionRefusedError):
        return ProviderResult(
            kind=ResultKind.RETRYABLE, error=f"{host}:{port} refused the connection"
        )
    if isinstance(error, socket.gaierror | SmtpHostUnresolved):
        return ProviderResult(
            kind=ResultKind.RETRYABLE, error=f"the host name {host!r} did not resolve: {error}"
        )
    return ProviderResult(
        kind=ResultKind.RETRYABLE,
        error=f"sending through {host}:{port} failed: {type(error).__name__}: {error}",
    )


def _close_quietly(backend: SmtpBackend) -> None:
    # The messages' fate is decided; a failed QUIT changes nothing.
    with contextlib.suppress(OSError):
        backend.close()


@provider_register
class SmtpProvider:
    channel: ClassVar[str] = Channel.EMAIL
    key: ClassVar[str] = "smtp"
    secret_fields: ClassVar[frozenset[str]] = frozenset({"password"})
    fields: ClassVar[frozenset[str]] = frozenset(
        {"host", "port", "username", "password", "security", "from_email", "reply_to", "timeout"}
    )
    config_fields: ClassVar[frozenset[str]] = fields

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        errors: dict[str, str] = {}
        for unknown in sorted(set(config) - self.fields):
            errors[unknown] = "unknown field"

        host = config.get("host")
        if not isinstance(host, str) or not host.strip():
            errors["host"] = "required"
        elif len(host.strip()) > 253 or any(char.isspace() for char in host.strip()):
            errors["host"] = f"{host!r} is not a host name"
        else:
            refusal = _host_refusal(host.strip())
            if refusal:
                errors["host"] = refusal
        security = config.get("security", "starttls")
        if security not in SECURITY_MODES:
            errors["security"] = f"one of {', '.join(SECURITY_MODES)}"
            security = "starttls"
        port = config.get("port", DEFAULT_PORTS[security])
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            errors["port"] = "an integer from 1 to 65535"
        username = config.get("username") or ""
        password = config.get("password") or ""
        if not isinstance(username, str):
            errors["username"] = "must be a string"
        if not isinstance(password, str):
            errors["password"] = "must be a string"  # noqa: S105 (a message, not a password)
        elif username and not password:
            errors["password"] = "required when a username is set"  # noqa: S105
        elif password and not username:
            errors["username"] = "required when a password is set"
        from_email = email_address_checked(
            config.get("from_email"), field="from_email", errors=errors
        )
        reply_to = ""
        if config.get("reply_to"):
            reply_to = email_address_checked(config["reply_to"], field="reply_to", errors=errors)
        timeout = config.get("timeout", DEFAULT_TIMEOUT_SECONDS)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_TIMEOUT_SECONDS
        ):
            errors["timeout"] = f"seconds, more than 0 and at most {MAX_TIMEOUT_SECONDS:g}"
        if errors:
            raise ConfigInvalid(errors)
        return {
            "host": host.strip(),  # type: ignore[union-attr]
            "port": port,
            "username": username,
            "password": password,
            "security": security,
            "from_email": from_email,
            "reply_to": reply_to,
            "timeout": float(timeout),
        }

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        return self.send_many([message], config)[0]

    def send_many(
        self, messages: Sequence[RenderedMessage], config: Mapping[str, Any]
    ) -> list[ProviderResult]:
        """Send ``messages`` over one connection; one result each, in order."""
        if not messages:
            return []
        try:
            config = self.validate_config(config)
        except ConfigInvalid as error:
            return [ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(error))] * len(messages)
        host, port = config["host"], config["port"]
        backend = _CheckedBackend(
            host=host,
            port=port,
            username=config["username"],
            password=config["password"],
            use_tls=config["security"] == "starttls",
            use_ssl=config["security"] == "ssl",
            timeout=config["timeout"],
        )
        try:
            backend.open()
        except OSError as error:  # smtplib.SMTPException is an OSError too
            _close_quietly(backend)
            return [_result_for_error(error, host=host, port=port)] * len(messages)

        results: list[ProviderResult] = []
        try:
            for index, message in enumerate(messages):
                try:
                    email, message_id = email_message_build(
                        message, from_email=config["from_email"], reply_to=config["reply_to"]
                    )
                    backend.send_messages([email])
                except (ValueError, BadHeaderError) as error:
                    results.append(ProviderResult(kind=ResultKind.PERMANENT, error=str(error)))
                    continue
                except OSError as error:
                    results.append(_result_for_error(error, host=host, port=port))
                    connection_lost = isinstance(
                        error, smtplib.SMTPServerDisconnected
                    ) or not isinstance(error, smtplib.SMTPException)
                    if connection_lost:
                        # The connection is gone: the rest were not tried.
                        lost = ProviderResult(
                            kind=ResultKind.RETRYABLE,
                            error=f"not sent: the connection to {host}:{port} was lost",
                        )
                        results.extend([lost] * (len(messages) - index - 1))
                        break
                    continue
                results.append(
                    ProviderResult(
                        kind=ResultKind.ACCEPTED,
                        provider_message_id=message_id,
                        response_status=250,
                    )
                )
        finally:
            _close_quietly(backend)
        return results


@provider_register
class ConsoleProvider:
    """Development: the message, as it would be sent, is written to stdout."""

    channel: ClassVar[str] = Channel.EMAIL
    key: ClassVar[str] = "console"
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    fields: ClassVar[frozenset[str]] = frozenset({"from_email", "reply_to"})
    config_fields: ClassVar[frozenset[str]] = fields

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        if getattr(settings, "IS_PRODUCTION", False):
            # It would "deliver" every message, personal content included, into the logs.
            raise ConfigInvalid({"provider": "the console provider is for development only"})
        errors: dict[str, str] = {
            unknown: "unknown field" for unknown in sorted(set(config) - self.fields)
        }
        from_email = email_address_checked(
            config.get("from_email"), field="from_email", errors=errors
        )
        reply_to = ""
        if config.get("reply_to"):
            reply_to = email_address_checked(config["reply_to"], field="reply_to", errors=errors)
        if errors:
            raise ConfigInvalid(errors)
        return {"from_email": from_email, "reply_to": reply_to}

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        try:
            config = self.validate_config(config)
        except ConfigInvalid as error:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(error))
        try:
            email, message_id = email_message_build(
                message, from_email=config["from_email"], reply_to=config["reply_to"]
            )
            # Looked up at send time, so a test capturing stdout sees it.
            ConsoleBackend(stream=sys.stdout).send_messages([email])
        except (ValueError, BadHeaderError) as error:
            return ProviderResult(kind=ResultKind.PERMANENT, error=str(error))
        return ProviderResult(kind=ResultKind.ACCEPTED, provider_message_id=message_id)
