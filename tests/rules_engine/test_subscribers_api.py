"""/api/v1/subscribers: upsert, read, list, bulk upsert and erasure."""

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from channels_delivery.models import Message, MessageStatus
from rules_engine.models import Event, Preference, Subscriber, Topic, TopicMembership
from rules_engine.services.subscribers import SubscriberProfile, subscriber_upsert
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/subscribers"
PROFILE = {
    "email": "ada@example.com",
    "phone": "+14155550100",
    "name": "Ada Lovelace",
    "locale": "en-GB",
    "timezone": "Europe/London",
    "data": {"plan": "pro"},
    "channels": {"push": [{"endpoint": "https://push.example.com/1"}]},
}


def put(client: Client, external_id: str, body: Any) -> Any:
    return client.put(f"{URL}/{external_id}", body, content_type="application/json")


def post(client: Client, url: str, body: Any) -> Any:
    return client.post(url, body, content_type="application/json")


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"urn:herald:problem:{slug}"
    assert body["detail"]
    return body


def subscriber_make(tenant: Tenant, external_id: str, **fields: Any) -> Subscriber:
    with tenant_context(tenant):
        profile = SubscriberProfile(external_id=external_id, **fields)
        return subscriber_upsert(profile=profile).subscriber


def subscribers_of(tenant: Tenant) -> dict[str, Subscriber]:
    with tenant_context(tenant):
        return {s.external_id: s for s in Subscriber.objects.all()}


# --- PUT /subscribers/{external_id} ---------------------------------------------------


def test_put_creates_then_replaces_a_subscriber(api_a: ApiClient, tenant_a: Tenant) -> None:
    created = put(api_a, "u-1", PROFILE)
    assert created.status_code == 200, created.content
    body = created.json()
    assert body["created"] is True
    assert {key: body[key] for key in PROFILE} == PROFILE
    assert body["external_id"] == "u-1"

    replaced = put(api_a, "u-1", {"email": "ada@new.example.com", "locale": "fr_ca"})
    assert replaced.status_code == 200
    assert replaced.json()["created"] is False
    assert replaced.json()["created_at"] == body["created_at"]
    stored = subscribers_of(tenant_a)["u-1"]
    assert (stored.email, stored.locale, stored.phone, stored.data) == (
        "ada@new.example.com",
        "fr-CA",
        "",
        {},
    )


def test_put_accepts_nulls_as_empty(api_a: ApiClient) -> None:
    response = put(api_a, "u-1", {"email": None, "phone": None, "data": None})
    assert response.status_code == 200
    assert response.json()["email"] == ""
    assert response.json()["data"] == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "not-an-email"),
        ("email", "ada@"),
        ("phone", "4155550100"),
        ("phone", "+0155550100"),
        ("phone", "+1 415 555 0100"),
        ("phone", "+1234567890123456"),
        ("timezone", "Mars/Olympus"),
        ("timezone", "../../etc/passwd"),
        ("locale", "english"),
        ("locale", "en-"),
    ],
)
def test_put_refuses_an_invalid_field(
    api_a: ApiClient, tenant_a: Tenant, field: str, value: str
) -> None:
    body = assert_problem(put(api_a, "u-1", {**PROFILE, field: value}), 422, "validation-failed")
    assert body["errors"] == [{"pointer": f"/{field}", "detail": body["errors"][0]["detail"]}]
    assert value in body["errors"][0]["detail"]
    assert subscribers_of(tenant_a) == {}


def test_put_refuses_channels_that_are_not_objects_or_lists(api_a: ApiClient) -> None:
    response = put(api_a, "u-1", {"channels": {"push": "https://push.example.com"}})
    body = assert_problem(response, 422, "validation-failed")
    assert [e["pointer"] for e in body["errors"]] == ["/channels/push"]


