"""The email providers over real sockets: an aiosmtpd server on 127.0.0.1 stands in
for the tenant's SMTP server (plain, STARTTLS with a certificate made here, and
implicit TLS), and plain sockets stand in for servers that refuse or never answer."""

import datetime
import email
import email.policy
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from channels_delivery import ssrf
from channels_delivery.providers.base import (
    ConfigInvalid,
    RenderedMessage,
    ResultKind,
    provider_get,
)
from tests.ports import free_port

USERNAME = "herald"
PASSWORD = "s3cret-smtp-password"


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@dataclass
class Sink:
    """What the SMTP server received, and how it is told to answer."""

    received: list[Envelope] = field(default_factory=list)
    rcpt_reply: str = ""  # e.g. "550 5.1.1 no such user"; "" accepts
    data_reply: str = ""
    auth_attempts: int = 0

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.data_reply:
            return self.data_reply
        self.received.append(envelope)
        return "250 2.0.0 queued"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.auth_attempts += 1
        ok = (
            isinstance(data, LoginPassword)
            and data.login == USERNAME.encode()
            and data.password == PASSWORD.encode()
        )
        return AuthResult(success=ok, handled=False)

    def parsed(self, index: int = 0) -> EmailMessage:
        content = self.received[index].original_content
        assert content is not None
        return email.message_from_bytes(content, policy=email.policy.default)


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Herald test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    return Certificates(ca_file=ca_file, server_context=server_context)


