"""/ws/inbox: the live in-app inbox, authenticated like the HTTP inbox."""

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import channel_layers
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.consumers import CLOSE_UNAUTHORIZED
from channels_delivery.inbox_auth import inbox_secret_get, subscriber_hash
from channels_delivery.models import Message, MessageStatus
from channels_delivery.routing import websocket_urlpatterns
from channels_delivery.services.inbox import inbox_notify
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant

# A WebSocket scenario takes a second or two; one that hangs fails in a minute.
pytestmark = [pytest.mark.django_db, pytest.mark.timeout(60)]

application = URLRouter(websocket_urlpatterns)


@pytest.fixture(autouse=True)
def _fresh_channel_layer() -> Iterator[None]:
    """Each test runs its own event loop: give each its own layer, so nothing a
    previous loop left in the shared one (a receive lock, a pool) is reused."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def _keep_the_test_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """database_sync_to_async closes a connection left in a transaction, as the
    test's is; the consumer's queries must run in it to see the test's rows."""
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)


def url(tenant: Tenant, external_id: str, signature: str) -> str:
    query = urlencode({"tenant": tenant.slug, "subscriber": external_id, "hash": signature})
    return f"/ws/inbox?{query}"


def hash_for(tenant: Tenant, external_id: str) -> str:
    with tenant_context(tenant):
        return subscriber_hash(secret=inbox_secret_get().secret, external_id=external_id)


def deliver(tenant: Tenant, subscriber: Subscriber, *, title: str, capture: Any) -> Message:
    """What the in_app delivery does: the row is delivered, then pushed after commit."""
    with tenant_context(tenant), capture(execute=True):
        message = Message.objects.create(
            event=Event.objects.create(event_type_key="comment.added"),
            subscriber=subscriber,
            channel=Channel.IN_APP,
            status=MessageStatus.DELIVERED,
            content={"title": title, "body": "Ada wrote", "action_url": "https://a.test/1"},
        )
        inbox_notify(message=message)
    return message


def test_a_delivered_message_is_pushed_to_the_subscribers_socket_only(
    tenant_a: Tenant, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    with tenant_context(tenant_a):
        ada = Subscriber.objects.create(external_id="ada")
        bob = Subscriber.objects.create(external_id="bob")
    adas_url = url(tenant_a, "ada", hash_for(tenant_a, "ada"))
    bobs_url = url(tenant_a, "bob", hash_for(tenant_a, "bob"))

    async def scenario() -> tuple[dict[str, Any], bool]:
        adas = WebsocketCommunicator(application, adas_url)
        bobs = WebsocketCommunicator(application, bobs_url)
        assert (await adas.connect())[0]
        assert (await bobs.connect())[0]
        message = await sync_to_async(deliver)(
            tenant_a, ada, title="For Ada", capture=django_capture_on_commit_callbacks
        )
        received = await adas.receive_json_from(timeout=5)
        assert received["item"]["id"] == str(message.id)
        bob_got_nothing = await bobs.receive_nothing(timeout=0.5)
        await adas.disconnect()
        await bobs.disconnect()
        return received, bob_got_nothing

    received, bob_got_nothing = async_to_sync(scenario)()

    assert received["type"] == "message"
    assert received["item"]["title"] == "For Ada"
    assert received["item"]["action_url"] == "https://a.test/1"
    assert received["item"]["read_at"] is None
    assert received["unread_count"] == 1
    assert bob_got_nothing
    assert bob.pk != ada.pk


def test_another_subscribers_hash_is_refused(tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        Subscriber.objects.create(external_id="bob")
    adas_hash = hash_for(tenant_a, "ada")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        socket = WebsocketCommunicator(application, url(tenant_a, "bob", adas_hash))
        await socket.connect()
        error = await socket.receive_json_from(timeout=5)
        closed = await socket.receive_output(timeout=5)
        await socket.disconnect()
        return error, closed

    error, closed = async_to_sync(scenario)()

    assert error["type"] == "error"
    assert error["problem"]["type"] == "urn:herald:problem:invalid-subscriber-hash"
    assert "hash is not the HMAC-SHA256 of subscriber" in error["problem"]["detail"]
    assert closed == {
        "type": "websocket.close",
        "code": CLOSE_UNAUTHORIZED,
        "reason": "invalid-subscriber-hash",
    }


def test_missing_query_parameters_are_named(tenant_a: Tenant) -> None:
    async def scenario() -> dict[str, Any]:
        socket = WebsocketCommunicator(application, "/ws/inbox?tenant=alpha")
        await socket.connect()
        message: dict[str, Any] = await socket.receive_json_from(timeout=5)
        await socket.receive_output(timeout=5)
        await socket.disconnect()
        return message

    error = async_to_sync(scenario)()
    assert error["problem"]["type"] == "urn:herald:problem:missing-subscriber-credentials"
    assert "missing: subscriber, hash" in error["problem"]["detail"]


def test_inbox_notify_ignores_other_channels_and_a_broken_layer(
    tenant_a: Tenant,
    django_capture_on_commit_callbacks: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> Any:
        raise ConnectionError("redis is down")

    monkeypatch.setattr("channels_delivery.services.inbox.get_channel_layer", broken)
    with tenant_context(tenant_a):
        ada = Subscriber.objects.create(external_id="ada")
    # Does not raise: the delivery is not failed by the push.
    deliver(tenant_a, ada, title="x", capture=django_capture_on_commit_callbacks)
    assert "inbox push of message" in caplog.text
    with tenant_context(tenant_a), django_capture_on_commit_callbacks() as callbacks:
        email = Message.objects.create(
            event=Event.objects.create(event_type_key="e"), subscriber=ada, channel=Channel.EMAIL
        )
        inbox_notify(message=email)
    assert callbacks == []


def test_a_tenants_frontend_on_its_own_origin_can_open_the_stream(tenant_a: Tenant) -> None:
    """Through the real ASGI application: the tenant's page is not on Herald's hosts."""
    from herald.asgi import application as asgi_application

    with tenant_context(tenant_a):
        Subscriber.objects.create(external_id="ada")
    signature = hash_for(tenant_a, "ada")

    async def scenario() -> bool:
        socket = WebsocketCommunicator(
            asgi_application,
            url(tenant_a, "ada", signature),
            headers=[(b"origin", b"https://app.customer.example"), (b"host", b"herald.test")],
        )
        connected, _ = await socket.connect(timeout=5)
        await socket.disconnect()
        return bool(connected)

    assert async_to_sync(scenario)()