@pytest.mark.parametrize("body", [{"channels": []}, {"data": "text"}, {"email": 42}, {"nick": 1}])
def test_put_refuses_a_body_of_the_wrong_shape(
    api_a: ApiClient, tenant_a: Tenant, body: dict[str, Any]
) -> None:
    assert_problem(put(api_a, "u-1", body), 422, "validation-failed")
    assert subscribers_of(tenant_a) == {}


@pytest.mark.parametrize(
    ("external_id", "detail"), [("x" * 201, "at most 200"), ("bad%01id", "control")]
)
def test_put_refuses_an_invalid_external_id(
    api_a: ApiClient, tenant_a: Tenant, external_id: str, detail: str
) -> None:
    body = assert_problem(put(api_a, external_id, PROFILE), 422, "validation-failed")
    assert body["errors"][0]["pointer"] == "/external_id"
    assert detail in body["errors"][0]["detail"]
    assert subscribers_of(tenant_a) == {}


def test_put_takes_any_printable_external_id(api_a: ApiClient, tenant_a: Tenant) -> None:
    assert put(api_a, "ada%40example.com", {}).status_code == 200
    assert put(api_a, "%C3%BCber%20user", {}).status_code == 200
    assert set(subscribers_of(tenant_a)) == {"ada@example.com", "über user"}
    assert api_a.get(f"{URL}/ada@example.com").status_code == 200


# --- GET /subscribers/{external_id} ---------------------------------------------------


def test_get_returns_the_profile(api_a: ApiClient, tenant_a: Tenant) -> None:
    put(api_a, "u-1", PROFILE)
    response = api_a.get(f"{URL}/u-1")
    assert response.status_code == 200
    body = response.json()
    assert {key: body[key] for key in PROFILE} == PROFILE
    assert "created" not in body


def test_get_unknown_subscriber_is_404(api_a: ApiClient) -> None:
    assert_problem(api_a.get(f"{URL}/nobody"), 404, "not-found")


# --- GET /subscribers -----------------------------------------------------------------


def test_list_pages_through_every_subscriber_oldest_first(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    for i in range(5):
        subscriber_make(tenant_a, f"u-{i}")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = api_a.get(URL, params)
        assert response.status_code == 200
        seen += [item["external_id"] for item in response.json()["items"]]
        pages += 1
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"u-{i}" for i in range(5)]
    assert pages == 3


def test_list_filters_by_email(api_a: ApiClient, tenant_a: Tenant) -> None:
    subscriber_make(tenant_a, "ada", email="ada@example.com")
    subscriber_make(tenant_a, "bob", email="bob@example.com")
    response = api_a.get(URL, {"email": "ADA@example.com"})
    assert [item["external_id"] for item in response.json()["items"]] == ["ada"]


@pytest.mark.parametrize("cursor", ["garbage", "WyJub3QtYS1kYXRlIiwgIngiXQ"])
def test_list_refuses_a_bad_cursor(api_a: ApiClient, tenant_a: Tenant, cursor: str) -> None:
    subscriber_make(tenant_a, "u-1")
    assert_problem(api_a.get(URL, {"cursor": cursor}), 400, "invalid-cursor")


def test_list_refuses_a_limit_out_of_range(api_a: ApiClient) -> None:
    assert_problem(api_a.get(URL, {"limit": 0}), 422, "validation-failed")
    assert_problem(api_a.get(URL, {"limit": 201}), 422, "validation-failed")


# --- DELETE /subscribers/{external_id} ------------------------------------------------