@pytest.fixture
def trust_test_ca(monkeypatch: pytest.MonkeyPatch, certificates: Certificates) -> None:
    """The provider verifies certificates with the system's default trust store;
    OpenSSL reads it from SSL_CERT_FILE, so the test CA is trusted by that route
    and the provider's own TLS code runs unchanged."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca_file))


def start_server(sink: Sink, **smtp_options: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, ready_timeout=5.0, **smtp_options
    )
    controller.start()
    return controller, port


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def plain_server(sink: Sink) -> Iterator[int]:
    """Plain SMTP; AUTH offered without TLS so credentials can be tested on their own."""
    controller, port = start_server(sink, authenticator=sink.authenticate, auth_require_tls=False)
    yield port
    controller.stop()


@pytest.fixture
def starttls_server(sink: Sink, certificates: Certificates) -> Iterator[int]:
    controller, port = start_server(
        sink,
        tls_context=certificates.server_context,
        require_starttls=True,
        authenticator=sink.authenticate,
    )
    yield port
    controller.stop()


class ImplicitTlsController(Controller):
    """aiosmtpd speaks TLS from the first byte when the controller has an ssl_context;
    its readiness probe must then speak TLS too, with the test CA."""

    def __init__(self, *args: Any, ca_file: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ca_file = ca_file

    def _trigger_server(self) -> None:
        context = ssl.create_default_context(cafile=str(self._ca_file))
        with (
            socket.create_connection((self.hostname, self.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=self.hostname) as tls,
        ):
            tls.recv(1024)  # the greeting


@pytest.fixture
def ssl_server(sink: Sink, certificates: Certificates) -> Iterator[int]:
    port = free_port()
    controller = ImplicitTlsController(
        sink,
        hostname="127.0.0.1",
        port=port,
        ready_timeout=5.0,
        ssl_context=certificates.server_context,
        ca_file=certificates.ca_file,
        authenticator=sink.authenticate,
        # aiosmtpd counts only STARTTLS as TLS for AUTH; this session is TLS throughout.
        auth_require_tls=False,
    )
    controller.start()
    yield port
    controller.stop()


def smtp_config(port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_email": "Acme <no-reply@acme.example>",
        "reply_to": "support@acme.example",
        "timeout": 3,
    }
    config.update(overrides)
    return config


def rendered(**overrides: Any) -> RenderedMessage:
    values: dict[str, Any] = {
        "message_id": "6f1c9a52-0000-4000-8000-000000000001",
        "channel": "email",
        "content": {
            "subject": "Your order shipped",
            "text": "Order 42 is on its way.",
            "html": "<p>Order <b>42</b> is on its way.</p>",
        },
        "address": {"email": "ada@example.com"},
        "headers": {
            "List-Unsubscribe": "<https://herald.example/u/abc>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    values.update(overrides)
    return RenderedMessage(**values)


smtp = provider_get(channel="email", key="smtp")


# --- sending ------------------------------------------------------------------------


def test_smtp_delivers_multipart_message_with_headers(plain_server: int, sink: Sink) -> None:
    result = smtp.send(rendered(), smtp_config(plain_server))

    assert result.kind == ResultKind.ACCEPTED, result.error
    assert result.provider_message_id == "<6f1c9a52-0000-4000-8000-000000000001@acme.example>"
    assert len(sink.received) == 1
    envelope = sink.received[0]
    assert envelope.mail_from == "no-reply@acme.example"
    assert envelope.rcpt_tos == ["ada@example.com"]
    parsed = sink.parsed()
    assert parsed["Subject"] == "Your order shipped"
    assert parsed["From"] == "Acme <no-reply@acme.example>"
    assert parsed["Reply-To"] == "support@acme.example"
    assert parsed["Message-ID"] == result.provider_message_id
    assert parsed["List-Unsubscribe"] == "<https://herald.example/u/abc>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert text is not None
    assert text.get_content().strip() == "Order 42 is on its way."
    assert html is not None
    assert "<b>42</b>" in html.get_content()


def test_smtp_sends_html_only_message_as_html(plain_server: int, sink: Sink) -> None:
    message = rendered(content={"subject": "Hi", "html": "<p>Hello</p>"})
    assert smtp.send(message, smtp_config(plain_server)).kind == ResultKind.ACCEPTED
    assert sink.parsed().get_content_type() == "text/html"


def test_smtp_logs_in_with_the_password(plain_server: int, sink: Sink) -> None:
    config = smtp_config(plain_server, username=USERNAME, password=PASSWORD)
    assert smtp.send(rendered(), config).kind == ResultKind.ACCEPTED
    assert sink.auth_attempts == 1
    assert len(sink.received) == 1


def test_smtp_bad_credentials_are_a_config_error(plain_server: int, sink: Sink) -> None:
    config = smtp_config(plain_server, username=USERNAME, password="wrong-password")
    result = smtp.send(rendered(), config)
    assert result.kind == ResultKind.CONFIG_ERROR
    assert result.response_status == 535
    assert "username and password" in result.error
    assert "wrong-password" not in result.error + result.response_excerpt
    assert sink.received == []


def test_smtp_starttls_with_a_verified_certificate(
    starttls_server: int, sink: Sink, trust_test_ca: None
) -> None:
    config = smtp_config(starttls_server, security="starttls", username=USERNAME, password=PASSWORD)
    result = smtp.send(rendered(), config)
    assert result.kind == ResultKind.ACCEPTED, result.error
    assert len(sink.received) == 1
    assert sink.auth_attempts == 1


def test_smtp_starttls_with_an_untrusted_certificate_is_a_config_error(
    starttls_server: int, sink: Sink
) -> None:
    # No trust_test_ca: the system store does not know the test CA.
    result = smtp.send(rendered(), smtp_config(starttls_server, security="starttls"))
    assert result.kind == ResultKind.CONFIG_ERROR
    assert "certificate" in result.error
    assert sink.received == []


def test_smtp_plain_mode_to_a_server_requiring_starttls_is_refused(
    starttls_server: int, sink: Sink
) -> None:
    result = smtp.send(rendered(), smtp_config(starttls_server, security="none"))
    assert result.kind != ResultKind.ACCEPTED
    assert result.response_status == 530
    assert sink.received == []


def test_smtp_implicit_tls(ssl_server: int, sink: Sink, trust_test_ca: None) -> None:
    config = smtp_config(ssl_server, security="ssl", username=USERNAME, password=PASSWORD)
    result = smtp.send(rendered(), config)
    assert result.kind == ResultKind.ACCEPTED, result.error
    assert len(sink.received) == 1


# --- failure kinds -----------------------------------------------------------------


def test_smtp_550_recipient_is_permanent(plain_server: int, sink: Sink) -> None:
    sink.rcpt_reply = "550 5.1.1 no such user"
    result = smtp.send(rendered(), smtp_config(plain_server))
    assert result.kind == ResultKind.PERMANENT
    assert result.response_status == 550
    assert "no such user" in result.response_excerpt


def test_smtp_550_at_data_is_permanent(plain_server: int, sink: Sink) -> None:
    sink.data_reply = "554 5.7.1 message rejected as spam"
    result = smtp.send(rendered(), smtp_config(plain_server))
    assert result.kind == ResultKind.PERMANENT
    assert result.response_status == 554


def test_smtp_451_is_retryable(plain_server: int, sink: Sink) -> None:
    sink.data_reply = "451 4.3.0 try again later"
    result = smtp.send(rendered(), smtp_config(plain_server))
    assert result.kind == ResultKind.RETRYABLE
    assert result.response_status == 451
    assert "try again later" in result.error


def test_smtp_450_recipient_is_retryable(plain_server: int, sink: Sink) -> None:
    sink.rcpt_reply = "450 4.2.1 mailbox busy"
    result = smtp.send(rendered(), smtp_config(plain_server))
    assert result.kind == ResultKind.RETRYABLE
    assert result.response_status == 450


def test_smtp_refused_port_is_retryable() -> None:
    result = smtp.send(rendered(), smtp_config(free_port()))
    assert result.kind == ResultKind.RETRYABLE
    assert "refused the connection" in result.error


def test_smtp_silent_server_times_out_as_retryable() -> None:
    with socket.socket() as silent:  # accepts the TCP connection, never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = smtp.send(rendered(), smtp_config(port, timeout=0.5))
        elapsed = time.monotonic() - started
    assert result.kind == ResultKind.RETRYABLE
    assert "did not answer in time" in result.error
    assert elapsed < 3


def test_smtp_loopback_host_refused_unless_allowed(
    plain_server: int, sink: Sink, settings: Any
) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = False
    with pytest.raises(ConfigInvalid) as refused:
        smtp.validate_config(smtp_config(plain_server))
    assert "loopback" in refused.value.errors["host"]
    # A config that slipped past (saved while it was allowed) is refused at connect.
    result = smtp.send(rendered(), smtp_config(plain_server))
    assert result.kind == ResultKind.CONFIG_ERROR
    assert "loopback" in result.error
    assert sink.received == []


def test_smtp_connects_to_the_address_that_was_checked(
    plain_server: int, sink: Sink, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """The name is resolved once, by the SSRF check, and the socket goes to that
    answer: "smtp.tenant.test" exists in no DNS, so a second lookup would fail."""
    monkeypatch.setattr(ssrf, "resolver", lambda host, port: ["127.0.0.1"])
    config = smtp_config(plain_server, host="smtp.tenant.test")
    assert smtp.send(rendered(), config).kind == ResultKind.ACCEPTED
    assert len(sink.received) == 1

    settings.HERALD_ALLOW_LOOPBACK_URLS = False  # the same name, now pointing inward
    smtp.validate_config(config)  # a name is not resolved when saved...
    refused = smtp.send(rendered(), config)  # ...but on every connection
    assert refused.kind == ResultKind.CONFIG_ERROR
    assert "'smtp.tenant.test' resolves to 127.0.0.1" in refused.error
    assert len(sink.received) == 1


def test_an_smtp_host_that_does_not_resolve_when_sending_is_retryable(
    plain_server: int, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    def outage(host: str, port: int) -> list[str]:
        raise ssrf.HostUnresolved(f"the host {host!r} does not resolve (temporary failure)")

    monkeypatch.setattr(ssrf, "resolver", outage)
    result = smtp.send(rendered(), smtp_config(plain_server, host="smtp.tenant.test"))
    assert result.kind == ResultKind.RETRYABLE
    assert "'smtp.tenant.test' did not resolve" in result.error
    assert sink.received == []


def test_smtp_private_address_refused_at_save() -> None:
    with pytest.raises(ConfigInvalid) as refused:
        smtp.validate_config(smtp_config(25, host="10.0.0.5"))
    assert "private" in refused.value.errors["host"]


def test_smtp_bad_message_is_permanent_and_not_sent(plain_server: int, sink: Sink) -> None:
    no_address = smtp.send(rendered(address={}), smtp_config(plain_server))
    assert no_address.kind == ResultKind.PERMANENT
    assert "no email address" in no_address.error
    no_body = smtp.send(rendered(content={"subject": "x"}), smtp_config(plain_server))
    assert no_body.kind == ResultKind.PERMANENT
    injected = smtp.send(
        rendered(headers={"X-Campaign": "a\r\nBcc: victim@example.com"}),
        smtp_config(plain_server),
    )
    assert injected.kind == ResultKind.PERMANENT
    bad_name = smtp.send(rendered(headers={"X Bad": "1"}), smtp_config(plain_server))
    assert bad_name.kind == ResultKind.PERMANENT
    assert "'X Bad'" in bad_name.error
    overriding = smtp.send(
        rendered(headers={"From": "ceo@bank.example"}), smtp_config(plain_server)
    )
    assert overriding.kind == ResultKind.PERMANENT
    assert "From" in overriding.error
    assert sink.received == []


def test_smtp_send_many_shares_a_connection_and_reports_each(plain_server: int, sink: Sink) -> None:
    messages = [
        rendered(message_id="m-1", address={"email": "one@example.com"}),
        rendered(message_id="m-2", address={"email": "not an address"}),
        rendered(message_id="m-3", address={"email": "three@example.com"}),
    ]
    results = smtp.send_many(messages, smtp_config(plain_server))  # type: ignore[attr-defined]
    assert [result.kind for result in results] == [
        ResultKind.ACCEPTED,
        ResultKind.PERMANENT,
        ResultKind.ACCEPTED,
    ]
    assert [envelope.rcpt_tos for envelope in sink.received] == [
        ["one@example.com"],
        ["three@example.com"],
    ]
    assert results[2].provider_message_id == "<m-3@acme.example>"


def test_smtp_send_many_to_a_refused_port_fails_every_message_retryably() -> None:
    results = smtp.send_many([rendered(), rendered()], smtp_config(free_port()))  # type: ignore[attr-defined]
    assert [result.kind for result in results] == [ResultKind.RETRYABLE] * 2


# --- config validation ------------------------------------------------------------


def test_smtp_config_is_normalised_with_defaults() -> None:
    config = smtp.validate_config({"host": "smtp.example.com ", "from_email": "a@example.com"})
    assert config == {
        "host": "smtp.example.com",
        "port": 587,
        "username": "",
        "password": "",
        "security": "starttls",
        "from_email": "a@example.com",
        "reply_to": "",
        "timeout": 10.0,
    }
    assert smtp.validate_config({**config, "security": "ssl", "port": 465})["port"] == 465


def test_smtp_config_errors_name_each_field() -> None:
    with pytest.raises(ConfigInvalid) as invalid:
        smtp.validate_config(
            {
                "host": "",
                "port": 70000,
                "security": "tls",
                "from_email": "not-an-address",
                "reply_to": "also bad",
                "timeout": 0,
                "username": "someone",
                "colour": "blue",
            }
        )
    errors = invalid.value.errors
    assert set(errors) == {
        "host",
        "port",
        "security",
        "from_email",
        "reply_to",
        "timeout",
        "password",
        "colour",
    }
    assert errors["colour"] == "unknown field"
    assert errors["password"] == "required when a username is set"
    assert "not-an-address" in errors["from_email"]


def test_smtp_send_with_invalid_config_is_a_config_error() -> None:
    result = smtp.send(rendered(), {"host": "smtp.example.com"})
    assert result.kind == ResultKind.CONFIG_ERROR
    assert "from_email" in result.error


# --- console ----------------------------------------------------------------------


def test_console_prints_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    console = provider_get(channel="email", key="console")
    result = console.send(rendered(), console.validate_config({"from_email": "dev@localhost.dev"}))
    assert result.kind == ResultKind.ACCEPTED
    assert result.provider_message_id == "<6f1c9a52-0000-4000-8000-000000000001@localhost.dev>"
    printed = capsys.readouterr().out
    assert "Subject: Your order shipped" in printed
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in printed
    assert "text/html" in printed


def test_console_config_errors() -> None:
    console = provider_get(channel="email", key="console")
    with pytest.raises(ConfigInvalid) as invalid:
        console.validate_config({"host": "x"})
    assert invalid.value.errors == {"host": "unknown field", "from_email": "required"}


def test_console_is_refused_in_production(settings: Any) -> None:
    settings.IS_PRODUCTION = True
    console = provider_get(channel="email", key="console")
    with pytest.raises(ConfigInvalid, match="development only"):
        console.validate_config({"from_email": "dev@acme.example"})
    result = console.send(rendered(), {"from_email": "dev@acme.example"})
    assert result.kind == ResultKind.CONFIG_ERROR
