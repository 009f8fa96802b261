"""An SSRF corpus: every spelling of an internal address, refused when saved and when connecting.

tests/channels_delivery/test_ssrf.py proves the guard's pieces (url_check's
reasons, rebinding, caps, TLS). This corpus goes at it the way an attacker
would, through each door a tenant has:

* saved: a webhook endpoint's ``url`` and an ESP integration's ``api_url``
  through the API, which must answer 422 problem+json naming that field;
* connecting: ``safe_request`` (what every provider sends through) and the
  checking network backend on its own, given a host that already got past any
  spelling check, with the operating system's resolver for numeric forms and
  /etc/hosts names, so what glibc would make of "0x7f.1" is what gets checked;
* redirects: a local sink answering 3xx towards internal addresses; the
  clients return the 3xx and never make the second request, and even a caller
  that asks httpx to follow has each hop checked.

HERALD_ALLOW_LOOPBACK_URLS is False throughout, except for the sink tests,
where loopback is allowed for the sink and every non-loopback target stays refused.
"""

import http.server
import ipaddress
import threading
from collections.abc import Iterator
from typing import Any

import httpcore
import pytest
from django_tenants.utils import tenant_context

from channels_delivery import ssrf
from channels_delivery.models import Integration, WebhookEndpoint
from channels_delivery.providers.base import RenderedMessage, ResultKind
from channels_delivery.providers.chat import SlackProvider
from channels_delivery.ssrf import CheckingBackend, UnsafeUrl, safe_client, safe_request
from tenants.models import Tenant
from tests.conftest import ApiClient

PROBLEM_JSON = "application/problem+json"
TIMEOUT = 2.0
AMBIGUOUS = "ambiguous numeric address"
UNSPECIFIED = str(ipaddress.IPv4Address(0))  # 0.0.0.0, as a host to connect to

