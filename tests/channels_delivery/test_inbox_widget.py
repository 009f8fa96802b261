"""The embeddable inbox widget (channels_delivery/static/herald/inbox.js).

A tenant's page, on the tenant's own origin, loads the script from Herald, calls
the inbox API cross-origin and keeps a WebSocket open. These tests check each
of those is possible (the script is served to anyone, the inbox API and only it
answers CORS), and then drive the widget in a real Chromium against a real
Herald ASGI server, from a page on another origin.
"""

import http.server
import json
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.inbox_auth import inbox_secret_get, subscriber_hash
from channels_delivery.models import InboxSettings, Message, MessageStatus
from channels_delivery.services.inbox import inbox_notify
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.browser import (
    Screenshots,
    chromium,
    herald_server,
    new_page,
    require_chromium,
)
from tests.ports import free_port
from tests.threads import in_own_connection
from tests.workers import ROOT

pytestmark = pytest.mark.django_db

SCRIPT_PATH = "/static/herald/inbox.js"
SCRIPT_FILE = ROOT / "channels_delivery" / "static" / "herald" / "inbox.js"
INBOX_HEADERS = ("X-Herald-Tenant", "X-Herald-Subscriber", "X-Herald-Subscriber-Hash")
FOREIGN_ORIGIN = "https://app.customer.example"


def body_of(response: Any) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return bytes(response.content)


# --- the script is served --------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "alpha.localhost", "herald.example.net"])
def test_the_script_is_served_to_any_origin_on_every_host(host: str) -> None:
    """Tenant hosts, the public host, and a host Herald does not know: static files
    are answered before the tenant lookup, so the embed URL works on any of them."""
    response = Client().get(SCRIPT_PATH, HTTP_HOST=host, HTTP_ORIGIN=FOREIGN_ORIGIN)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert response["Access-Control-Allow-Origin"] == "*"
    cache_control = response["Cache-Control"]
    assert "public" in cache_control
    max_age = int(cache_control.split("max-age=")[1].split(",")[0])
    assert max_age > 0
    assert b"HeraldInbox" in body_of(response)


def test_the_script_is_revalidated_cheaply() -> None:
    first = Client().get(SCRIPT_PATH)
    again = Client().get(SCRIPT_PATH, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304


def test_the_script_never_parses_data_as_html() -> None:
    """Message content is tenant-authored: the widget writes it as text only."""
    source = SCRIPT_FILE.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source, f"inbox.js uses {sink}"
    assert "textContent" in source


# --- CORS on the inbox API, and only there -------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/inbox/messages"),
        ("POST", "/api/v1/inbox/messages/read-all"),
        ("POST", f"/api/v1/inbox/messages/{uuid.uuid4()}/read"),
        ("POST", f"/api/v1/inbox/messages/{uuid.uuid4()}/archive"),
    ],
)
def test_the_widgets_requests_pass_the_cors_preflight(method: str, path: str) -> None:
    """What Chromium asks before each of the widget's requests, without credentials."""
    response = Client().options(
        path,
        HTTP_ORIGIN=FOREIGN_ORIGIN,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="x-herald-subscriber,x-herald-subscriber-hash,"
        "x-herald-tenant",
    )

    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    assert method in response["Access-Control-Allow-Methods"]
    allowed = {name.strip().lower() for name in response["Access-Control-Allow-Headers"].split(",")}
    assert {name.lower() for name in INBOX_HEADERS} <= allowed
    assert "Access-Control-Allow-Credentials" not in response


