"""The SSRF guard: tenant-supplied URLs never reach Herald's own network.

A URL is checked when it is saved (``url_check``) and again on every new
connection, after DNS resolution, and the socket is opened to the very address
that passed the check. Checking the name once and letting the HTTP library
resolve it again would let a DNS server answer "public" to the check and
"169.254.169.254" to the connection (DNS rebinding), so the check lives in the
httpcore network backend, where the connection is made. TLS still verifies the
certificate against the URL's hostname, and the Host header is left alone.

Redirects are never followed (a 3xx is the answer), response bodies are read
up to a cap, and every exchange is bounded in time.
"""

import functools
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_TIMEOUT_SECONDS = 15.0
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
SCHEMES = {"http": 80, "https": 443}
# Connections kept per client (one client per thread and settings): idle ones
# close after POOL_KEEPALIVE_SECONDS.
POOL_MAX_CONNECTIONS = 20
POOL_MAX_KEEPALIVE = 10
POOL_KEEPALIVE_SECONDS = 5.0
POOLED_CLIENTS_MAX = 8
CAPPED_STREAM = "herald_capped_stream"  # response extension: the CappedStream, for .truncated

METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"): "a cloud metadata address",
    ipaddress.ip_address("fd00:ec2::254"): "a cloud metadata address",
    ipaddress.ip_address("100.100.100.200"): "a cloud metadata address",
    ipaddress.ip_address("192.0.0.192"): "a cloud metadata address",  # Oracle Cloud
}
CGNAT = ipaddress.ip_network("100.64.0.0/10")
# IETF protocol assignments: not globally reachable (RFC 6890), but Python before
# 3.11.10 / 3.12.4 calls most of it global (gh-113171), so it is named here.
IETF_PROTOCOL = ipaddress.ip_network("192.0.0.0/24")
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# A label inet_aton() would read as a number: decimal, octal (leading 0) or hex.
NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


class UnsafeUrl(ValueError):
    """The URL may not be requested; ``reason`` says why, for the tenant."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class HostUnresolved(UnsafeUrl):
    """The host name gave no address just now: nothing was refused. When a URL
    is saved that is an error to fix; when sending through a URL that resolved
    before, it is most likely the resolver's outage, which a retry outlives."""


@dataclass(frozen=True, kw_only=True)
class CheckedUrl:
    url: str
    scheme: str
    host: str  # lower-case, without brackets or trailing dot
    port: int
    addresses: tuple[str, ...]  # what the host resolved to, all of them allowed


@dataclass(frozen=True, kw_only=True)
class SafeResponse:
    status_code: int
    headers: Mapping[str, str]
    body: bytes  # at most the cap
    truncated: bool  # the server sent more than the cap


def resolve_system(host: str, port: int) -> list[str]:
    """Every address the operating system would connect to for ``host``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise HostUnresolved(f"the host {host!r} does not resolve ({error})") from error
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# Module-level so tests (and nothing else) can map names without a DNS server.
resolver: Callable[[str, int], list[str]] = resolve_system


def _loopback_allowed(allow_loopback: bool | None) -> bool:
    if allow_loopback is not None:
        return allow_loopback
    from django.conf import settings

    return bool(getattr(settings, "HERALD_ALLOW_LOOPBACK_URLS", False))


def _normalised(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 form really reaches, when it embeds one."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    # IPv4-compatible (::a.b.c.d, deprecated) but not :: or ::1 themselves.
    if 1 < int(address) <= 0xFFFFFFFF:
        return ipaddress.IPv4Address(int(address))
    return address


def address_refusal(address: str, *, allow_loopback: bool) -> str | None:
    """Why connecting to ``address`` is refused, or None when it is a public address."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    checked = _normalised(parsed)
    shown = str(parsed) if checked == parsed else f"{parsed} (that is {checked})"
    if checked in METADATA_ADDRESSES:
        return f"{shown} is {METADATA_ADDRESSES[checked]}"
    if checked.is_unspecified or checked in THIS_NETWORK:
        return f"{shown} is an unspecified address"
    if checked.is_loopback:
        return None if allow_loopback else f"{shown} is a loopback address"
    if checked.is_link_local:
        return f"{shown} is a link-local address"
    if checked.is_multicast:
        return f"{shown} is a multicast address"
    if isinstance(checked, ipaddress.IPv4Address) and checked in CGNAT:
        return f"{shown} is a carrier-grade NAT (shared) address"
    if isinstance(checked, ipaddress.IPv4Address) and checked in IETF_PROTOCOL:
        return f"{shown} is a private address (IETF protocol assignments)"
    if checked.is_reserved:
        return f"{shown} is a reserved address"
    if checked.is_private:
        return f"{shown} is a private address"
    if not checked.is_global:
        return f"{shown} is not a public address"
    return None


