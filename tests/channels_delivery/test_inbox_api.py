"""/api/v1/inbox: a subscriber's in-app inbox, authenticated by subscriber hash."""

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.inbox_auth import inbox_secret_get, subscriber_hash
from channels_delivery.models import Message, MessageStatus
from rules_engine.models import Event, Subscriber
from tenants.models import ApiScope, Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/inbox/messages"


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:herald:problem:{slug}"
    assert body["status"] == status
    return body


class Inbox:
    """One tenant's rows and a frontend client per subscriber."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.now = timezone.now()
        with tenant_context(tenant):
            self.event = Event.objects.create(event_type_key="comment.added")

    def secret(self) -> str:
        with tenant_context(self.tenant):
            return inbox_secret_get().secret

    def subscriber(self, external_id: str) -> Subscriber:
        with tenant_context(self.tenant):
            return Subscriber.objects.create(external_id=external_id)

    def message(
        self,
        subscriber: Subscriber,
        *,
        title: str = "New comment",
        age_seconds: float = 0,
        channel: str = Channel.IN_APP,
        status: str = MessageStatus.DELIVERED,
    ) -> Message:
        with tenant_context(self.tenant):
            return Message.objects.create(
                event=self.event,
                subscriber=subscriber,
                channel=channel,
                status=status,
                content={"title": title, "body": "Ada wrote", "action_url": "https://a.test/c/1"},
                created_at=self.now - timedelta(seconds=age_seconds),
            )

    def client(self, external_id: str, *, hash_: str | None = None, slug: str = "") -> Client:
        signature = hash_ or subscriber_hash(secret=self.secret(), external_id=external_id)
        return Client(
            headers={
                "X-Herald-Tenant": slug or self.tenant.slug,
                "X-Herald-Subscriber": external_id,
                "X-Herald-Subscriber-Hash": signature,
            }
        )

    def reload(self, message: Message) -> Message:
        with tenant_context(self.tenant):
            return Message.objects.get(pk=message.pk)


@pytest.fixture
def inbox_a(tenant_a: Tenant) -> Inbox:
    return Inbox(tenant_a)


@pytest.fixture
def inbox_b(tenant_b: Tenant) -> Inbox:
    return Inbox(tenant_b)


def titles(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["title"] for item in response.json()["items"]]


# --- listing ------------------------------------------------------------------------


def test_lists_only_the_subscribers_delivered_in_app_messages_newest_first(
    inbox_a: Inbox,
) -> None:
    ada, bob = inbox_a.subscriber("ada"), inbox_a.subscriber("bob")
    inbox_a.message(ada, title="old", age_seconds=60)
    inbox_a.message(ada, title="new", age_seconds=1)
    inbox_a.message(ada, title="email", channel=Channel.EMAIL)
    inbox_a.message(ada, title="waiting", status=MessageStatus.QUEUED)
    inbox_a.message(ada, title="failed", status=MessageStatus.FAILED)
    inbox_a.message(bob, title="bob's")

    response = inbox_a.client("ada").get(URL)

    assert titles(response) == ["new", "old"]
    body = response.json()
    assert body["unread_count"] == 2
    assert body["next_cursor"] is None
    item = body["items"][0]
    assert item["body"] == "Ada wrote"
    assert item["action_url"] == "https://a.test/c/1"
    assert item["read_at"] is None
    assert item["archived_at"] is None
    assert item["seen_at"] is not None  # the feed showed it
    assert response["Access-Control-Allow-Origin"] == "*"


def test_cursor_pages_through_the_inbox(inbox_a: Inbox) -> None:
    ada = inbox_a.subscriber("ada")
    for n in range(5):
        inbox_a.message(ada, title=f"m{n}", age_seconds=n)
    client = inbox_a.client("ada")

    first = client.get(URL, {"limit": 2})
    second = client.get(URL, {"limit": 2, "cursor": first.json()["next_cursor"]})
    third = client.get(URL, {"limit": 2, "cursor": second.json()["next_cursor"]})

    assert titles(first) == ["m0", "m1"]
    assert titles(second) == ["m2", "m3"]
    assert titles(third) == ["m4"]
    assert third.json()["next_cursor"] is None
    assert_problem(client.get(URL, {"cursor": "garbage!"}), 400, "invalid-cursor")


def test_unread_filter_read_unread_and_read_all(inbox_a: Inbox) -> None:
    ada = inbox_a.subscriber("ada")
    first = inbox_a.message(ada, title="first", age_seconds=3)
    inbox_a.message(ada, title="second", age_seconds=2)
    inbox_a.message(ada, title="third", age_seconds=1)
    client = inbox_a.client("ada")

    read = client.post(f"{URL}/{first.id}/read")
    assert read.status_code == 200, read.content
    read_at = read.json()["read_at"]
    assert read_at is not None
    # Repeating it keeps the first read time.
    assert client.post(f"{URL}/{first.id}/read").json()["read_at"] == read_at

    assert titles(client.get(URL, {"unread": "true"})) == ["third", "second"]
    assert titles(client.get(URL, {"unread": "false"})) == ["first"]
    assert client.get(URL).json()["unread_count"] == 2

    unread = client.post(f"{URL}/{first.id}/unread")
    assert unread.status_code == 200
    assert unread.json()["read_at"] is None
    assert client.get(URL).json()["unread_count"] == 3

    read_all = client.post(f"{URL}/read-all")
    assert read_all.status_code == 200, read_all.content
    assert read_all.json() == {"updated": 3}
    assert client.get(URL).json()["unread_count"] == 0
    assert inbox_a.reload(first).read_at is not None
    assert client.post(f"{URL}/read-all").json() == {"updated": 0}


def test_archive_moves_a_message_out_of_the_inbox_and_back(inbox_a: Inbox) -> None:
    ada = inbox_a.subscriber("ada")
    kept = inbox_a.message(ada, title="kept", age_seconds=2)
    put_away = inbox_a.message(ada, title="put away", age_seconds=1)
    client = inbox_a.client("ada")

    archived = client.post(f"{URL}/{put_away.id}/archive")

    assert archived.status_code == 200, archived.content
    assert archived.json()["archived_at"] is not None
    assert titles(client.get(URL)) == ["kept"]
    assert titles(client.get(URL, {"archived": "true"})) == ["put away"]
    assert client.get(URL).json()["unread_count"] == 1  # archived ones do not count
    # Read-all leaves the archive alone.
    assert client.post(f"{URL}/read-all").json() == {"updated": 1}
    assert inbox_a.reload(put_away).read_at is None

    assert client.post(f"{URL}/{put_away.id}/unarchive").json()["archived_at"] is None
    assert titles(client.get(URL)) == ["put away", "kept"]
    assert inbox_a.reload(kept).archived_at is None


def test_reading_makes_a_delivered_message_read_and_nothing_else_moves_it(
    inbox_a: Inbox,
) -> None:
    ada = inbox_a.subscriber("ada")
    message = inbox_a.message(ada, status=MessageStatus.DELIVERED)
    archived_first = inbox_a.message(ada, status=MessageStatus.DELIVERED)
    client = inbox_a.client("ada")
    client.post(f"{URL}/{archived_first.id}/archive")
    assert inbox_a.reload(archived_first).status == MessageStatus.DELIVERED
    client.post(f"{URL}/{message.id}/read")
    assert inbox_a.reload(message).status == MessageStatus.READ
    # Read is where it stays: marking it unread changes read_at, not the history.
    client.post(f"{URL}/{message.id}/unread")
    reloaded = inbox_a.reload(message)
    assert (reloaded.status, reloaded.read_at) == (MessageStatus.READ, None)


def test_a_subscriber_the_tenant_never_created_has_an_empty_inbox(inbox_a: Inbox) -> None:
    client = inbox_a.client("nobody-yet")
    response = client.get(URL)
    assert response.status_code == 200, response.content
    assert response.json() == {"items": [], "next_cursor": None, "unread_count": 0}
    assert client.post(f"{URL}/read-all").json() == {"updated": 0}


# --- isolation ----------------------------------------------------------------------


def test_a_subscriber_can_not_read_or_mark_anothers_messages(inbox_a: Inbox) -> None:
    ada, bob = inbox_a.subscriber("ada"), inbox_a.subscriber("bob")
    bobs = inbox_a.message(bob, title="bob's")
    ada_client = inbox_a.client("ada")

    assert titles(ada_client.get(URL)) == []
    for action in ("read", "unread", "archive", "unarchive"):
        assert_problem(ada_client.post(f"{URL}/{bobs.id}/{action}"), 404, "not-found")
    ada_client.post(f"{URL}/read-all")
    untouched = inbox_a.reload(bobs)
    assert untouched.read_at is None
    assert untouched.archived_at is None
    # Bob's own token does see it; an email of Ada's is not in her inbox either.
    assert titles(inbox_a.client("bob").get(URL)) == ["bob's"]
    email = inbox_a.message(ada, channel=Channel.EMAIL)
    assert_problem(ada_client.post(f"{URL}/{email.id}/read"), 404, "not-found")
    assert_problem(ada_client.post(f"{URL}/{uuid.uuid4()}/read"), 404, "not-found")
    assert_problem(ada_client.post(f"{URL}/not-a-uuid/read"), 404, "not-found")


def test_a_hash_for_one_subscriber_does_not_open_anothers_inbox(inbox_a: Inbox) -> None:
    inbox_a.message(inbox_a.subscriber("bob"), title="bob's")
    adas_hash = subscriber_hash(secret=inbox_a.secret(), external_id="ada")
    response = inbox_a.client("bob", hash_=adas_hash).get(URL)
    assert_problem(response, 401, "invalid-subscriber-hash")


def test_alphas_subscriber_hash_is_refused_for_beta(inbox_a: Inbox, inbox_b: Inbox) -> None:
    inbox_b.message(inbox_b.subscriber("ada"), title="beta's ada")
    assert inbox_a.secret() != inbox_b.secret()
    alphas_hash = subscriber_hash(secret=inbox_a.secret(), external_id="ada")

    response = inbox_b.client("ada", hash_=alphas_hash).get(URL)

    assert_problem(response, 401, "invalid-subscriber-hash")
    # The right tenant's hash works, and sees only that tenant's rows.
    assert titles(inbox_b.client("ada").get(URL)) == ["beta's ada"]
    assert titles(inbox_a.client("ada").get(URL)) == []


# --- refusals -----------------------------------------------------------------------


def test_a_wrong_hash_is_a_401_problem(inbox_a: Inbox) -> None:
    inbox_a.secret()
    response = inbox_a.client("ada", hash_="0" * 64).get(URL)
    body = assert_problem(response, 401, "invalid-subscriber-hash")
    assert "X-Herald-Subscriber-Hash" in body["detail"]


def test_missing_headers_are_named(inbox_a: Inbox) -> None:
    response = Client(headers={"X-Herald-Tenant": "alpha"}).get(URL)
    body = assert_problem(response, 401, "missing-subscriber-credentials")
    assert "X-Herald-Subscriber, X-Herald-Subscriber-Hash" in body["detail"]


def test_an_unknown_tenant_or_one_without_a_secret_is_refused_alike(inbox_a: Inbox) -> None:
    # No secret was ever generated in this transaction: nothing can be valid.
    forged = subscriber_hash(secret="", external_id="ada")
    assert_problem(inbox_a.client("ada", hash_=forged).get(URL), 401, "invalid-subscriber-hash")
    response = inbox_a.client("ada", slug="no-such-tenant").get(URL)
    assert_problem(response, 401, "invalid-subscriber-hash")


def test_a_suspended_tenants_inbox_is_refused(inbox_a: Inbox) -> None:
    client = inbox_a.client("ada")
    Tenant.objects.filter(pk=inbox_a.tenant.pk).update(is_active=False)
    assert_problem(client.get(URL), 403, "tenant-suspended")


def test_an_api_key_does_not_open_the_inbox(api_a: ApiClient) -> None:
    assert_problem(api_a.get(URL), 401, "missing-subscriber-credentials")


def test_cors_preflight_is_answered_without_credentials() -> None:
    response = Client().options(f"{URL}/read-all")
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "X-Herald-Subscriber-Hash" in response["Access-Control-Allow-Headers"]


# --- the secret ---------------------------------------------------------------------


def test_the_secret_is_made_once_and_rotation_invalidates_old_hashes(
    api_a: ApiClient, inbox_a: Inbox
) -> None:
    inbox_a.message(inbox_a.subscriber("ada"), title="hello")
    first = api_a.get("/api/v1/inbox/secret")
    assert first.status_code == 200, first.content
    secret = first.json()["secret"]
    assert first.json()["algorithm"] == "HMAC-SHA256"
    assert api_a.get("/api/v1/inbox/secret").json()["secret"] == secret
    old_hash = subscriber_hash(secret=secret, external_id="ada")
    assert titles(inbox_a.client("ada", hash_=old_hash).get(URL)) == ["hello"]

    rotated = api_a.post("/api/v1/inbox/secret/rotate")

    assert rotated.status_code == 200, rotated.content
    new_secret = rotated.json()["secret"]
    assert new_secret != secret
    assert api_a.get("/api/v1/inbox/secret").json()["secret"] == new_secret
    refused = inbox_a.client("ada", hash_=old_hash).get(URL)
    assert_problem(refused, 401, "invalid-subscriber-hash")
    new_hash = subscriber_hash(secret=new_secret, external_id="ada")
    assert titles(inbox_a.client("ada", hash_=new_hash).get(URL)) == ["hello"]


def test_the_secret_is_stored_encrypted(api_a: ApiClient, inbox_a: Inbox) -> None:
    from channels_delivery.models import InboxSettings

    secret = api_a.get("/api/v1/inbox/secret").json()["secret"]
    with tenant_context(inbox_a.tenant):
        stored = InboxSettings.objects.get().secret
    assert secret not in stored


def test_the_secret_needs_an_admin_key(
    api_client_for: Any, tenant_a: Tenant, inbox_a: Inbox
) -> None:
    reader = api_client_for(tenant_a, scopes=[ApiScope.MESSAGES_READ])
    assert_problem(reader.get("/api/v1/inbox/secret"), 403, "insufficient-scope")
    assert_problem(reader.post("/api/v1/inbox/secret/rotate"), 403, "insufficient-scope")
    # The subscriber headers are no way in either.
    frontend = inbox_a.client("ada")
    assert_problem(frontend.get("/api/v1/inbox/secret"), 401, "missing-api-key")


def test_each_tenant_has_its_own_secret(api_a: ApiClient, api_b: ApiClient) -> None:
    alpha = api_a.get("/api/v1/inbox/secret").json()["secret"]
    beta = api_b.get("/api/v1/inbox/secret").json()["secret"]
    assert alpha != beta
