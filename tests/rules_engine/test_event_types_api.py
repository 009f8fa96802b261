"""/api/v1/event-types: declare, read, list and delete event types."""

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from rules_engine.event_types import event_types_current
from rules_engine.models import EventType
from rules_engine.services.event_types import event_type_save
from rules_engine.services.rules import rule_create
from rules_engine.services.templates import template_create
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/event-types"
SCHEMA = {
    "type": "object",
    "required": ["order_id"],
    "properties": {"order_id": {"type": "string"}},
}


def put(client: Client, url: str, body: Any) -> Any:
    return client.put(url, body, content_type="application/json")


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"urn:herald:problem:{slug}"
    assert body["detail"]
    return body


def event_types_of(tenant: Tenant) -> dict[str, dict[str, Any]]:
    with tenant_context(tenant):
        return {
            t.key: {"name": t.name, "schema_version": t.schema_version, "schema": t.payload_schema}
            for t in EventType.objects.all()
        }


def rule_make(tenant: Tenant, event_type_key: str) -> int:
    with tenant_context(tenant):
        template_create(
            key=f"{event_type_key}-sms",
            channel=Channel.SMS,
            variants={"en": {"text": "hi"}},
            created_by="test",
        )
        saved = rule_create(
            name="r",
            event_type_key=event_type_key,
            actions=[{"channel": "sms", "template": f"{event_type_key}-sms"}],
            recipients={"kind": "event"},
            created_by="test",
        )
        return int(saved.rule.pk)


# --- PUT /event-types/{key} ------------------------------------------------------


def test_put_declares_then_replaces(api_a: ApiClient, tenant_a: Tenant) -> None:
    response = put(
        api_a,
        f"{URL}/order.shipped",
        {
            "name": "Order shipped",
            "category": "orders",
            "payload_schema": SCHEMA,
            "sample_payload": {"order_id": "1042"},
            "is_critical": True,
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["key"] == "order.shipped"
    assert body["schema_version"] == 1
    assert body["sample_payload"] == {"order_id": "1042"}
    assert body["is_critical"] is True

    replaced = put(api_a, f"{URL}/order.shipped", {"name": "Shipped"}).json()
    assert replaced["name"] == "Shipped"
    assert replaced["category"] == ""  # left out: cleared
    assert replaced["payload_schema"] is None
    assert replaced["schema_version"] == 2  # the schema changed
    assert event_types_of(tenant_a) == {
        "order.shipped": {"name": "Shipped", "schema_version": 2, "schema": None}
    }


def test_a_new_schema_applies_to_events_at_once(api_a: ApiClient, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        assert "invoice.paid" not in event_types_current()  # cached: empty
    put(api_a, f"{URL}/invoice.paid", {"payload_schema": SCHEMA})
    response = api_a.post(
        "/api/v1/events",
        {"event": "invoice.paid", "payload": {}},
        content_type="application/json",
    )
    body = assert_problem(response, 422, "validation-failed")
    assert body["errors"][0]["pointer"] == "/payload"


@pytest.mark.parametrize(
    ("key", "body", "pointer"),
    [
        ("-leading-dash", {}, "/key"),
        ("has space", {}, "/key"),
        ("x" * 201, {}, "/key"),
        ("ok", {"payload_schema": {"type": "nonsense"}}, "/payload_schema"),
        ("ok", {"sample_payload": [1]}, "/sample_payload"),
        ("ok", {"name": "x" * 201}, "/name"),
        ("ok", {"surprise": 1}, "/surprise"),
        ("endpoint.disabled", {}, "/key"),  # a status callback's name
    ],
)
def test_put_refuses_invalid_input(
    api_a: ApiClient, tenant_a: Tenant, key: str, body: dict[str, Any], pointer: str
) -> None:
    problem = assert_problem(put(api_a, f"{URL}/{key}", body), 422, "validation-failed")
    assert [error["pointer"] for error in problem["errors"]] == [pointer]
    assert event_types_of(tenant_a) == {}


# --- GET and DELETE --------------------------------------------------------------


def test_get_and_list(api_a: ApiClient, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        for key in ("c.three", "a.one", "b.two"):
            event_type_save(key=key, category="billing" if key != "c.three" else "")
    assert api_a.get(f"{URL}/a.one").json()["key"] == "a.one"
    first = api_a.get(URL, {"limit": 2}).json()
    assert [t["key"] for t in first["items"]] == ["a.one", "b.two"]
    rest = api_a.get(URL, {"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [t["key"] for t in rest["items"]] == ["c.three"]
    assert rest["next_cursor"] is None
    billing = api_a.get(URL, {"category": "billing"}).json()
    assert [t["key"] for t in billing["items"]] == ["a.one", "b.two"]
    assert_problem(api_a.get(f"{URL}/nope"), 404, "not-found")
    assert_problem(api_a.get(URL, {"cursor": "garbage"}), 400, "invalid-cursor")


def test_delete(api_a: ApiClient, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        event_type_save(key="gone.soon")
    assert api_a.delete(f"{URL}/gone.soon").status_code == 204
    assert event_types_of(tenant_a) == {}
    assert_problem(api_a.delete(f"{URL}/gone.soon"), 404, "not-found")


def test_delete_is_refused_while_rules_use_it(api_a: ApiClient, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        event_type_save(key="order.shipped")
    rule_id = rule_make(tenant_a, "order.shipped")
    body = assert_problem(api_a.delete(f"{URL}/order.shipped"), 409, "in-use")
    assert body["used_by"] == [f"rule:{rule_id}"]
    assert "order.shipped" in event_types_of(tenant_a)

    assert api_a.delete(f"/api/v1/rules/{rule_id}").status_code == 204
    assert api_a.delete(f"{URL}/order.shipped").status_code == 204


# --- scopes and tenants ------------------------------------------------------------


def test_reads_accept_messages_read_and_writes_need_admin(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    with tenant_context(tenant_a):
        event_type_save(key="order.shipped")
    reader = api_client_for(tenant_a, scopes=["messages:read"])
    assert reader.get(URL).status_code == 200
    assert reader.get(f"{URL}/order.shipped").status_code == 200
    body = assert_problem(put(reader, f"{URL}/x", {}), 403, "insufficient-scope")
    assert body["required_scope"] == "admin"
    assert_problem(reader.delete(f"{URL}/order.shipped"), 403, "insufficient-scope")

    for scopes in (["events:write"], ["subscribers:write"]):
        other = api_client_for(tenant_a, scopes=scopes)
        assert_problem(other.get(URL), 403, "insufficient-scope")
        assert_problem(other.get(f"{URL}/order.shipped"), 403, "insufficient-scope")
    assert event_types_of(tenant_a).keys() == {"order.shipped"}


def test_another_tenants_event_types_are_not_found(
    api_a: ApiClient, api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with tenant_context(tenant_a):
        event_type_save(key="alpha.only")
    assert_problem(api_b.get(f"{URL}/alpha.only"), 404, "not-found")
    assert_problem(api_b.delete(f"{URL}/alpha.only"), 404, "not-found")
    assert api_b.get(URL).json()["items"] == []
    # B declaring the same key makes B's own, and leaves A's alone.
    put(api_b, f"{URL}/alpha.only", {"name": "B's"})
    assert event_types_of(tenant_a)["alpha.only"]["name"] == ""
    assert event_types_of(tenant_b)["alpha.only"]["name"] == "B's"
