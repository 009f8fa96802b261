"""/api/v1/topics: create, read, list, delete, and manage members."""

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from rules_engine.models import Subscriber, Topic
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/topics"


def post(client: Client, url: str, body: Any) -> Any:
    return client.post(url, body, content_type="application/json")


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"urn:herald:problem:{slug}"
    assert body["detail"]
    return body


def topic_make(tenant: Tenant, key: str, members: tuple[str, ...] = ()) -> Topic:
    with tenant_context(tenant):
        topic = Topic.objects.create(key=key, name=key.title())
        for external_id in members:
            subscriber, _ = Subscriber.objects.get_or_create(external_id=external_id)
            topic.subscribers.add(subscriber)
        return topic


def subscribers_make(tenant: Tenant, *external_ids: str) -> None:
    with tenant_context(tenant):
        Subscriber.objects.bulk_create([Subscriber(external_id=e) for e in external_ids])


def topics_of(tenant: Tenant) -> dict[str, list[str]]:
    """Every topic of the tenant and its members' external ids."""
    with tenant_context(tenant):
        return {
            topic.key: sorted(topic.subscribers.values_list("external_id", flat=True))
            for topic in Topic.objects.all()
        }


# --- POST /topics -----------------------------------------------------------------


def test_create_a_topic(api_a: ApiClient, tenant_a: Tenant) -> None:
    response = post(api_a, URL, {"key": "project:42.watchers", "name": "Watchers"})
    assert response.status_code == 201, response.content
    assert response.json()["key"] == "project:42.watchers"
    assert response.json()["name"] == "Watchers"
    assert topics_of(tenant_a) == {"project:42.watchers": []}


def test_creating_an_existing_topic_is_a_conflict(api_a: ApiClient, tenant_a: Tenant) -> None:
    topic_make(tenant_a, "news")
    body = assert_problem(post(api_a, URL, {"key": "news"}), 409, "conflict")
    assert body["key"] == "news"
    assert topics_of(tenant_a) == {"news": []}


@pytest.mark.parametrize(
    "key", ["", "News", ".news", "-news", "news letter", "news/letter", "n" * 201, "ünïcode"]
)
def test_create_refuses_an_invalid_key(api_a: ApiClient, tenant_a: Tenant, key: str) -> None:
    body = assert_problem(post(api_a, URL, {"key": key}), 422, "validation-failed")
    assert [e["pointer"] for e in body["errors"]] == ["/key"]
    assert topics_of(tenant_a) == {}


def test_create_refuses_a_body_of_the_wrong_shape(api_a: ApiClient, tenant_a: Tenant) -> None:
    assert_problem(post(api_a, URL, {"name": "no key"}), 422, "validation-failed")
    assert_problem(post(api_a, URL, {"key": "a", "extra": 1}), 422, "validation-failed")
    assert_problem(post(api_a, URL, {"key": "a", "name": "n" * 201}), 422, "validation-failed")
    assert topics_of(tenant_a) == {}


# --- GET /topics, GET /topics/{key} -------------------------------------------------


def test_read_a_topic(api_a: ApiClient, tenant_a: Tenant) -> None:
    topic_make(tenant_a, "news")
    response = api_a.get(f"{URL}/news")
    assert response.status_code == 200
    assert (response.json()["key"], response.json()["name"]) == ("news", "News")
    assert_problem(api_a.get(f"{URL}/nothing"), 404, "not-found")


