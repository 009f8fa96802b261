"""Signed email links: one-click unsubscribe (RFC 8058), the open pixel and click
redirects, answered on the public address and run in the token's tenant only."""

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import signing
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.models import Message, MessageStatus
from channels_delivery.services.delivery import message_deliver
from channels_delivery.tracking import (
    CLICK_SALT,
    OPEN_SALT,
    UNSUBSCRIBE_SALT,
    TokenInvalid,
    click_token_make,
    click_token_read,
    open_token_make,
    open_token_read,
    tracking_rewrite,
    unsubscribe_token_make,
    unsubscribe_token_read,
)
from rules_engine.models import Event, EventType, Preference, Subscriber
from tenants.models import Tenant
from tests.channels_delivery.test_delivery import smtp_integration
from tests.channels_delivery.test_email_provider import Sink, start_server

pytestmark = pytest.mark.django_db

PUBLIC = "https://herald.example"
TARGET = "https://shop.example/orders/A-1?ref=mail&x=1"


@pytest.fixture(autouse=True)
def _public_url(settings: Any) -> None:
    settings.HERALD_PUBLIC_URL = PUBLIC
    settings.HERALD_ALLOW_LOOPBACK_URLS = True  # the SMTP sink is on 127.0.0.1


@pytest.fixture
def client() -> Client:
    # A host no tenant has: these links are answered before the tenant lookup.
    return Client(HTTP_HOST="herald.example")


def a_message(*, status: str = MessageStatus.SENT, **fields: Any) -> Message:
    subscriber, _ = Subscriber.objects.get_or_create(
        external_id="ann", defaults={"email": "ann@example.com", "name": "Ann"}
    )
    event = Event.objects.create(event_type_key="order.shipped", payload={"order": "A-1"})
    values: dict[str, Any] = {
        "event": event,
        "subscriber": subscriber,
        "channel": "email",
        "status": status,
        "content": {"subject": "Shipped", "text": "On its way."},
    }
    values.update(fields)
    return Message.objects.create(**values)


def status_of(tenant: Tenant, message: Message) -> str:
    with tenant_context(tenant):
        return Message.objects.get(pk=message.pk).status


def path_of(url: str) -> str:
    assert url.startswith(PUBLIC)
    return url.removeprefix(PUBLIC)


def tampered(token: str) -> str:
    """The token with one character of its payload changed."""
    flipped = "A" if token[1] != "A" else "B"
    return token[0] + flipped + token[2:]


# --- tokens ------------------------------------------------------------------------


def test_tokens_round_trip() -> None:
    message_id = uuid.uuid4()
    unsubscribe = unsubscribe_token_read(
        unsubscribe_token_make(schema="alpha", subscriber_id=7, event_type="order.shipped")
    )
    assert (unsubscribe.schema, unsubscribe.subscriber_id, unsubscribe.event_type) == (
        "alpha",
        7,
        "order.shipped",
    )
    assert unsubscribe.channel == "email"
    opened = open_token_read(open_token_make(schema="alpha", message_id=message_id))
    assert (opened.schema, opened.message_id) == ("alpha", message_id)
    clicked = click_token_read(click_token_make(schema="alpha", message_id=message_id, url=TARGET))
    assert (clicked.schema, clicked.message_id, clicked.url) == ("alpha", message_id, TARGET)


