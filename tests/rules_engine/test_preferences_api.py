"""/api/v1/subscribers/{external_id}/preferences: effective preferences and opt-outs."""

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from rules_engine.models import EventType, Preference, Subscriber
from rules_engine.services.preferences import PreferenceSetting, preference_defaults_set
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db


def url(external_id: str) -> str:
    return f"/api/v1/subscribers/{external_id}/preferences"


def put(client: Client, external_id: str, preferences: list[dict[str, Any]]) -> Any:
    return client.put(
        url(external_id), {"preferences": preferences}, content_type="application/json"
    )


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"urn:herald:problem:{slug}"
    assert body["detail"]
    return body


def subscriber_make(tenant: Tenant, external_id: str) -> Subscriber:
    with tenant_context(tenant):
        return Subscriber.objects.create(external_id=external_id)


def rows_of(tenant: Tenant) -> set[tuple[str | None, str, str, str, bool]]:
    """(subscriber, event type, category, channel, enabled) for every preference row."""
    with tenant_context(tenant):
        return {
            (
                p.subscriber.external_id if p.subscriber else None,
                p.event_type_key,
                p.category,
                p.channel,
                p.enabled,
            )
            for p in Preference.objects.select_related("subscriber")
        }


def pref(
    channel: str,
    enabled: bool,
    source: str,
    *,
    event_type: str | None = None,
    category: str | None = None,
) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "category": category,
        "channel": channel,
        "enabled": enabled,
        "source": source,
    }