def test_list_pages_through_topics_by_key(api_a: ApiClient, tenant_a: Tenant) -> None:
    for key in ("c", "a", "e", "b", "d"):
        topic_make(tenant_a, key)
    first = api_a.get(URL, {"limit": 3}).json()
    assert [t["key"] for t in first["items"]] == ["a", "b", "c"]
    second = api_a.get(URL, {"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [t["key"] for t in second["items"]] == ["d", "e"]
    assert second["next_cursor"] is None


def test_list_refuses_a_bad_cursor(api_a: ApiClient, tenant_a: Tenant) -> None:
    topic_make(tenant_a, "news")
    assert_problem(api_a.get(URL, {"cursor": "%%%"}), 400, "invalid-cursor")


# --- DELETE /topics/{key} -----------------------------------------------------------


def test_delete_a_topic_keeps_its_subscribers(api_a: ApiClient, tenant_a: Tenant) -> None:
    topic_make(tenant_a, "news", members=("ada", "bob"))
    topic_make(tenant_a, "other", members=("ada",))
    response = api_a.delete(f"{URL}/news")
    assert response.status_code == 204
    assert topics_of(tenant_a) == {"other": ["ada"]}
    with tenant_context(tenant_a):
        assert Subscriber.objects.count() == 2
    assert_problem(api_a.delete(f"{URL}/news"), 404, "not-found")


# --- members ------------------------------------------------------------------------


def test_add_members_reports_added_existing_and_missing(api_a: ApiClient, tenant_a: Tenant) -> None:
    topic_make(tenant_a, "news", members=("ada",))
    subscribers_make(tenant_a, "bob", "cy")
    response = post(
        api_a, f"{URL}/news/subscribers", {"subscribers": ["ada", "bob", "ghost", "cy", "bob"]}
    )
    assert response.status_code == 200, response.content
    assert response.json() == {
        "added": ["bob", "cy"],
        "already_members": ["ada"],
        "missing": ["ghost"],
    }
    assert topics_of(tenant_a) == {"news": ["ada", "bob", "cy"]}
    with tenant_context(tenant_a):
        assert not Subscriber.objects.filter(external_id="ghost").exists()


def test_add_or_remove_more_than_a_thousand_members_is_refused(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    topic_make(tenant_a, "news")
    ids = [f"u-{i}" for i in range(1001)]
    subscribers_make(tenant_a, *ids)
    for url in (f"{URL}/news/subscribers", f"{URL}/news/subscribers/remove"):
        body = assert_problem(post(api_a, url, {"subscribers": ids}), 422, "validation-failed")
        assert body["errors"][0]["pointer"] == "/subscribers"
    assert topics_of(tenant_a) == {"news": []}


def test_members_of_an_unknown_topic_are_404(api_a: ApiClient, tenant_a: Tenant) -> None:
    subscribers_make(tenant_a, "ada")
    body = {"subscribers": ["ada"]}
    assert_problem(post(api_a, f"{URL}/ghost/subscribers", body), 404, "not-found")
    assert_problem(post(api_a, f"{URL}/ghost/subscribers/remove", body), 404, "not-found")
    assert_problem(api_a.get(f"{URL}/ghost/subscribers"), 404, "not-found")
    assert topics_of(tenant_a) == {}


def test_list_members_a_page_at_a_time(api_a: ApiClient, tenant_a: Tenant) -> None:
    topic_make(tenant_a, "news", members=("d", "b", "a", "c", "e"))
    topic_make(tenant_a, "other", members=("z",))
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        response = api_a.get(f"{URL}/news/subscribers", params)
        assert response.status_code == 200
        seen += [item["external_id"] for item in response.json()["items"]]
        if response.json()["next_cursor"] is None:
            break
        params["cursor"] = response.json()["next_cursor"]
    assert seen == ["a", "b", "c", "d", "e"]
    bad = api_a.get(f"{URL}/news/subscribers", {"cursor": "garbage"})
    assert_problem(bad, 400, "invalid-cursor")


def test_remove_members(api_a: ApiClient, tenant_a: Tenant) -> None:
    topic_make(tenant_a, "news", members=("ada", "bob"))
    subscribers_make(tenant_a, "cy")
    response = post(api_a, f"{URL}/news/subscribers/remove", {"subscribers": ["ada", "cy", "x"]})
    assert response.status_code == 200
    assert response.json() == {"removed": ["ada"], "not_members": ["cy", "x"]}
    assert topics_of(tenant_a) == {"news": ["bob"]}
    with tenant_context(tenant_a):
        assert Subscriber.objects.filter(external_id="ada").exists()


# --- scopes -------------------------------------------------------------------------


def write_requests(client: Client) -> list[Any]:
    return [
        post(client, URL, {"key": "fresh"}),
        post(client, f"{URL}/news/subscribers", {"subscribers": ["bob"]}),
        post(client, f"{URL}/news/subscribers/remove", {"subscribers": ["ada"]}),
        client.delete(f"{URL}/news"),
    ]


def read_requests(client: Client) -> list[Any]:
    return [client.get(URL), client.get(f"{URL}/news"), client.get(f"{URL}/news/subscribers")]


def test_events_write_key_can_neither_write_nor_read_topics(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    topic_make(tenant_a, "news", members=("ada",))
    subscribers_make(tenant_a, "bob")
    client = api_client_for(tenant_a, scopes=["events:write"])
    for response in write_requests(client) + read_requests(client):
        assert_problem(response, 403, "insufficient-scope")
    assert topics_of(tenant_a) == {"news": ["ada"]}


def test_messages_read_key_reads_but_does_not_write_topics(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    topic_make(tenant_a, "news", members=("ada",))
    subscribers_make(tenant_a, "bob")
    client = api_client_for(tenant_a, scopes=["messages:read"])
    assert [r.status_code for r in read_requests(client)] == [200, 200, 200]
    for response in write_requests(client):
        assert_problem(response, 403, "insufficient-scope")
    assert topics_of(tenant_a) == {"news": ["ada"]}


def test_subscribers_write_key_manages_topics(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    topic_make(tenant_a, "news", members=("ada",))
    subscribers_make(tenant_a, "bob")
    client = api_client_for(tenant_a, scopes=["subscribers:write"])
    assert [r.status_code for r in read_requests(client)] == [200, 200, 200]
    assert [r.status_code for r in write_requests(client)] == [201, 200, 200, 204]
    assert topics_of(tenant_a) == {"fresh": []}


# --- tenant isolation ---------------------------------------------------------------


def test_another_tenant_can_not_read_a_topic(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    topic_make(tenant_a, "news", members=("ada",))
    assert_problem(api_b.get(f"{URL}/news"), 404, "not-found")
    members = api_b.get(f"{URL}/news/subscribers")
    assert_problem(members, 404, "not-found")
    assert b"ada" not in members.content
    assert api_b.get(URL).json() == {"items": [], "next_cursor": None}


def test_another_tenant_can_not_change_a_topic(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    topic_make(tenant_a, "news", members=("ada",))
    subscribers_make(tenant_a, "bob")
    subscribers_make(tenant_b, "bob")
    assert_problem(api_b.delete(f"{URL}/news"), 404, "not-found")
    added = post(api_b, f"{URL}/news/subscribers", {"subscribers": ["bob"]})
    assert_problem(added, 404, "not-found")
    removed = post(api_b, f"{URL}/news/subscribers/remove", {"subscribers": ["ada"]})
    assert_problem(removed, 404, "not-found")
    assert topics_of(tenant_a) == {"news": ["ada"]}
    assert topics_of(tenant_b) == {}


def test_topics_and_subscribers_of_another_tenant_are_out_of_reach(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    topic_make(tenant_a, "news", members=("ada",))
    assert post(api_b, URL, {"key": "news"}).status_code == 201
    added = post(api_b, f"{URL}/news/subscribers", {"subscribers": ["ada"]})
    assert added.json() == {"added": [], "already_members": [], "missing": ["ada"]}
    assert topics_of(tenant_b) == {"news": []}
    assert topics_of(tenant_a) == {"news": ["ada"]}