def test_tampered_or_foreign_tokens_are_refused() -> None:
    message_id = uuid.uuid4()
    click = click_token_make(schema="alpha", message_id=message_id, url=TARGET)
    with pytest.raises(TokenInvalid):
        click_token_read(tampered(click))
    with pytest.raises(TokenInvalid):
        click_token_read("not-a-token")
    # Each kind has its own salt: an open token is no click token, and vice versa.
    with pytest.raises(TokenInvalid):
        click_token_read(open_token_make(schema="alpha", message_id=message_id))
    with pytest.raises(TokenInvalid):
        unsubscribe_token_read(click)
    # Signed with Django's key but not by Herald's tracking (another salt).
    forged = signing.dumps({"s": "beta", "m": str(message_id), "u": "https://evil.example"})
    with pytest.raises(TokenInvalid):
        click_token_read(forged)
    # Signed right but naming something that is not a web URL.
    javascript = signing.dumps(
        {"s": "alpha", "m": str(message_id), "u": "javascript:alert(1)"}, salt=CLICK_SALT
    )
    with pytest.raises(TokenInvalid, match="http"):
        click_token_read(javascript)
    with pytest.raises(TokenInvalid, match="subscriber"):
        unsubscribe_token_read(
            signing.dumps(
                {"s": "alpha", "sub": "7", "et": "x", "ch": "email"}, salt=UNSUBSCRIBE_SALT
            )
        )
    with pytest.raises(TokenInvalid, match="malformed"):
        open_token_read(signing.dumps({"s": "alpha", "m": "nope"}, salt=OPEN_SALT))
    with pytest.raises(ValueError, match="http"):
        click_token_make(schema="alpha", message_id=message_id, url="mailto:ann@example.com")


# --- rewriting ---------------------------------------------------------------------


def test_rewrite_tracks_web_links_and_adds_a_pixel(in_tenant_a: Tenant) -> None:
    message = a_message()
    body = (
        "<html><body>"
        '<a class="b" href="https://shop.example/orders/A-1?ref=mail&amp;x=1">Order</a>'
        "<a href='http://shop.example/help'>Help</a>"
        '<a href="mailto:help@shop.example">Mail</a><a href="#top">Top</a>'
        "</body></html>"
    )
    rewritten = tracking_rewrite(body, message)
    links = re.findall(r'href="([^"]*)"', rewritten)
    assert links[2:] == ["mailto:help@shop.example", "#top"]
    first, second = (click_token_read(path_of(link).removeprefix("/c/")) for link in links[:2])
    assert (first.url, first.schema, first.message_id) == (TARGET, "alpha", message.id)
    assert second.url == "http://shop.example/help"
    assert 'class="b"' in rewritten
    (pixel,) = re.findall(r'<img src="([^"]*)"', rewritten)
    assert path_of(pixel).startswith("/o/")
    assert pixel.endswith(".gif")
    assert open_token_read(path_of(pixel)[3:-4]).message_id == message.id
    assert rewritten.endswith("</body></html>")  # the pixel goes inside the body


# --- unsubscribe -------------------------------------------------------------------


