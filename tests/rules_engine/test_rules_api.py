"""/api/v1/rules: create, read, list, edit (versioned) and delete rules."""

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message
from rules_engine.cel import CelCompileError, validate_expression
from rules_engine.models import Event, Rule, RuleVersion
from rules_engine.services.event_types import event_type_save
from rules_engine.services.templates import template_create
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/rules"
BAD_CEL = "event.payload.total >"
EMAIL = {"subject": "Shipped", "html": "<p>Shipped</p>"}


def send(client: Client, method: str, url: str, body: Any) -> Any:
    return getattr(client, method)(url, body, content_type="application/json")


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"urn:herald:problem:{slug}"
    assert body["detail"]
    return body


def compiler_message(source: str) -> str:
    try:
        validate_expression(source)
    except CelCompileError as error:
        return error.message
    raise AssertionError(f"{source!r} compiles")


def configure(tenant: Tenant) -> None:
    """An event type and an email and SMS template."""
    with tenant_context(tenant):
        event_type_save(key="order.shipped")
        event_type_save(key="order.paid")
        template_create(
            key="shipped-email", channel=Channel.EMAIL, variants={"en": EMAIL}, created_by="t"
        )
        template_create(
            key="shipped-sms", channel=Channel.SMS, variants={"en": {"text": "x"}}, created_by="t"
        )


@pytest.fixture
def configured(tenant_a: Tenant) -> None:
    configure(tenant_a)


def rule_body(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Shipping notice",
        "event_type": "order.shipped",
        "condition": "event.payload.total > 100",
        "actions": [{"channel": "email", "template": "shipped-email"}],
        "recipients": {"kind": "event"},
        **overrides,
    }


def create(client: ApiClient, **overrides: Any) -> dict[str, Any]:
    response = send(client, "post", URL, rule_body(**overrides))
    assert response.status_code == 201, response.content
    body: dict[str, Any] = response.json()
    return body


def versions_of(tenant: Tenant, rule_id: int) -> list[tuple[int, str]]:
    with tenant_context(tenant):
        return list(
            RuleVersion.objects.filter(rule_id=rule_id)
            .order_by("version")
            .values_list("version", "condition")
        )


# --- POST /rules -----------------------------------------------------------------


def test_create_a_rule(api_a: ApiClient, tenant_a: Tenant, configured: None) -> None:
    body = create(
        api_a,
        order=3,
        delay_seconds=120,
        digest={"key": "event.payload.order_id", "window_seconds": 600},
        throttle={"limit": 5, "window_seconds": 3600},
        send_window={"start": "08:00", "end": "21:30"},
    )
    assert body["name"] == "Shipping notice"
    assert body["event_type"] == "order.shipped"
    assert (body["enabled"], body["order"], body["current_version"]) == (True, 3, 1)
    version = body["version"]
    assert version["version"] == 1
    assert version["condition"] == "event.payload.total > 100"
    assert version["actions"] == [{"channel": "email", "template": "shipped-email"}]
    assert version["recipients"] == {"kind": "event", "topic": None, "filter": None}
    assert version["delay_seconds"] == 120
    assert version["digest"] == {"key": "event.payload.order_id", "window_seconds": 600}
    assert version["throttle"] == {"limit": 5, "window_seconds": 3600}
    assert version["send_window"] == {"start": "08:00", "end": "21:30"}
    assert version["created_by"] == f"api:{api_a.token[:16]}"
    assert versions_of(tenant_a, body["id"]) == [(1, "event.payload.total > 100")]