@pytest.fixture
def defaults_a(tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        preference_defaults_set(
            settings=[
                PreferenceSetting(channel="email", enabled=True),
                PreferenceSetting(channel="sms", enabled=False),
                PreferenceSetting(category="marketing", channel="email", enabled=False),
            ]
        )


# --- GET --------------------------------------------------------------------------


def test_a_subscriber_without_choices_gets_the_tenant_defaults(
    api_a: ApiClient, tenant_a: Tenant, defaults_a: None
) -> None:
    subscriber_make(tenant_a, "ada")
    response = api_a.get(url("ada"))
    assert response.status_code == 200
    assert response.json() == {
        "preferences": [
            pref("email", True, "default"),
            pref("sms", False, "default"),
            pref("email", False, "default", category="marketing"),
        ]
    }


def test_get_of_an_unknown_subscriber_is_404(api_a: ApiClient) -> None:
    assert_problem(api_a.get(url("nobody")), 404, "not-found")


# --- PUT --------------------------------------------------------------------------


def test_put_overlays_the_defaults_and_keeps_earlier_choices(
    api_a: ApiClient, tenant_a: Tenant, defaults_a: None
) -> None:
    subscriber_make(tenant_a, "ada")
    first = put(
        api_a,
        "ada",
        [
            {"category": "marketing", "channel": "email", "enabled": True},
            {"event_type": "order.shipped", "channel": "sms", "enabled": True},
        ],
    )
    assert first.status_code == 200, first.content
    assert first.json()["preferences"] == [
        pref("email", True, "default"),
        pref("sms", False, "default"),
        pref("email", True, "subscriber", category="marketing"),
        pref("sms", True, "subscriber", event_type="order.shipped"),
    ]

    second = put(api_a, "ada", [{"channel": "email", "enabled": False}])
    assert second.status_code == 200
    assert second.json()["preferences"][0] == pref("email", False, "subscriber")
    assert len(second.json()["preferences"]) == 4
    assert api_a.get(url("ada")).json() == second.json()
    assert rows_of(tenant_a) >= {
        ("ada", "", "", "email", False),
        ("ada", "", "marketing", "email", True),
        ("ada", "order.shipped", "", "sms", True),
        (None, "", "", "email", True),
    }


@pytest.mark.parametrize(
    ("item", "pointer"),
    [
        ({"channel": "pigeon", "enabled": False}, "/preferences/0/channel"),
        (
            {
                "event_type": "order.shipped",
                "category": "orders",
                "channel": "sms",
                "enabled": True,
            },
            "/preferences/0",
        ),
        ({"event_type": "e" * 201, "channel": "sms", "enabled": True}, "/preferences/0/event_type"),
    ],
)
def test_put_refuses_invalid_settings(
    api_a: ApiClient, tenant_a: Tenant, item: dict[str, Any], pointer: str
) -> None:
    subscriber_make(tenant_a, "ada")
    body = assert_problem(put(api_a, "ada", [item]), 422, "validation-failed")
    assert [e["pointer"] for e in body["errors"]] == [pointer]
    assert rows_of(tenant_a) == set()


@pytest.mark.parametrize(
    "item",
    [
        {"channel": "sms"},
        {"channel": "sms", "enabled": "maybe"},
        {"channel": "sms", "enabled": True, "topic": "x"},
    ],
)
def test_put_refuses_a_body_of_the_wrong_shape(
    api_a: ApiClient, tenant_a: Tenant, item: dict[str, Any]
) -> None:
    subscriber_make(tenant_a, "ada")
    assert_problem(put(api_a, "ada", [item]), 422, "validation-failed")
    assert rows_of(tenant_a) == set()


def test_opting_out_of_a_critical_event_type_is_refused(api_a: ApiClient, tenant_a: Tenant) -> None:
    subscriber_make(tenant_a, "ada")
    with tenant_context(tenant_a):
        EventType.objects.create(key="security.password_reset", is_critical=True)
        EventType.objects.create(key="order.shipped")
    response = put(
        api_a,
        "ada",
        [
            {"event_type": "order.shipped", "channel": "email", "enabled": False},
            {"event_type": "security.password_reset", "channel": "email", "enabled": False},
        ],
    )
    body = assert_problem(response, 422, "critical-event-type")
    assert body["event_types"] == ["security.password_reset"]
    assert "security.password_reset" in body["detail"]
    assert rows_of(tenant_a) == set()

    opt_in = put(
        api_a, "ada", [{"event_type": "security.password_reset", "channel": "sms", "enabled": True}]
    )
    assert opt_in.status_code == 200
    assert rows_of(tenant_a) == {("ada", "security.password_reset", "", "sms", True)}


def test_put_of_an_unknown_subscriber_is_404(api_a: ApiClient, tenant_a: Tenant) -> None:
    assert_problem(put(api_a, "nobody", [{"channel": "sms", "enabled": False}]), 404, "not-found")
    assert rows_of(tenant_a) == set()


# --- scopes -----------------------------------------------------------------------


def test_events_write_key_can_neither_read_nor_set_preferences(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    subscriber_make(tenant_a, "ada")
    client = api_client_for(tenant_a, scopes=["events:write"])
    body = assert_problem(
        put(client, "ada", [{"channel": "sms", "enabled": False}]), 403, "insufficient-scope"
    )
    assert body["required_scope"] == "subscribers:write"
    assert_problem(client.get(url("ada")), 403, "insufficient-scope")
    assert rows_of(tenant_a) == set()


def test_messages_read_key_reads_but_does_not_set_preferences(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    subscriber_make(tenant_a, "ada")
    client = api_client_for(tenant_a, scopes=["messages:read"])
    assert client.get(url("ada")).status_code == 200
    response = put(client, "ada", [{"channel": "sms", "enabled": False}])
    assert_problem(response, 403, "insufficient-scope")
    assert rows_of(tenant_a) == set()


def test_subscribers_write_key_reads_and_sets_preferences(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    subscriber_make(tenant_a, "ada")
    client = api_client_for(tenant_a, scopes=["subscribers:write"])
    assert put(client, "ada", [{"channel": "sms", "enabled": False}]).status_code == 200
    assert client.get(url("ada")).status_code == 200


# --- tenant isolation -------------------------------------------------------------


def test_another_tenant_can_not_read_or_set_a_subscribers_preferences(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant, defaults_a: None
) -> None:
    subscriber_make(tenant_a, "ada")
    assert_problem(api_b.get(url("ada")), 404, "not-found")
    assert_problem(put(api_b, "ada", [{"channel": "sms", "enabled": True}]), 404, "not-found")
    assert ("ada", "", "", "sms", True) not in rows_of(tenant_a)
    assert rows_of(tenant_b) == set()


def test_defaults_of_one_tenant_do_not_apply_in_another(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant, defaults_a: None
) -> None:
    subscriber_make(tenant_b, "ada")
    assert api_b.get(url("ada")).json() == {"preferences": []}
    put(api_b, "ada", [{"channel": "email", "enabled": False}])
    assert rows_of(tenant_b) == {("ada", "", "", "email", False)}
    assert ("ada", "", "", "email", False) not in rows_of(tenant_a)