def test_one_click_post_opts_out_in_the_token_tenant_only(
    client: Client, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with tenant_context(tenant_a):
        ann_a = Subscriber.objects.create(external_id="ann", email="ann@example.com")
    with tenant_context(tenant_b):
        # The same id in beta: only the token's schema tells them apart.
        Subscriber.objects.create(pk=ann_a.pk, external_id="ann", email="ann@example.com")
    token = unsubscribe_token_make(
        schema="alpha", subscriber_id=ann_a.pk, event_type="order.shipped"
    )

    response = client.post(f"/u/{token}", {"List-Unsubscribe": "One-Click"})

    assert response.status_code == 200
    with tenant_context(tenant_a):
        rows = list(
            Preference.objects.values_list("subscriber_id", "event_type_key", "channel", "enabled")
        )
    assert rows == [(ann_a.pk, "order.shipped", "email", False)]
    with tenant_context(tenant_b):
        assert not Preference.objects.exists()
    # Posting again (mail clients retry) changes nothing and still answers 200.
    assert client.post(f"/u/{token}", {"List-Unsubscribe": "One-Click"}).status_code == 200
    with tenant_context(tenant_a):
        assert Preference.objects.count() == 1


def test_get_shows_a_confirmation_page_and_changes_nothing(
    client: Client, tenant_a: Tenant
) -> None:
    with tenant_context(tenant_a):
        ann = Subscriber.objects.create(external_id="ann", email="ann@example.com")
    token = unsubscribe_token_make(schema="alpha", subscriber_id=ann.pk, event_type="order.shipped")

    response = client.get(f"/u/{token}")

    assert response.status_code == 200
    page = response.content.decode()
    assert '<form method="post">' in page
    assert "order.shipped" in page
    with tenant_context(tenant_a):
        assert not Preference.objects.exists()


def test_bad_unsubscribe_tokens_get_a_400_page(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        ann = Subscriber.objects.create(external_id="ann", email="ann@example.com")
    token = unsubscribe_token_make(schema="alpha", subscriber_id=ann.pk, event_type="order.shipped")
    for bad in (tampered(token), "garbage"):
        assert client.get(f"/u/{bad}").status_code == 400
        response = client.post(f"/u/{bad}")
        assert response.status_code == 400
        assert b"not valid" in response.content
    unknown_tenant = unsubscribe_token_make(schema="gamma", subscriber_id=ann.pk, event_type="x")
    assert client.post(f"/u/{unknown_tenant}").status_code == 400
    public = unsubscribe_token_make(schema="public", subscriber_id=ann.pk, event_type="x")
    assert client.post(f"/u/{public}").status_code == 400
    gone = unsubscribe_token_make(schema="alpha", subscriber_id=ann.pk + 1000, event_type="x")
    assert client.post(f"/u/{gone}").status_code == 400
    assert client.put(f"/u/{token}").status_code == 405
    with tenant_context(tenant_a):
        assert not Preference.objects.exists()


def test_a_critical_event_type_can_not_be_unsubscribed(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        EventType.objects.create(key="password.reset", is_critical=True)
        ann = Subscriber.objects.create(external_id="ann", email="ann@example.com")
    token = unsubscribe_token_make(
        schema="alpha", subscriber_id=ann.pk, event_type="password.reset"
    )
    response = client.post(f"/u/{token}")
    assert response.status_code == 400
    assert b"essential" in response.content
    with tenant_context(tenant_a):
        assert not Preference.objects.exists()


# --- open pixel and clicks -----------------------------------------------------------


def test_the_pixel_marks_a_sent_message_opened(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        message = a_message()
    token = open_token_make(schema="alpha", message_id=message.id)

    response = client.get(f"/o/{token}.gif")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/gif"
    assert response.content.startswith(b"GIF89a")
    assert "no-store" in response["Cache-Control"]
    assert status_of(tenant_a, message) == MessageStatus.OPENED
    # Opening again, or after a click, never moves it back.
    with tenant_context(tenant_a):
        Message.objects.filter(pk=message.pk).update(status=MessageStatus.CLICKED)
    assert client.get(f"/o/{token}.gif").status_code == 200
    assert status_of(tenant_a, message) == MessageStatus.CLICKED


def test_the_pixel_does_not_open_an_unsent_message_or_take_a_bad_token(
    client: Client, tenant_a: Tenant
) -> None:
    with tenant_context(tenant_a):
        queued = a_message(status=MessageStatus.QUEUED)
    token = open_token_make(schema="alpha", message_id=queued.id)
    assert client.get(f"/o/{token}.gif").status_code == 200
    assert status_of(tenant_a, queued) == MessageStatus.QUEUED
    assert client.get(f"/o/{tampered(token)}.gif").status_code == 400
    assert client.get(f"/o/{token}").status_code == 404  # the pixel is a .gif
    assert client.post(f"/o/{token}.gif").status_code == 405


def test_a_click_marks_clicked_and_redirects_to_the_exact_url(
    client: Client, tenant_a: Tenant
) -> None:
    with tenant_context(tenant_a):
        message = a_message(status=MessageStatus.OPENED)
    token = click_token_make(schema="alpha", message_id=message.id, url=TARGET)

    # Whatever the request adds, the redirect goes to the signed URL.
    response = client.get(f"/c/{token}", {"url": "https://evil.example/", "next": "//evil"})

    assert response.status_code == 302
    assert response["Location"] == TARGET
    assert status_of(tenant_a, message) == MessageStatus.CLICKED


def test_a_tampered_click_token_is_a_400_and_no_redirect(client: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        message = a_message()
    token = click_token_make(schema="alpha", message_id=message.id, url=TARGET)
    forged_target = signing.dumps(
        {"s": "alpha", "m": str(message.id), "u": "https://evil.example/"}, salt="another"
    )

    for bad in (tampered(token), forged_target, token + "x", ""):
        response = client.get(f"/c/{bad}")
        assert response.status_code == 400, bad
        assert "Location" not in response

    assert status_of(tenant_a, message) == MessageStatus.SENT


def test_a_token_for_alpha_never_touches_beta(
    client: Client, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with tenant_context(tenant_b):
        beta_message = a_message()
    # The same message id, signed for alpha (which has no such message).
    for path in (
        f"/o/{open_token_make(schema='alpha', message_id=beta_message.id)}.gif",
        f"/c/{click_token_make(schema='alpha', message_id=beta_message.id, url=TARGET)}",
    ):
        assert client.get(path).status_code in (200, 302)
    assert status_of(tenant_b, beta_message) == MessageStatus.SENT
    # And alpha's own message, with beta's message sent too, moves alone.
    with tenant_context(tenant_a):
        alpha_message = a_message()
    client.get(f"/o/{open_token_make(schema='alpha', message_id=alpha_message.id)}.gif")
    assert status_of(tenant_a, alpha_message) == MessageStatus.OPENED
    assert status_of(tenant_b, beta_message) == MessageStatus.SENT


# --- delivery ------------------------------------------------------------------------


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    controller, port = start_server(sink)
    yield sink, port
    controller.stop()


def test_a_delivered_email_carries_one_click_unsubscribe_and_tracked_links(
    in_tenant_a: Tenant,
    smtp: tuple[Sink, int],
) -> None:
    sink, port = smtp
    smtp_integration("main", port)
    message = a_message(
        status=MessageStatus.QUEUED,
        content={
            "subject": "Shipped",
            "text": "On its way.",
            "html": f'<p><a href="{TARGET.replace("&", "&amp;")}">Track</a></p>',
        },
    )

    report = message_deliver(message_id=message.id, now=timezone.now())

    assert report.status == MessageStatus.SENT
    parsed = sink.parsed()
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = re.fullmatch(r"<(.+)>", str(parsed["List-Unsubscribe"]).replace(" ", ""))
    assert link is not None
    read = unsubscribe_token_read(path_of(link.group(1)).removeprefix("/u/"))
    assert (read.schema, read.subscriber_id, read.event_type, read.channel) == (
        "alpha",
        message.subscriber_id,
        "order.shipped",
        "email",
    )
    html_part = parsed.get_body(preferencelist=("html",))
    assert html_part is not None
    body = html_part.get_content()
    (href,) = re.findall(r'href="([^"]*)"', body)
    assert click_token_read(path_of(href).removeprefix("/c/")).url == TARGET
    assert f'<img src="{PUBLIC}/o/' in body
    # The stored content stays as rendered: a retry re-sends it, it does not re-render.
    assert Message.objects.get(pk=message.pk).content["html"].count("/c/") == 0


def test_a_critical_email_has_no_unsubscribe_header(
    in_tenant_a: Tenant,
    smtp: tuple[Sink, int],
) -> None:
    sink, port = smtp
    smtp_integration("main", port)
    EventType.objects.create(key="order.shipped", is_critical=True)
    message = a_message(status=MessageStatus.QUEUED)

    message_deliver(message_id=message.id, now=timezone.now())

    parsed = sink.parsed()
    assert parsed["List-Unsubscribe"] is None
    assert parsed["List-Unsubscribe-Post"] is None