@pytest.mark.parametrize(
    ("overrides", "pointer", "source"),
    [
        ({"condition": BAD_CEL}, "/condition", BAD_CEL),
        ({"condition": "foo == 1"}, "/condition", "foo == 1"),
        ({"recipients": {"kind": "broadcast", "filter": BAD_CEL}}, "/recipients/filter", BAD_CEL),
        ({"digest": {"key": BAD_CEL, "window_seconds": 600}}, "/digest/key", BAD_CEL),
    ],
)
def test_invalid_cel_is_a_validation_problem_at_its_field(
    api_a: ApiClient,
    tenant_a: Tenant,
    configured: None,
    overrides: dict[str, Any],
    pointer: str,
    source: str,
) -> None:
    body = assert_problem(
        send(api_a, "post", URL, rule_body(**overrides)), 422, "validation-failed"
    )
    assert body["errors"] == [{"pointer": pointer, "detail": compiler_message(source)}]
    with tenant_context(tenant_a):
        assert not Rule.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "pointer"),
    [
        ({"name": ""}, "/name"),
        ({"event_type": "not.declared"}, "/event_type"),
        ({"order": 10**7}, "/order"),
        ({"enabled": "perhaps"}, "/enabled"),
        ({"actions": []}, "/actions"),
        ({"actions": [{"channel": "pigeon", "template": "shipped-email"}]}, "/actions/0/channel"),
        ({"actions": [{"channel": "email", "template": "missing"}]}, "/actions/0/template"),
        ({"actions": [{"channel": "sms", "template": "shipped-email"}]}, "/actions/0/template"),
        (
            {
                "actions": [
                    {"channel": "sms", "template": "shipped-sms"},
                    {"channel": "sms", "template": "shipped-sms"},
                ]
            },
            "/actions",
        ),
        ({"recipients": {"kind": "topic"}}, "/recipients/topic"),
        ({"recipients": {"kind": "event", "filter": ""}}, "/recipients/filter"),
        ({"recipients": {"kind": "nobody"}}, "/recipients/kind"),
        ({"delay_seconds": 30 * 86400 + 1}, "/delay_seconds"),
        ({"digest": {"window_seconds": 30}}, "/digest/window_seconds"),
        ({"throttle": {"limit": 0, "window_seconds": 60}}, "/throttle/limit"),
        ({"send_window": {"start": "25:00", "end": "08:00"}}, "/send_window/start"),
        ({"send_window": {"start": "08:00", "end": "08:00"}}, "/send_window/end"),
        ({"surprise": True}, "/surprise"),
    ],
)
def test_create_refuses_invalid_input(
    api_a: ApiClient,
    tenant_a: Tenant,
    configured: None,
    overrides: dict[str, Any],
    pointer: str,
) -> None:
    body = assert_problem(
        send(api_a, "post", URL, rule_body(**overrides)), 422, "validation-failed"
    )
    assert [error["pointer"] for error in body["errors"]] == [pointer]
    with tenant_context(tenant_a):
        assert not Rule.objects.exists()


# --- GET /rules ------------------------------------------------------------------