# (URL, a fragment of the reason the tenant is told). Literal hosts: no DNS at all.
LITERALS: list[tuple[str, str]] = [
    # IPv4 loopback in the forms inet_aton() accepts
    ("http://2130706433/", AMBIGUOUS),
    ("http://017700000001/", AMBIGUOUS),
    ("http://0177.0.0.1/", AMBIGUOUS),
    ("http://0177.1/", AMBIGUOUS),
    ("http://00000177.0.0.1/", AMBIGUOUS),
    ("http://0x7f.0.0.1/", AMBIGUOUS),
    ("http://0x7F.0x0.0x0.0x1/", AMBIGUOUS),
    ("http://0x7f000001/", AMBIGUOUS),
    ("http://0x7f.1/", AMBIGUOUS),
    ("http://127.1/", AMBIGUOUS),
    ("http://127.0.1/", AMBIGUOUS),
    ("http://127.000.000.001/", AMBIGUOUS),
    ("http://1.2.3.4.5/", AMBIGUOUS),
    # private and metadata addresses in the same disguises
    ("http://3232235777/", AMBIGUOUS),  # 192.168.1.1
    ("http://10.1/", AMBIGUOUS),  # 10.0.0.1
    ("http://192.168.257/", AMBIGUOUS),  # 192.168.1.1
    ("http://2852039166/latest/meta-data/", AMBIGUOUS),  # 169.254.169.254
    ("http://0xa9fea9fe/", AMBIGUOUS),
    ("http://0251.0376.0251.0376/", AMBIGUOUS),
    ("http://0/", AMBIGUOUS),
    # plain dotted quads
    ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
    ("http://127.255.255.254:8080/", "loopback address"),
    ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
    ("http://0.0.0.0:8000/", "unspecified address"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
    ("http://169.254.170.2/v2/credentials", "link-local address"),  # ECS task metadata
    ("http://192.0.0.192/", "cloud metadata address"),  # Oracle Cloud
    ("http://192.0.0.8/", "private address"),  # IETF protocol assignments
    ("http://[::ffff:192.0.0.192]/", "cloud metadata address"),
    ("http://100.100.100.200/", "cloud metadata address"),
    ("http://10.0.0.1/", "private address"),
    ("http://172.31.255.255/", "private address"),
    ("http://192.168.0.1/", "private address"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://198.18.0.1/", "private address"),  # benchmarking
    ("http://224.0.0.251/", "multicast address"),
    ("http://255.255.255.255/", "reserved address"),
    # IPv6
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://[0:0:0:0:0:0:0:1]/", "::1 is a loopback address"),
    ("http://[0000::1]:8080/", "loopback address"),
    ("http://[::ffff:127.0.0.1]/", "(that is 127.0.0.1) is a loopback address"),
    ("http://[::ffff:7f00:1]/", "(that is 127.0.0.1) is a loopback address"),
    ("http://[::FFFF:7F00:0001]/", "(that is 127.0.0.1) is a loopback address"),
    ("http://[::ffff:a9fe:a9fe]/", "cloud metadata address"),
    ("http://[::ffff:0.0.0.0]/", "unspecified address"),
    ("http://[::ffff:0:7f00:1]/", "reserved address"),  # IPv4-translated (SIIT)
    ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata address"),  # NAT64
    ("http://[2002:a9fe:a9fe::]/", "cloud metadata address"),  # 6to4
    ("http://[::]/", "unspecified address"),
    ("http://[fe80::]/", "link-local address"),
    ("http://[fe80::1]:8080/", "link-local address"),
    ("http://[fc00::]/", "private address"),
    ("http://[fc00::1]/", "private address"),
    ("http://[fd00:ec2::254]/", "cloud metadata address"),
    ("http://[ff02::1]/", "multicast address"),
    ("http://[2001:db8::1]/", "private address"),  # documentation
    ("http://[fe80::1%25eth0]/", "characters a host can not have"),
    # loopback names
    ("http://localhost/", "loopback name"),
    ("http://localhost./", "loopback name"),
    ("http://localhost../", "loopback name"),
    ("http://LOCALHOST/", "loopback name"),
    ("http://LocalHost.:8080/", "loopback name"),
    ("http://admin.localhost/", "loopback name"),
    ("http://Admin.LOCALHOST./", "loopback name"),
    # userinfo and parser confusion
    ("http://example.com@127.0.0.1/", "user name or password"),
    ("http://example.com:80@127.0.0.1/", "user name or password"),
    ("http://[::1]@example.com/", "user name or password"),
    ("http://127.0.0.1#@example.com/", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1?@example.com/", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1:80#@example.com/", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1%2f@example.com/", "user name or password"),
    ("http://%31%32%37.0.0.1/", "characters a host can not have"),
    ("http://example.com\\@127.0.0.1/", "backslashes"),
    ("http://127.0.0.1\t.example.com/", "control characters"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "not ASCII"),  # fullwidth digits
    ("http://127。0。0。1/", "not ASCII"),  # ideographic full stops
    ("gopher://127.0.0.1:6379/_INFO", "only http and https"),
    ("dict://127.0.0.1:11211/", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
]

# Names, and what the resolver override answers for them.
NAMES: dict[str, list[str]] = {
    "metadata.google.internal": ["169.254.169.254"],
    "metadata": ["169.254.169.254"],
    "instance-data.ec2.internal": ["169.254.169.254"],
    "db.internal.example.com": ["10.0.12.7"],
    "loopback.example.com": ["127.0.0.1"],
    "v6loop.example.com": ["::1"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "scoped.example.com": ["fe80::1%eth0"],
    "zero.example.com": [UNSPECIFIED],
    "mixed.example.com": ["93.184.216.34", "2606:2800:220:1::1", "192.168.1.10"],
    "ula.example.com": ["fd12:3456::1"],
}
RESOLVED: list[tuple[str, str]] = [
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata address"),
    ("http://metadata/computeMetadata/v1/", "cloud metadata address"),
    ("http://instance-data.ec2.internal/latest/", "cloud metadata address"),
    ("https://db.internal.example.com/", "resolves to 10.0.12.7 is a private address"),
    ("https://loopback.example.com/", "resolves to 127.0.0.1 is a loopback address"),
    ("https://v6loop.example.com/", "resolves to ::1 is a loopback address"),
    ("https://mapped.example.com/", "(that is 127.0.0.1) is a loopback address"),
    ("https://scoped.example.com/", "link-local address"),
    ("https://zero.example.com/", "unspecified address"),
    ("https://mixed.example.com/", "192.168.1.10 is a private address"),
    ("https://ula.example.com/", "private address"),
]
CORPUS = LITERALS + RESOLVED


@pytest.fixture(autouse=True)
def _no_loopback_and_no_dns(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = False

    def resolve(host: str, port: int) -> list[str]:
        if host not in NAMES:
            raise AssertionError(f"unexpected lookup of {host!r}")
        return NAMES[host]

    monkeypatch.setattr(ssrf, "resolver", resolve)


def _pointers(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.content
    assert response["Content-Type"] == PROBLEM_JSON
    body = response.json()
    assert body["type"] == "urn:herald:problem:validation-failed"
    return {error["pointer"]: error["detail"] for error in body["errors"]}


# --- when saved ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "reason"), CORPUS)
def test_a_webhook_endpoint_url_is_refused_when_saved(
    api_a: ApiClient, tenant_a: Tenant, url: str, reason: str
) -> None:
    response = api_a.post(
        "/api/v1/webhook-endpoints", {"url": url}, content_type="application/json"
    )
    errors = _pointers(response)
    assert list(errors) == ["/url"]
    assert reason in errors["/url"]
    with tenant_context(tenant_a):
        assert not WebhookEndpoint.objects.exists()


@pytest.mark.django_db
def test_a_saved_endpoint_can_not_be_moved_to_an_internal_url(
    api_a: ApiClient, tenant_a: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = "https://93.184.216.34/hook"
    created = api_a.post(
        "/api/v1/webhook-endpoints", {"url": public}, content_type="application/json"
    )
    assert created.status_code == 201, created.content
    path = f"/api/v1/webhook-endpoints/{created.json()['id']}"
    for url, reason in CORPUS:
        errors = _pointers(api_a.patch(path, {"url": url}, content_type="application/json"))
        assert reason in errors["/url"], url
    with tenant_context(tenant_a):
        assert list(WebhookEndpoint.objects.values_list("url", flat=True)) == [public]


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "reason"), [case for case in CORPUS if case[0].startswith("http")])
def test_an_esp_api_url_is_refused_when_saved(
    api_a: ApiClient, tenant_a: Tenant, url: str, reason: str
) -> None:
    response = api_a.post(
        "/api/v1/integrations",
        {
            "channel": "email",
            "provider": "anymail",
            "name": "ESP",
            "config": {
                "esp": "postmark",
                "api_key": "pm-server-token-7f3a9c2e51",
                "from_email": "Acme <no-reply@acme.example>",
                "api_url": url,
            },
        },
        content_type="application/json",
    )
    errors = _pointers(response)
    assert list(errors) == ["/config/api_url"]
    assert reason in errors["/config/api_url"]
    with tenant_context(tenant_a):
        assert not Integration.objects.exists()


# --- when connecting ------------------------------------------------------------------


@pytest.mark.parametrize(("url", "reason"), CORPUS)
def test_a_request_is_refused_before_any_connection(url: str, reason: str) -> None:
    opened: list[tuple[str, int]] = []
    original = httpcore.SyncBackend.connect_tcp

    def recording(self: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        opened.append((host, port))
        return original(self, host, port, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpcore.SyncBackend, "connect_tcp", recording)
        with pytest.raises(UnsafeUrl) as refused:
            safe_request(method="POST", url=url, content=b"{}", timeout=TIMEOUT)
    assert reason in refused.value.reason
    assert opened == []


# Hosts as they would reach the network backend if a spelling check were skipped,
# resolved by the operating system (numeric forms and /etc/hosts: no DNS server).
SYSTEM_RESOLVED_HOSTS = [
    "2130706433",
    "017700000001",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "127.1",
    "0",
    UNSPECIFIED,
    "3232235777",
    "0xa9fea9fe",
    "2852039166",
    "localhost",
    "LOCALHOST",
    "127.0.0.1",
    "::1",
    "[::1]",
    "::ffff:127.0.0.1",
    "[::ffff:7f00:1]",
    "fe80::",
    "fc00::",
    "169.254.169.254",
]


@pytest.mark.parametrize("host", SYSTEM_RESOLVED_HOSTS)
def test_the_connect_time_check_alone_refuses_what_the_system_resolves_to_internal(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setattr(ssrf, "resolver", ssrf.resolve_system)
    opened: list[str] = []
    monkeypatch.setattr(
        httpcore.SyncBackend,
        "connect_tcp",
        lambda self, address, *args, **kwargs: opened.append(address),
    )
    backend = CheckingBackend(allow_loopback=False)
    with pytest.raises(UnsafeUrl) as refused:
        backend.connect_tcp(host, 9, timeout=TIMEOUT)
    assert any(
        kind in refused.value.reason
        for kind in ("loopback", "private", "unspecified", "link-local", "metadata", "resolve")
    ), refused.value.reason
    assert opened == []


def test_the_system_resolver_sees_numeric_forms_as_the_loopback_they_are() -> None:
    """Why the spelling check refuses them: the OS would connect to 127.0.0.1."""
    for host in ("2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1"):
        assert ssrf.resolve_system(host, 80) == ["127.0.0.1"], host


def test_unix_sockets_are_refused() -> None:
    with pytest.raises(UnsafeUrl, match="unix sockets"):
        CheckingBackend(allow_loopback=True).connect_unix_socket("/var/run/docker.sock")


# --- redirects --------------------------------------------------------------------------


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[tuple[int, list[str]]]:
    """A sink on 127.0.0.1 that answers /<status>?to=<url> with that redirect."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            seen.append(self.path)
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            status, _, target = self.path.lstrip("/").partition("?to=")
            self.send_response(int(status))
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

    server = _QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


REDIRECT_TARGETS = [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
    ("http://10.0.0.1/admin", "private address"),
    ("http://[::ffff:a9fe:a9fe]/", "cloud metadata address"),
    ("http://2130706433/", AMBIGUOUS),
    ("http://metadata.google.internal/", "cloud metadata address"),
    ("gopher://127.0.0.1:6379/_INFO", "only http and https"),
]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(("target", "reason"), REDIRECT_TARGETS)
def test_a_redirect_to_an_internal_address_is_answered_never_followed(
    redirector: tuple[int, list[str]], settings: Any, status: int, target: str, reason: str
) -> None:
    port, seen = redirector
    settings.HERALD_ALLOW_LOOPBACK_URLS = True  # for the sink; nothing else is loopback
    url = f"http://127.0.0.1:{port}/{status}?to={target}"
    response = safe_request(method="POST", url=url, content=b"{}", timeout=TIMEOUT)
    assert response.status_code == status
    assert response.headers["location"] == target
    assert seen == [f"/{status}?to={target}"]
    # A caller that asks httpx to follow anyway: the next hop is checked like the first.
    with safe_client(timeout=TIMEOUT) as client, pytest.raises(UnsafeUrl) as refused:
        client.get(url, follow_redirects=True)
    assert reason in refused.value.reason
    assert len(seen) == 2


@pytest.mark.parametrize(("url", "reason"), LITERALS)
def test_a_chat_address_is_refused_by_the_provider_not_crashed_on(url: str, reason: str) -> None:
    """Chat URLs come from subscriber data, so the send is where they meet the guard:
    every spelling becomes a failed result with the reason, never an exception
    (httpx's own InvalidURL for "0177.0.0.1" used to escape the provider)."""
    message = RenderedMessage(
        message_id="m-1", channel="chat", content={"text": "hi"}, address={"url": url}
    )
    result = SlackProvider().send(message, {"timeout": TIMEOUT})
    assert result.kind is not ResultKind.ACCEPTED
    assert reason in result.error, result.error


def test_a_public_address_passes_so_the_corpus_is_not_refusing_everything() -> None:
    checked = ssrf.url_check("https://93.184.216.34/hook")
    assert checked.addresses == ("93.184.216.34",)
    assert ssrf.url_check("https://[2606:2800:220:1::1]/").addresses == ("2606:2800:220:1::1",)