def test_delete_erases_the_subscriber_and_its_messages_content(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    ada = subscriber_make(tenant_a, "ada", email="ada@example.com")
    bob = subscriber_make(tenant_a, "bob", email="bob@example.com")
    with tenant_context(tenant_a):
        topic = Topic.objects.create(key="news")
        TopicMembership.objects.create(topic=topic, subscriber=ada)
        TopicMembership.objects.create(topic=topic, subscriber=bob)
        Preference.objects.create(subscriber=ada, channel="sms", enabled=False)
        event = Event.objects.create(event_type_key="order.shipped")
        for status in (MessageStatus.DELIVERED, MessageStatus.FAILED):
            Message.objects.create(
                event=event,
                subscriber=ada,
                channel="email",
                status=status,
                content={"to": "ada@example.com", "subject": "Your order, Ada"},
            )
        kept = Message.objects.create(
            event=event, subscriber=bob, channel="email", content={"to": "bob@example.com"}
        )

    response = api_a.delete(f"{URL}/ada")
    assert response.status_code == 204
    assert response.content == b""

    with tenant_context(tenant_a):
        assert list(Subscriber.objects.values_list("external_id", flat=True)) == ["bob"]
        assert not TopicMembership.objects.filter(subscriber_id=ada.pk).exists()
        assert not Preference.objects.filter(subscriber_id=ada.pk).exists()
        erased = list(Message.objects.exclude(pk=kept.pk))
        assert len(erased) == 2
        assert {m.status for m in erased} == {MessageStatus.DELIVERED, MessageStatus.FAILED}
        assert all(m.content == {"erased": True} and m.subscriber_id is None for m in erased)
        assert "ada@example.com" not in json.dumps([m.content for m in Message.objects.all()])
        kept.refresh_from_db()
        assert kept.content == {"to": "bob@example.com"}
    assert_problem(api_a.get(f"{URL}/ada"), 404, "not-found")
    assert_problem(api_a.delete(f"{URL}/ada"), 404, "not-found")


# --- POST /subscribers/bulk -----------------------------------------------------------


def test_bulk_upsert_saves_the_valid_profiles_and_reports_each(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    subscriber_make(tenant_a, "old", name="Old")
    items = [
        {"external_id": "new", **PROFILE},
        {"external_id": "old", "name": "Renamed"},
        {"external_id": "bad-phone", "phone": "555"},
        {"external_id": "wrong-shape", "data": []},
        {"email": "no-id@example.com"},
        {"external_id": "new", "name": "again"},
        {"external_id": "bulk"},
    ]
    response = post(api_a, f"{URL}/bulk", {"subscribers": items})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["created"], body["updated"], body["invalid"]) == (1, 1, 5)
    results = body["results"]
    assert [(r["index"], r["status"]) for r in results] == [
        (0, "created"),
        (1, "updated"),
        (2, "invalid"),
        (3, "invalid"),
        (4, "invalid"),
        (5, "invalid"),
        (6, "invalid"),
    ]
    assert results[0]["errors"] == []
    assert [e["pointer"] for e in results[2]["errors"]] == ["/phone"]
    assert [e["pointer"] for e in results[3]["errors"]] == ["/data"]
    assert results[3]["external_id"] == "wrong-shape"
    assert [e["pointer"] for e in results[4]["errors"]] == ["/external_id"]
    assert results[4]["external_id"] is None
    assert "index 0" in results[5]["errors"][0]["detail"]
    assert "reserved" in results[6]["errors"][0]["detail"]

    stored = subscribers_of(tenant_a)
    assert set(stored) == {"new", "old"}
    assert stored["new"].name == "Ada Lovelace"
    assert stored["old"].name == "Renamed"


def test_bulk_upsert_refuses_more_than_a_thousand_profiles(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    items = [{"external_id": f"u-{i}"} for i in range(1001)]
    body = assert_problem(
        post(api_a, f"{URL}/bulk", {"subscribers": items}), 422, "validation-failed"
    )
    assert body["errors"][0]["pointer"] == "/subscribers"
    assert subscribers_of(tenant_a) == {}


def test_bulk_upsert_of_500_profiles_takes_a_bounded_number_of_queries(
    api_a: ApiClient, tenant_a: Tenant, django_assert_max_num_queries: Any
) -> None:
    subscriber_make(tenant_a, "u-0")
    items = [{"external_id": f"u-{i}", "email": f"u{i}@example.com"} for i in range(500)]
    with django_assert_max_num_queries(10):
        response = post(api_a, f"{URL}/bulk", {"subscribers": items})
    assert response.status_code == 200
    assert (response.json()["created"], response.json()["updated"]) == (499, 1)
    assert len(subscribers_of(tenant_a)) == 500


# --- scopes ---------------------------------------------------------------------------


def write_requests(client: Client) -> list[Any]:
    return [
        put(client, "u-1", PROFILE),
        client.delete(f"{URL}/u-1"),
        post(client, f"{URL}/bulk", {"subscribers": [{"external_id": "u-2"}]}),
    ]


def read_requests(client: Client) -> list[Any]:
    return [client.get(f"{URL}/u-1"), client.get(URL)]


def test_events_write_key_can_neither_write_nor_read_subscribers(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    subscriber_make(tenant_a, "u-1", name="Unchanged")
    client = api_client_for(tenant_a, scopes=["events:write"])
    for response in write_requests(client):
        body = assert_problem(response, 403, "insufficient-scope")
        assert body["required_scope"] == "subscribers:write"
    for response in read_requests(client):
        assert_problem(response, 403, "insufficient-scope")
    assert {k: s.name for k, s in subscribers_of(tenant_a).items()} == {"u-1": "Unchanged"}


def test_messages_read_key_reads_but_does_not_write(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    subscriber_make(tenant_a, "u-1")
    client = api_client_for(tenant_a, scopes=["messages:read"])
    assert [r.status_code for r in read_requests(client)] == [200, 200]
    for response in write_requests(client):
        assert_problem(response, 403, "insufficient-scope")


def test_subscribers_write_key_reads_and_writes(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    client = api_client_for(tenant_a, scopes=["subscribers:write"])
    assert [r.status_code for r in write_requests(client)] == [200, 204, 200]
    assert [r.status_code for r in read_requests(client)] == [404, 200]


# --- tenant isolation -----------------------------------------------------------------


def test_another_tenant_can_not_see_a_subscriber(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    subscriber_make(tenant_a, "ada", email="ada@example.com")
    response = api_b.get(f"{URL}/ada")
    assert_problem(response, 404, "not-found")
    assert b"ada@example.com" not in response.content
    listed = api_b.get(URL, {"email": "ada@example.com"})
    assert listed.status_code == 200
    assert listed.json() == {"items": [], "next_cursor": None}
    assert api_b.get(URL).json()["items"] == []


def test_another_tenant_can_not_erase_a_subscriber(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    ada = subscriber_make(tenant_a, "ada", email="ada@example.com")
    with tenant_context(tenant_a):
        event = Event.objects.create(event_type_key="order.shipped")
        message = Message.objects.create(
            event=event, subscriber=ada, channel="email", content={"to": "ada@example.com"}
        )
    assert_problem(api_b.delete(f"{URL}/ada"), 404, "not-found")
    assert set(subscribers_of(tenant_a)) == {"ada"}
    with tenant_context(tenant_a):
        message.refresh_from_db()
        assert message.content == {"to": "ada@example.com"}


def test_the_same_external_id_in_another_tenant_is_another_subscriber(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    subscriber_make(tenant_a, "ada", email="ada@example.com", name="A's Ada")
    response = put(api_b, "ada", {"email": "ada@beta.example.com"})
    assert response.status_code == 200
    assert response.json()["created"] is True
    bulk = post(api_b, f"{URL}/bulk", {"subscribers": [{"external_id": "ada", "name": "B"}]})
    assert bulk.json()["results"][0]["status"] == "updated"
    b_ada = subscribers_of(tenant_b)["ada"]
    assert (b_ada.email, b_ada.name) == ("", "B")
    a_ada = subscribers_of(tenant_a)["ada"]
    assert (a_ada.email, a_ada.name) == ("ada@example.com", "A's Ada")

    assert api_b.delete(f"{URL}/ada").status_code == 204
    assert subscribers_of(tenant_b) == {}
    assert set(subscribers_of(tenant_a)) == {"ada"}