def test_list_in_evaluation_order_with_a_filter(
    api_a: ApiClient, tenant_a: Tenant, configured: None
) -> None:
    late = create(api_a, name="late", order=9)["id"]
    early = create(api_a, name="early", order=1)["id"]
    paid = create(api_a, name="paid", event_type="order.paid", order=5)["id"]

    first = api_a.get(URL, {"limit": 2}).json()
    assert [r["id"] for r in first["items"]] == [early, paid]
    assert first["items"][0]["version"]["version"] == 1
    rest = api_a.get(URL, {"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [r["id"] for r in rest["items"]] == [late]
    assert rest["next_cursor"] is None

    shipped = api_a.get(URL, {"event_type": "order.shipped"}).json()
    assert [r["id"] for r in shipped["items"]] == [early, late]
    assert api_a.get(URL, {"event_type": "nothing"}).json()["items"] == []
    assert_problem(api_a.get(URL, {"cursor": "nope"}), 400, "invalid-cursor")


def test_get_one(api_a: ApiClient, configured: None) -> None:
    rule_id = create(api_a)["id"]
    body = api_a.get(f"{URL}/{rule_id}").json()
    assert body["id"] == rule_id
    assert body["version"]["condition"] == "event.payload.total > 100"
    assert_problem(api_a.get(f"{URL}/999999"), 404, "not-found")


# --- PATCH /rules/{id}: versions ---------------------------------------------------


def test_an_edit_makes_version_n_plus_1_and_keeps_the_old_ones(
    api_a: ApiClient, tenant_a: Tenant, configured: None
) -> None:
    rule_id = create(api_a)["id"]
    response = send(
        api_a,
        "patch",
        f"{URL}/{rule_id}",
        {
            "condition": "event.payload.total > 500",
            "recipients": {"kind": "topic", "topic": "vip"},
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["current_version"] == 2
    assert body["version"]["condition"] == "event.payload.total > 500"
    assert body["version"]["recipients"]["topic"] == "vip"
    assert body["version"]["actions"] == [{"channel": "email", "template": "shipped-email"}]

    old = api_a.get(f"{URL}/{rule_id}/versions/1").json()
    assert old["condition"] == "event.payload.total > 100"
    assert old["recipients"]["kind"] == "event"
    listed = api_a.get(f"{URL}/{rule_id}/versions").json()
    assert [v["version"] for v in listed["items"]] == [2, 1]
    assert_problem(api_a.get(f"{URL}/{rule_id}/versions/3"), 404, "not-found")
    assert versions_of(tenant_a, rule_id) == [
        (1, "event.payload.total > 100"),
        (2, "event.payload.total > 500"),
    ]


def test_plain_fields_change_in_place(api_a: ApiClient, tenant_a: Tenant, configured: None) -> None:
    rule_id = create(api_a)["id"]
    body = send(
        api_a, "patch", f"{URL}/{rule_id}", {"name": "Renamed", "enabled": False, "order": 4}
    ).json()
    assert (body["name"], body["enabled"], body["order"]) == ("Renamed", False, 4)
    assert body["current_version"] == 1
    # The same value again is no change either.
    same = send(api_a, "patch", f"{URL}/{rule_id}", {"condition": "event.payload.total > 100"})
    assert same.json()["current_version"] == 1
    assert len(versions_of(tenant_a, rule_id)) == 1


def test_null_clears_an_option(api_a: ApiClient, configured: None) -> None:
    rule_id = create(api_a, throttle={"limit": 1, "window_seconds": 60})["id"]
    body = send(api_a, "patch", f"{URL}/{rule_id}", {"throttle": None}).json()
    assert body["current_version"] == 2
    assert body["version"]["throttle"] is None


@pytest.mark.parametrize(
    ("patch", "pointer"),
    [
        ({"condition": BAD_CEL}, "/condition"),
        ({"name": None}, "/name"),
        ({"enabled": None}, "/enabled"),
        ({"actions": None}, "/actions"),
        ({"recipients": None}, "/recipients"),
        ({"recipients": {"kind": "topic"}}, "/recipients/topic"),
        ({"actions": [{"channel": "email", "template": "shipped-sms"}]}, "/actions/0/template"),
        ({"event_type": "order.paid"}, "/event_type"),
        ({"digest": {"key": BAD_CEL, "window_seconds": 600}}, "/digest/key"),
    ],
)
def test_patch_refuses_invalid_input(
    api_a: ApiClient, tenant_a: Tenant, configured: None, patch: dict[str, Any], pointer: str
) -> None:
    rule_id = create(api_a)["id"]
    body = assert_problem(send(api_a, "patch", f"{URL}/{rule_id}", patch), 422, "validation-failed")
    assert [error["pointer"] for error in body["errors"]] == [pointer]
    assert versions_of(tenant_a, rule_id) == [(1, "event.payload.total > 100")]


def test_messages_point_at_the_version_that_made_them(
    api_a: ApiClient, tenant_a: Tenant, configured: None
) -> None:
    rule_id = create(api_a)["id"]
    with tenant_context(tenant_a):
        message = Message.objects.create(
            event=Event.objects.create(event_type_key="order.shipped"),
            channel=Channel.EMAIL,
            rule_version=RuleVersion.objects.get(rule_id=rule_id, version=1),
        )
    send(api_a, "patch", f"{URL}/{rule_id}", {"condition": "true"})
    with tenant_context(tenant_a):
        message.refresh_from_db()
        assert message.rule_version is not None
        assert (message.rule_version.version, message.rule_version.condition) == (
            1,
            "event.payload.total > 100",
        )


# --- DELETE ----------------------------------------------------------------------


def test_delete(api_a: ApiClient, tenant_a: Tenant, configured: None) -> None:
    rule_id = create(api_a)["id"]
    assert api_a.delete(f"{URL}/{rule_id}").status_code == 204
    with tenant_context(tenant_a):
        assert not Rule.objects.exists()
        assert not RuleVersion.objects.exists()
    assert_problem(api_a.delete(f"{URL}/{rule_id}"), 404, "not-found")


# --- scopes and tenants ------------------------------------------------------------


def test_scopes(
    api_client_for: Callable[..., ApiClient], api_a: ApiClient, tenant_a: Tenant, configured: None
) -> None:
    rule_id = create(api_a)["id"]
    reader = api_client_for(tenant_a, scopes=["messages:read"])
    for url in (
        URL,
        f"{URL}/{rule_id}",
        f"{URL}/{rule_id}/versions",
        f"{URL}/{rule_id}/versions/1",
    ):
        assert reader.get(url).status_code == 200, url
    assert_problem(send(reader, "post", URL, rule_body()), 403, "insufficient-scope")
    assert_problem(
        send(reader, "patch", f"{URL}/{rule_id}", {"name": "x"}), 403, "insufficient-scope"
    )
    assert_problem(reader.delete(f"{URL}/{rule_id}"), 403, "insufficient-scope")
    writer = api_client_for(tenant_a, scopes=["events:write", "subscribers:write"])
    assert_problem(writer.get(URL), 403, "insufficient-scope")
    assert_problem(send(writer, "post", URL, rule_body()), 403, "insufficient-scope")
    assert len(versions_of(tenant_a, rule_id)) == 1


def test_another_tenants_rules_are_not_found(
    api_a: ApiClient, api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant, configured: None
) -> None:
    rule_id = create(api_a)["id"]
    for url in (f"{URL}/{rule_id}", f"{URL}/{rule_id}/versions", f"{URL}/{rule_id}/versions/1"):
        assert_problem(api_b.get(url), 404, "not-found")
    assert_problem(send(api_b, "patch", f"{URL}/{rule_id}", {"name": "mine"}), 404, "not-found")
    assert_problem(api_b.delete(f"{URL}/{rule_id}"), 404, "not-found")
    assert api_b.get(URL).json()["items"] == []
    # B can not point a rule at A's event type or templates either.
    body = assert_problem(send(api_b, "post", URL, rule_body()), 422, "validation-failed")
    assert {e["pointer"] for e in body["errors"]} == {"/event_type", "/actions/0/template"}
    assert versions_of(tenant_a, rule_id) == [(1, "event.payload.total > 100")]
    with tenant_context(tenant_a):
        assert Rule.objects.get(pk=rule_id).name == "Shipping notice"