def _host_refusal(host: str, *, allow_loopback: bool) -> str | None:
    """Refuse host spellings whose meaning depends on who parses them."""
    if not host:
        return "the URL has no host"
    if not host.isascii():
        return f"the host {host!r} is not ASCII; write international names in punycode (xn--…)"
    if any(char in host for char in "%\\@ ") or not host.isprintable():
        return f"the host {host!r} contains characters a host can not have"
    bare = host.rstrip(".")
    if ":" in host:  # an IPv6 literal (urlsplit removed the brackets)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"the host {host!r} is not a valid IPv6 address"
        return None
    labels = bare.split(".")
    if all(NUMERIC_LABEL.match(label) for label in labels):
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            canonical = ""
        if canonical != host:
            return (
                f"the host {host!r} is an ambiguous numeric address (decimal, octal, hex or "
                "shortened); write an IPv4 address as four decimal numbers, like 93.184.216.34"
            )
        return None
    if not allow_loopback and (bare == "localhost" or bare.endswith(".localhost")):
        return f"the host {host!r} is a loopback name"
    return None


def url_parse(url: str, *, allow_loopback: bool | None = None) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL whose spelling is acceptable; no DNS."""
    loopback = _loopback_allowed(allow_loopback)
    if not isinstance(url, str) or not url:
        raise UnsafeUrl("the URL is empty")
    if len(url) > 2048:
        raise UnsafeUrl("the URL is longer than 2048 characters")
    if any(char.isspace() or not char.isprintable() for char in url) or "\\" in url:
        raise UnsafeUrl("the URL contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeUrl(f"the URL can not be parsed ({error})") from error
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsafeUrl(f"only http and https URLs are allowed, not {scheme or 'no scheme'!r}")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL contains a user name or password (user@host); put it elsewhere")
    host = (parts.hostname or "").lower()
    refusal = _host_refusal(host, allow_loopback=loopback)
    if refusal:
        raise UnsafeUrl(refusal)
    if port is None:
        port = SCHEMES[scheme]
    if not 1 <= port <= 65535:
        raise UnsafeUrl(f"the port {port} is not between 1 and 65535")
    return scheme, host.rstrip(".") if ":" not in host else host, port


def host_resolve_checked(host: str, port: int, *, allow_loopback: bool) -> tuple[str, ...]:
    """Resolve ``host`` and return its addresses, refusing if ANY of them is forbidden."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addresses = [str(literal)] if literal is not None else resolver(host, port)
    if not addresses:
        raise HostUnresolved(f"the host {host!r} does not resolve to any address")
    for address in addresses:
        refusal = address_refusal(address, allow_loopback=allow_loopback)
        if refusal:
            named = "" if literal is not None else f"the host {host!r} resolves to "
            raise UnsafeUrl(f"{named}{refusal}")
    return tuple(addresses)


def url_check(url: str, *, allow_loopback: bool | None = None) -> CheckedUrl:
    """Check a tenant-supplied URL, including what its host resolves to now.

    Use it when a URL is saved; ``safe_client`` checks again on every connection.
    """
    loopback = _loopback_allowed(allow_loopback)
    scheme, host, port = url_parse(url, allow_loopback=loopback)
    addresses = host_resolve_checked(host, port, allow_loopback=loopback)
    return CheckedUrl(url=url, scheme=scheme, host=host, port=port, addresses=addresses)


