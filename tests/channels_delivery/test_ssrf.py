"""The SSRF guard refuses every way of naming an internal address, over real sockets.

Names are mapped by overriding ``ssrf.resolver`` (no DNS server, no internet);
public addresses are only checked, never contacted. Requests that are allowed go
to a real HTTP server on 127.0.0.1 with loopback explicitly allowed.
"""

import datetime
import http.server
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from channels_delivery import ssrf
from channels_delivery.ssrf import UnsafeUrl, safe_client, safe_request, url_check

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
TIMEOUT = 5.0


def names(mapping: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        if host not in mapping:
            raise AssertionError(f"unexpected lookup of {host!r}")
        return mapping[host]

    return resolve


@pytest.fixture
def resolve(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, list[str]]], None]:
    def install(mapping: dict[str, list[str]]) -> None:
        monkeypatch.setattr(ssrf, "resolver", names(mapping))

    install({})  # any unexpected DNS lookup fails the test
    return install


# --- url_check -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://2130706433/", "ambiguous numeric address"),
        ("http://0177.0.0.1/", "ambiguous numeric address"),
        ("http://0x7f.0.0.1/", "ambiguous numeric address"),
        ("http://0x7f000001/", "ambiguous numeric address"),
        ("http://127.1/", "ambiguous numeric address"),
        ("http://0/", "ambiguous numeric address"),
        ("http://127.0.0.1./", "ambiguous numeric address"),
        ("http://localhost/", "loopback name"),
        ("http://localhost./", "loopback name"),
        ("http://LOCALHOST/", "loopback name"),
        ("http://api.localhost/", "loopback name"),
        ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("http://127.9.9.9:8080/", "loopback address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "(that is 127.0.0.1) is a loopback address"),
        ("http://[::127.0.0.1]/", "(that is 127.0.0.1) is a loopback address"),
        ("http://[64:ff9b::7f00:1]/", "(that is 127.0.0.1) is a loopback address"),
        ("http://[2002:7f00:1::]/", "(that is 127.0.0.1) is a loopback address"),
        ("http://[::ffff:10.0.0.1]/", "(that is 10.0.0.1) is a private address"),
        ("http://[::]/", ":: is an unspecified address"),
        ("http://0.0.0.0/", "unspecified address"),
        ("http://0.1.2.3/", "unspecified address"),
        ("http://10.1.2.3/", "private address"),
        ("http://172.16.0.1/", "private address"),
        ("http://192.168.1.1/", "private address"),
        ("http://[fd12:3456::1]/", "private address"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://100.127.255.254/", "carrier-grade NAT"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
        ("http://[fd00:ec2::254]/", "cloud metadata address"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata address"),
        ("http://100.100.100.200/", "cloud metadata address"),
        ("http://169.254.1.1/", "link-local address"),
        ("http://[fe80::1]/", "link-local address"),
        ("http://224.0.0.1/", "multicast address"),
        ("http://[ff02::1]/", "multicast address"),
        ("http://240.0.0.1/", "reserved address"),
        ("http://255.255.255.255/", "reserved address"),
        ("http://192.0.2.10/", "private address"),  # TEST-NET-1
        ("http://[fe80::1%25eth0]/", "characters a host can not have"),
        ("ftp://example.com/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://example.com/", "only http and https"),
        ("//example.com/", "only http and https"),
        ("http:///path", "no host"),
        ("http://user@example.com/", "user name or password"),
        ("http://user:secret@example.com/", "user name or password"),
        ("http://example.com@127.0.0.1/", "user name or password"),
        ("http://@example.com/", "user name or password"),
        ("http://example.com\\@127.0.0.1/", "backslashes"),
        ("http://exa mple.com/", "spaces"),
        ("http://example.com/\n", "control characters"),
        ("http://example.com:0/", "port 0 is not between 1 and 65535"),
        ("http://example.com:70000/", "can not be parsed"),
        ("http://example.com:http/", "can not be parsed"),
        ("http://[::1/", "can not be parsed"),
        ("http://[not:an:ip]/", "can not be parsed"),
        ("", "empty"),
        ("http://example.com/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_unsafe_urls_are_refused_with_a_reason(
    resolve: Callable[[dict[str, list[str]]], None], url: str, reason: str
) -> None:
    with pytest.raises(UnsafeUrl) as refused:
        url_check(url, allow_loopback=False)
    assert reason in refused.value.reason
    assert str(refused.value) == refused.value.reason


@pytest.mark.parametrize(
    ("url", "host", "port", "addresses"),
    [
        ("https://hooks.example.com/in?x=1", "hooks.example.com", 443, (PUBLIC_V4,)),
        ("http://HOOKS.example.com:8080/", "hooks.example.com", 8080, (PUBLIC_V4,)),
        ("https://hooks.example.com./", "hooks.example.com", 443, (PUBLIC_V4,)),
        ("https://dual.example.com/", "dual.example.com", 443, (PUBLIC_V4, PUBLIC_V6)),
        (f"http://{PUBLIC_V4}/", PUBLIC_V4, 80, (PUBLIC_V4,)),
        (f"https://[{PUBLIC_V6}]:8443/", PUBLIC_V6, 8443, (PUBLIC_V6,)),
    ],
)
def test_public_urls_are_accepted(
    resolve: Callable[[dict[str, list[str]]], None],
    url: str,
    host: str,
    port: int,
    addresses: tuple[str, ...],
) -> None:
    resolve({"hooks.example.com": [PUBLIC_V4], "dual.example.com": [PUBLIC_V4, PUBLIC_V6]})
    checked = url_check(url, allow_loopback=False)
    assert (checked.url, checked.host, checked.port, checked.addresses) == (
        url,
        host,
        port,
        addresses,
    )
    assert checked.scheme == url.split(":", 1)[0].lower()


@pytest.mark.parametrize(
    ("resolved", "reason"),
    [
        (["10.0.0.7"], "resolves to 10.0.0.7 is a private address"),
        (["127.0.0.1"], "resolves to 127.0.0.1 is a loopback address"),
        (["169.254.169.254"], "cloud metadata address"),
        (["::ffff:192.168.0.1"], "(that is 192.168.0.1) is a private address"),
        ([PUBLIC_V4, "10.0.0.7"], "10.0.0.7 is a private address"),  # any one is enough
        ([], "does not resolve to any address"),
    ],
)
def test_a_name_resolving_to_a_forbidden_address_is_refused(
    resolve: Callable[[dict[str, list[str]]], None], resolved: list[str], reason: str
) -> None:
    resolve({"internal.example.com": resolved})
    with pytest.raises(UnsafeUrl) as refused:
        url_check("https://internal.example.com/hook", allow_loopback=False)
    assert reason in refused.value.reason
    assert "'internal.example.com'" in refused.value.reason


def test_the_system_resolver_returns_every_address_and_refuses_unknown_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # localhost comes from /etc/hosts: no DNS server is asked.
    assert set(ssrf.resolve_system("localhost", 80)) <= {"127.0.0.1", "::1"}

    def no_such_name(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(UnsafeUrl, match="does not resolve"):
        url_check("http://no-such-host.invalid/", allow_loopback=False)


def test_international_names_must_be_punycode(
    resolve: Callable[[dict[str, list[str]]], None],
) -> None:
    with pytest.raises(UnsafeUrl, match="punycode"):
        url_check("https://bücher.example/", allow_loopback=False)
    resolve({"xn--bcher-kva.example": [PUBLIC_V4]})
    assert url_check("https://xn--bcher-kva.example/", allow_loopback=False).addresses == (
        PUBLIC_V4,
    )


def test_loopback_is_allowed_only_with_the_setting(
    resolve: Callable[[dict[str, list[str]]], None], settings: Any
) -> None:
    resolve({"localhost": ["127.0.0.1", "::1"]})
    settings.HERALD_ALLOW_LOOPBACK_URLS = False
    for url in ("http://127.0.0.1:9000/", "http://[::1]/", "http://localhost/"):
        with pytest.raises(UnsafeUrl, match="loopback"):
            url_check(url)

    settings.HERALD_ALLOW_LOOPBACK_URLS = True
    assert url_check("http://127.0.0.1:9000/").addresses == ("127.0.0.1",)
    assert len(url_check("http://[::ffff:127.0.0.1]/").addresses) == 1
    assert url_check("http://localhost/").addresses == ("127.0.0.1", "::1")
    # Loopback only: every other internal range stays refused.
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://0.0.0.0/", "http://0/"):
        with pytest.raises(UnsafeUrl):
            url_check(url)
    # An explicit argument wins over the setting.
    with pytest.raises(UnsafeUrl, match="loopback"):
        url_check("http://127.0.0.1/", allow_loopback=False)


# --- the client, against a real local server -----------------------------------------


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes and cut-off reads are what some tests do


@dataclass
class Sink:
    port: int
    seen: list[dict[str, str]] = field(default_factory=list)  # headers of each request


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            sink.seen.append({**dict(self.headers.items()), "path": self.path})
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://10.0.0.1/admin")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/big":
                body = b"x" * (1024 * 1024)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/drip":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                body = b"hello"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received = self.rfile.read(length)
            sink.seen.append({**dict(self.headers.items()), "path": self.path})
            self.send_response(200)
            self.send_header("Content-Length", str(len(received)))
            self.end_headers()
            self.wfile.write(received)

    server = QuietServer(("127.0.0.1", 0), Handler)
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_a_request_connects_to_the_checked_address_and_keeps_the_host_header(
    resolve: Callable[[dict[str, list[str]]], None], sink: Sink
) -> None:
    # sink.test exists only in the resolver override: the connection can only
    # have reached the server through the address the guard resolved and checked.
    resolve({"sink.test": ["127.0.0.1"]})
    response = safe_request(
        method="POST",
        url=f"http://sink.test:{sink.port}/hook?a=1",
        headers={"Content-Type": "application/json"},
        content=b'{"ok": true}',
        timeout=TIMEOUT,
        allow_loopback=True,
    )
    assert response.status_code == 200
    assert response.body == b'{"ok": true}'
    assert response.truncated is False
    assert len(sink.seen) == 1
    assert sink.seen[0]["Host"] == f"sink.test:{sink.port}"
    assert sink.seen[0]["path"] == "/hook?a=1"
    assert sink.seen[0]["Accept-Encoding"] == "identity"


def test_the_loopback_setting_lets_the_client_reach_a_local_sink(sink: Sink, settings: Any) -> None:
    url = f"http://127.0.0.1:{sink.port}/"
    settings.HERALD_ALLOW_LOOPBACK_URLS = False
    with pytest.raises(UnsafeUrl, match="loopback"):
        safe_request(method="GET", url=url, timeout=TIMEOUT)
    assert sink.seen == []

    settings.HERALD_ALLOW_LOOPBACK_URLS = True
    response = safe_request(method="GET", url=url, timeout=TIMEOUT)
    assert (response.status_code, response.body) == (200, b"hello")


def test_dns_rebinding_is_refused_at_connection_time(
    monkeypatch: pytest.MonkeyPatch, sink: Sink
) -> None:
    answers = iter([[PUBLIC_V4], ["127.0.0.1"], ["10.0.0.9"]])
    lookups: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    monkeypatch.setattr(ssrf, "resolver", rebinding)
    url = f"http://rebind.example.com:{sink.port}/"
    assert url_check(url, allow_loopback=False).addresses == (PUBLIC_V4,)
    # The second answer points at the sink on loopback: refused, nothing sent.
    with pytest.raises(UnsafeUrl, match=re.escape("127.0.0.1 is a loopback address")):
        safe_request(method="GET", url=url, timeout=TIMEOUT, allow_loopback=False)
    with pytest.raises(UnsafeUrl, match=re.escape("10.0.0.9 is a private address")):
        safe_request(method="GET", url=url, timeout=TIMEOUT, allow_loopback=True)
    assert lookups == ["rebind.example.com"] * 3
    assert sink.seen == []


def test_every_new_connection_is_checked_again(monkeypatch: pytest.MonkeyPatch, sink: Sink) -> None:
    answers = iter([["127.0.0.1"], ["10.0.0.9"]])
    monkeypatch.setattr(ssrf, "resolver", lambda host, port: next(answers))
    with safe_client(timeout=TIMEOUT, allow_loopback=True) as client:
        first = client.get(f"http://a.test:{sink.port}/")
        assert first.status_code == 200
        with pytest.raises(UnsafeUrl, match=re.escape("10.0.0.9")):
            client.get(f"http://b.test:{sink.port}/")
    assert len(sink.seen) == 1


def test_a_redirect_is_returned_not_followed(sink: Sink) -> None:
    response = safe_request(
        method="GET",
        url=f"http://127.0.0.1:{sink.port}/redirect",
        timeout=TIMEOUT,
        allow_loopback=True,
    )
    assert response.status_code == 302
    assert response.headers["location"] == "http://10.0.0.1/admin"
    assert [seen["path"] for seen in sink.seen] == ["/redirect"]

    with safe_client(timeout=TIMEOUT, allow_loopback=True) as client:
        direct = client.get(f"http://127.0.0.1:{sink.port}/redirect")
        assert direct.status_code == 302
        # Even asked to follow, the target is checked before any connection.
        with pytest.raises(UnsafeUrl, match=re.escape("10.0.0.1 is a private address")):
            client.get(f"http://127.0.0.1:{sink.port}/redirect", follow_redirects=True)


def test_an_oversized_body_is_capped(sink: Sink, settings: Any) -> None:
    url = f"http://127.0.0.1:{sink.port}/big"
    response = safe_request(
        method="GET", url=url, timeout=TIMEOUT, max_response_bytes=1000, allow_loopback=True
    )
    assert response.status_code == 200
    assert response.body == b"x" * 1000
    assert response.truncated is True

    settings.HERALD_OUTBOUND_MAX_RESPONSE_BYTES = 64 * 1024
    default = safe_request(method="GET", url=url, timeout=TIMEOUT, allow_loopback=True)
    assert len(default.body) == 64 * 1024
    assert default.truncated is True

    # The cap is in the transport, so a plain client read is capped too.
    with safe_client(timeout=TIMEOUT, max_response_bytes=5000, allow_loopback=True) as client:
        assert len(client.get(url).content) == 5000


def test_a_body_exactly_at_the_cap_is_not_truncated(sink: Sink) -> None:
    response = safe_request(
        method="GET",
        url=f"http://127.0.0.1:{sink.port}/",
        timeout=TIMEOUT,
        max_response_bytes=5,
        allow_loopback=True,
    )
    assert (response.body, response.truncated) == (b"hello", False)


def test_a_slow_response_is_cut_at_the_timeout(sink: Sink) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        safe_request(
            method="GET",
            url=f"http://127.0.0.1:{sink.port}/drip",
            timeout=1.0,
            allow_loopback=True,
        )
    assert time.monotonic() - started < 3


def test_a_closed_port_is_a_network_error_not_a_crash() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        safe_request(
            method="GET", url=f"http://127.0.0.1:{port}/", timeout=TIMEOUT, allow_loopback=True
        )


@pytest.mark.parametrize("timeout", [0, -1, 15.5, 60])
def test_the_timeout_is_bounded(timeout: float) -> None:
    with pytest.raises(ValueError, match="at most 15 seconds"):
        safe_client(timeout=timeout)


# --- TLS: connected to the checked IP, verified against the hostname ----------------


@dataclass
class TlsSink:
    port: int
    client_context: ssl.SSLContext  # trusts only the sink's certificate
    server_names: list[str | None] = field(default_factory=list)  # SNI of each handshake
    hosts: list[str] = field(default_factory=list)


def self_signed(hostname: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def tls_sink(tmp_path: Path) -> Iterator[TlsSink]:
    certificate, key = self_signed("sink.test")
    (tmp_path / "cert.pem").write_bytes(certificate)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    sink = TlsSink(port=0, client_context=ssl.create_default_context(cadata=certificate.decode()))

    def record_sni(_socket: Any, server_name: str | None, _context: Any) -> None:
        sink.server_names.append(server_name)

    server_context.sni_callback = record_sni

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            sink.hosts.append(self.headers["Host"])
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = QuietServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield sink
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_https_verifies_the_hostname_while_connecting_to_the_checked_address(
    resolve: Callable[[dict[str, list[str]]], None], tls_sink: TlsSink
) -> None:
    resolve({"sink.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with safe_client(
        timeout=TIMEOUT, allow_loopback=True, ssl_context=tls_sink.client_context
    ) as client:
        response = client.get(f"https://sink.test:{tls_sink.port}/")
        assert response.status_code == 204
        # Same address, other name: the certificate is for sink.test, so refused.
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            client.get(f"https://other.test:{tls_sink.port}/")
    assert tls_sink.server_names[0] == "sink.test"
    assert tls_sink.hosts == [f"sink.test:{tls_sink.port}"]