def test_answers_and_refusals_of_the_inbox_are_readable_cross_origin(tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        secret = inbox_secret_get().secret
    good = Client(
        headers={
            "Origin": FOREIGN_ORIGIN,
            "X-Herald-Tenant": tenant_a.slug,
            "X-Herald-Subscriber": "ada",
            "X-Herald-Subscriber-Hash": subscriber_hash(secret=secret, external_id="ada"),
        }
    )
    listed = good.get("/api/v1/inbox/messages")
    refused = Client(headers={"Origin": FOREIGN_ORIGIN}).get("/api/v1/inbox/messages")

    assert listed.status_code == 200
    assert listed["Access-Control-Allow-Origin"] == "*"
    # The widget shows the problem's detail, so the browser must let it read the 401.
    assert refused.status_code == 401
    assert refused["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    "path", ["/api/v1/events", "/api/v1/me", "/api/v1/inbox/secret", "/api/v1/inbox/secret/rotate"]
)
def test_other_api_endpoints_do_not_answer_cors(path: str, api_a: Any) -> None:
    """API keys belong on servers: no browser on another origin may use them,
    and that includes the inbox secret's endpoints."""
    preflight = Client().options(
        path,
        HTTP_ORIGIN=FOREIGN_ORIGIN,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
    )
    answer = api_a.get(path, HTTP_ORIGIN=FOREIGN_ORIGIN)

    assert "Access-Control-Allow-Origin" not in preflight
    assert "Access-Control-Allow-Headers" not in preflight
    assert "Access-Control-Allow-Origin" not in answer


# --- the widget in a browser ----------------------------------------------------------


@contextmanager
def page_server(pages: dict[str, str]) -> Iterator[str]:
    """The tenant's own site: static HTML pages on another origin than Herald's."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = pages.get(self.path.split("?")[0])
            body = (page or "not found").encode()
            self.send_response(200 if page is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Seeded:
    external_id: str
    subscriber_hash: str
    subscriber_id: int
    event_id: uuid.UUID
    created_secret: bool


def seed(tenant: Tenant, *, landing_url: str) -> Seeded:
    """Committed rows the server process can see: a subscriber with three messages."""
    external_id = f"widget-{uuid.uuid4().hex[:8]}"
    with tenant_context(tenant):
        created_secret = not InboxSettings.objects.filter(pk=InboxSettings.SINGLETON_PK).exists()
        secret = inbox_secret_get().secret
        subscriber = Subscriber.objects.create(external_id=external_id)
        event = Event.objects.create(event_type_key="comment.added")
        now = timezone.now()
        contents = [
            {"title": "Old news", "body": "Read last week"},
            {
                "title": '<img src=x onerror="window.pwned=1">Hi',
                "body": "<b>not bold</b>",
                "action_url": "javascript:window.pwned=2",
            },
            {"title": "Welcome", "body": "Ada commented", "action_url": landing_url},
        ]
        for age, content in zip((30, 20, 10), contents, strict=True):
            created_at = now - timedelta(seconds=age)
            Message.objects.create(
                event=event,
                subscriber=subscriber,
                channel=Channel.IN_APP,
                status=MessageStatus.DELIVERED,
                content=content,
                created_at=created_at,
                read_at=created_at if content["title"] == "Old news" else None,
            )
    return Seeded(
        external_id=external_id,
        subscriber_hash=subscriber_hash(secret=secret, external_id=external_id),
        subscriber_id=subscriber.pk,
        event_id=event.pk,
        created_secret=created_secret,
    )


def deliver_live(tenant: Tenant, seeded: Seeded, title: str) -> None:
    """What the in_app delivery does: store the delivered row, push it after commit."""
    with tenant_context(tenant):
        message = Message.objects.create(
            event_id=seeded.event_id,
            subscriber_id=seeded.subscriber_id,
            channel=Channel.IN_APP,
            status=MessageStatus.DELIVERED,
            content={"title": title, "body": "pushed"},
        )
        inbox_notify(message=message)  # autocommit: on_commit runs at once


def unseed(tenant: Tenant, seeded: Seeded) -> None:
    with tenant_context(tenant):
        Message.objects.filter(subscriber_id=seeded.subscriber_id).delete()
        Event.objects.filter(pk=seeded.event_id).delete()
        Subscriber.objects.filter(pk=seeded.subscriber_id).delete()
        if seeded.created_secret:
            InboxSettings.objects.filter(pk=InboxSettings.SINGLETON_PK).delete()


def embedding_page(herald: str, seeded: Seeded, tenant: Tenant) -> str:
    options = {
        "baseUrl": herald,
        "tenant": tenant.slug,
        "subscriberId": seeded.external_id,
        "subscriberHash": seeded.subscriber_hash,
        "pageSize": 2,
    }
    # json.dumps of plain strings, with "<" escaped so nothing can close the script.
    literal = json.dumps(options).replace("<", "\\u003c")
    return f"""<!doctype html>
<html><head><title>Customer app</title><link rel="icon" href="data:,"></head>
<body>
<header><div id="inbox"></div></header>
<script src="{herald}{SCRIPT_PATH}"></script>
<script>
  window.connections = 0;
  var host = document.getElementById("inbox");
  host.addEventListener("herald:connected", function () {{ window.connections += 1; }});
  window.inbox = HeraldInbox.mount(host, {literal});
</script>
</body></html>"""


def inbox_api(herald: str, tenant: Tenant, seeded: Seeded, **params: Any) -> dict[str, Any]:
    response = httpx.get(
        f"{herald}/api/v1/inbox/messages",
        params=params,
        headers={
            "X-Herald-Tenant": tenant.slug,
            "X-Herald-Subscriber": seeded.external_id,
            "X-Herald-Subscriber-Hash": seeded.subscriber_hash,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@dataclass
class Scene:
    """The browser's page on the tenant's site, and the Herald it talks to."""

    page: Any
    tenant: Tenant
    seeded: Seeded
    herald_port: int
    server_log: Path
    site: str
    screenshots: Screenshots

    @property
    def herald(self) -> str:
        return f"http://127.0.0.1:{self.herald_port}"


def test_the_widget_on_another_origin_shows_the_inbox_live(
    tenant_a: Tenant, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    require_chromium()
    port = free_port()
    log = tmp_path / "uvicorn.log"
    pages = {"/landing": "<!doctype html><title>Landing</title><link rel=icon href='data:,'>"}
    with page_server(pages) as site:
        seeded = in_own_connection(lambda: seed(tenant_a, landing_url=f"{site}/landing"))
        try:
            pages["/"] = embedding_page(f"http://127.0.0.1:{port}", seeded, tenant_a)
            with herald_server(port, log) as server, chromium() as browser:
                page = new_page(browser)
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(f"{site}/")
                scene = Scene(
                    page=page,
                    tenant=tenant_a,
                    seeded=seeded,
                    herald_port=port,
                    server_log=log,
                    site=site,
                    screenshots=Screenshots(request.node.name),
                )
                drive_the_widget(scene, server)
                # While Herald restarts, Chromium reports each refused reconnection.
                unexpected = [text for text in errors if "WebSocket connection to" not in text]
                assert unexpected == []
        finally:
            in_own_connection(lambda: unseed(tenant_a, seeded))


def drive_the_widget(scene: Scene, server: subprocess.Popen[bytes]) -> None:
    from playwright.sync_api import expect

    page, tenant, seeded = scene.page, scene.tenant, scene.seeded
    badge = page.locator("#inbox .badge")
    items = page.locator("#inbox .item")
    titles = page.locator("#inbox .item .title")
    markup = '<img src=x onerror="window.pwned=1">Hi'

    # The badge counts the whole inbox; the first page holds the two newest.
    expect(badge).to_have_text("2")
    page.wait_for_function("window.connections >= 1")
    page.locator("#inbox .bell").click()
    expect(titles).to_have_text(["Welcome", markup])
    expect(page.locator("#inbox .item.unread")).to_have_count(2)
    scene.screenshots.take(page, "inbox open, first page")
    page.locator("#inbox .more").click()
    expect(titles).to_have_text(["Welcome", markup, "Old news"])
    expect(page.locator("#inbox .more")).to_be_hidden()
    expect(page.locator("#inbox .item.unread")).to_have_count(2)
    # Markup in the content is text: no element was made from it.
    expect(page.locator("#inbox .item .body").nth(1)).to_have_text("<b>not bold</b>")
    made = "document.getElementById('inbox').shadowRoot.querySelector('img, b') !== null"
    assert page.evaluate(made) is False

    # Delivered while the page is open: it appears without a reload.
    in_own_connection(lambda: deliver_live(tenant, seeded, "Live one"))
    expect(titles.first).to_have_text("Live one")
    expect(badge).to_have_text("3")
    expect(items).to_have_count(4)
    expect(items.first).to_have_class("item unread")
    scene.screenshots.take(page, "live message arrived")

    # A javascript: link is not followed; the click still marks the message read.
    items.nth(2).click()
    expect(badge).to_have_text("2")
    expect(items.nth(2)).to_have_class("item")
    assert page.url == f"{scene.site}/"
    assert page.evaluate("window.pwned") is None

    items.nth(3).hover()
    items.nth(3).locator(".archive").click()
    expect(titles).to_have_text(["Live one", "Welcome", markup])
    archived = inbox_api(scene.herald, tenant, seeded, archived="true")
    assert [item["title"] for item in archived["items"]] == ["Old news"]

    # Herald restarts: the widget reconnects by itself, and pushes reach it again.
    server.terminate()
    server.wait(timeout=20)
    connections = page.evaluate("window.connections")
    with herald_server(scene.herald_port, scene.server_log):
        page.wait_for_function(f"window.connections > {connections}", timeout=30_000)
        in_own_connection(lambda: deliver_live(tenant, seeded, "After the restart"))
        expect(titles.first).to_have_text("After the restart")
        expect(badge).to_have_text("3")
        scene.screenshots.take(page, "pushed after herald restarted")

        # A refresh answered before "mark all read" but arriving after it must not
        # put the old count back: the widget asks again.
        held: list[tuple[Any, Any]] = []
        listing = re.compile(r"/api/v1/inbox/messages\?limit=")

        def hold_the_first(route: Any) -> None:
            if held:
                route.continue_()
            else:
                held.append((route, route.fetch()))

        page.route(listing, hold_the_first)
        page.evaluate("() => { window.inbox.refresh(); }")
        while not held:
            page.wait_for_timeout(20)
        page.locator("#inbox .read-all").click()
        expect(badge).to_be_hidden()
        route, stale = held[0]
        assert stale.json()["unread_count"] == 3
        with page.expect_request(listing):
            route.fulfill(response=stale)
        page.wait_for_load_state("networkidle")
        expect(badge).to_be_hidden()
        expect(page.locator("#inbox .item.unread")).to_have_count(0)
        assert inbox_api(scene.herald, tenant, seeded)["unread_count"] == 0
        scene.screenshots.take(page, "all read")

        # A message with an http(s) link leads there.
        page.locator("#inbox .item", has_text="Welcome").click()
        page.wait_for_url(f"{scene.site}/landing")


# channels_redis waits for a message with a blocking BZPOPMIN of 5 s; a socket must
# survive longer than that with nothing to say.
IDLE_SECONDS = 8


def test_an_idle_socket_from_another_origin_still_receives_pushes(
    tenant_a: Tenant, tmp_path: Path
) -> None:
    """The widget keeps one socket open for as long as its page is open."""
    from websockets.sync.client import connect
    from websockets.typing import Origin

    port = free_port()
    seeded = in_own_connection(lambda: seed(tenant_a, landing_url="https://a.test/"))
    query = urlencode(
        {
            "tenant": tenant_a.slug,
            "subscriber": seeded.external_id,
            "hash": seeded.subscriber_hash,
        }
    )
    try:
        with (
            herald_server(port, tmp_path / "uvicorn.log"),
            connect(
                f"ws://127.0.0.1:{port}/ws/inbox?{query}", origin=Origin(FOREIGN_ORIGIN)
            ) as stream,
        ):
            with pytest.raises(TimeoutError):
                stream.recv(timeout=IDLE_SECONDS)  # nothing to say, and still open
            in_own_connection(lambda: deliver_live(tenant_a, seeded, "After a quiet while"))
            pushed = json.loads(stream.recv(timeout=10))
    finally:
        in_own_connection(lambda: unseed(tenant_a, seeded))

    assert pushed["type"] == "message"
    assert pushed["item"]["title"] == "After a quiet while"