class CheckingBackend(httpcore.NetworkBackend):
    """Opens TCP connections only to addresses that passed the check just now."""

    def __init__(self, *, allow_loopback: bool) -> None:
        self._allow_loopback = allow_loopback
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bare = host.strip("[]")
        addresses = host_resolve_checked(bare, port, allow_loopback=self._allow_loopback)
        *others, last = addresses
        for address in others:
            try:
                return self._connect(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                continue  # the next checked address of the same host
        return self._connect(last, port, timeout, local_address, socket_options)

    def _connect(
        self,
        address: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> httpcore.NetworkStream:
        # An IP literal: socket.create_connection does no DNS lookup of its own.
        return self._backend.connect_tcp(address, port, timeout, local_address, socket_options)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise UnsafeUrl("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class CappedStream(httpx.SyncByteStream):
    """Yields at most ``limit`` bytes, and fails once the exchange's deadline passed."""

    def __init__(self, stream: httpx.SyncByteStream, *, limit: int, deadline: float) -> None:
        self._stream = stream
        self._limit = limit
        self._deadline = deadline
        self.truncated = False

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        for chunk in self._stream:
            if time.monotonic() > self._deadline:
                raise httpx.ReadTimeout("the response took longer than the timeout")
            if received + len(chunk) > self._limit:
                self.truncated = True
                yield chunk[: self._limit - received]
                return
            received += len(chunk)
            yield chunk

    def close(self) -> None:
        self._stream.close()


class SafeTransport(httpx.HTTPTransport):
    """httpx transport: URL spelling checked per request, address checked per connection."""

    def __init__(
        self,
        *,
        timeout: float,
        max_response_bytes: int,
        allow_loopback: bool,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(trust_env=False, retries=0)
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes
        self._allow_loopback = allow_loopback
        # Replaces the pool httpx built, to give it the checking network backend
        # (httpx has no public option for it; pinned httpx<0.29, tested). Idle
        # connections are kept briefly, so a worker sending many messages to one
        # receiver reuses them: each was checked when it was opened.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or default_ssl_context(),
            http1=True,
            http2=False,
            retries=0,
            network_backend=CheckingBackend(allow_loopback=allow_loopback),
            max_connections=POOL_MAX_CONNECTIONS,
            max_keepalive_connections=POOL_MAX_KEEPALIVE,
            keepalive_expiry=POOL_KEEPALIVE_SECONDS,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self._timeout
        url_parse(str(request.url), allow_loopback=self._allow_loopback)
        response = super().handle_request(request)
        if not isinstance(response.stream, httpx.SyncByteStream):  # pragma: no cover
            raise TypeError("httpx returned a non-streaming response")
        capped = CappedStream(response.stream, limit=self._max_response_bytes, deadline=deadline)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=capped,
            extensions={**response.extensions, CAPPED_STREAM: capped},
        )


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """The certifi CA bundle, loaded once per process: loading it takes longer
    than a request to a nearby receiver. An SSLContext is safe to share between
    threads."""
    return httpx.create_ssl_context(trust_env=False)


def _timeout_checked(timeout: float) -> float:
    if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise ValueError(f"timeout must be above 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds")
    return timeout


def _max_response_bytes(max_response_bytes: int | None) -> int:
    if max_response_bytes is None:
        from django.conf import settings

        max_response_bytes = int(
            getattr(settings, "HERALD_OUTBOUND_MAX_RESPONSE_BYTES", DEFAULT_MAX_RESPONSE_BYTES)
        )
    if max_response_bytes < 0:
        raise ValueError("max_response_bytes must not be negative")
    return max_response_bytes


def safe_client(
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    max_response_bytes: int | None = None,
    allow_loopback: bool | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.Client:
    """An httpx client for tenant-supplied URLs: checked, no redirects, capped, bounded.

    ``timeout`` bounds each connect/read/write and the whole response read
    (checked between chunks). Bodies are cut at ``max_response_bytes`` raw bytes;
    ``Accept-Encoding: identity`` asks servers not to compress. Certificates are
    verified against the URL's hostname, with the certifi CA bundle unless an
    ``ssl_context`` is given.
    """
    _timeout_checked(timeout)
    return httpx.Client(
        transport=SafeTransport(
            timeout=timeout,
            max_response_bytes=_max_response_bytes(max_response_bytes),
            allow_loopback=_loopback_allowed(allow_loopback),
            ssl_context=ssl_context,
        ),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,  # no proxy or netrc from the environment
        headers={"Accept-Encoding": "identity"},
    )


_clients = threading.local()


def _pooled_client(
    *, timeout: float, max_response_bytes: int, allow_loopback: bool
) -> httpx.Client:
    """This thread's client for these settings, kept so that its connections are
    reused (threads: a webhook fan-out sends from several at once)."""
    clients: dict[tuple[float, int, bool], httpx.Client] | None = getattr(
        _clients, "by_settings", None
    )
    if clients is None:
        clients = _clients.by_settings = {}
    key = (timeout, max_response_bytes, allow_loopback)
    client = clients.get(key)
    if client is None:
        if len(clients) >= POOLED_CLIENTS_MAX:
            for stale in clients.values():
                stale.close()
            clients.clear()
        client = clients[key] = safe_client(
            timeout=timeout, max_response_bytes=max_response_bytes, allow_loopback=allow_loopback
        )
    return client


def safe_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    max_response_bytes: int | None = None,
    allow_loopback: bool | None = None,
) -> SafeResponse:
    """One request through ``safe_client``; the body is read up to the cap.

    Raises ``UnsafeUrl`` for a refused URL or address and ``httpx.HTTPError``
    for network failures (timeouts, refused connections).
    """
    limit = _max_response_bytes(max_response_bytes)
    loopback = _loopback_allowed(allow_loopback)
    # httpx parses the URL before the transport sees it and refuses some spellings
    # (octal labels, tabs, non-ASCII digits) with its own InvalidURL, which callers
    # do not catch: check the spelling first, so every refusal is an UnsafeUrl.
    url_parse(url, allow_loopback=loopback)
    client = _pooled_client(
        timeout=_timeout_checked(timeout), max_response_bytes=limit, allow_loopback=loopback
    )
    # The client stays open: the next request of this thread reuses its connections.
    request = client.build_request(method, url, headers=headers, content=content)
    response = client.send(request, stream=True)
    try:
        body = bytearray()
        cut = False
        for chunk in response.iter_bytes():
            room = limit - len(body)
            if len(chunk) > room:
                body += chunk[:room]
                cut = True
                break
            body += chunk
        capped = response.extensions.get(CAPPED_STREAM)
        cut = cut or (isinstance(capped, CappedStream) and capped.truncated)
    finally:
        response.close()
    return SafeResponse(
        status_code=response.status_code,
        headers=dict(response.headers),
        body=bytes(body),
        truncated=cut,
    )
