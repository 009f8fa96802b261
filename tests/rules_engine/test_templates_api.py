"""/api/v1/templates and /api/v1/layouts: versioned templates and their brand wrappers."""

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from rules_engine.models import Layout, Template, TemplateVersion
from rules_engine.services.event_types import event_type_save
from rules_engine.services.rules import rule_create
from rules_engine.templating import TemplateSyntaxProblem, validate_template
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/templates"
LAYOUTS = "/api/v1/layouts"
EMAIL = {"subject": "Hello {{ subscriber.name }}", "html": "<p>Hi {{ subscriber.name }}</p>"}
BAD_JINJA = "Hello {{ subscriber.name"
LAYOUT = {
    "name": "Brand",
    "html": "<html><body>{{ content }}</body></html>",
    "text": "{{ content }}",
}


def send(client: Client, method: str, url: str, body: Any) -> Any:
    return getattr(client, method)(url, body, content_type="application/json")


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"urn:herald:problem:{slug}"
    assert body["detail"]
    return body


def template_message(source: str, *, html: bool = False) -> str:
    try:
        validate_template(source, html=html)
    except TemplateSyntaxProblem as problem:
        return problem.message
    raise AssertionError(f"{source!r} compiles")


def template_body(**overrides: Any) -> dict[str, Any]:
    return {
        "key": "welcome",
        "channel": "email",
        "name": "Welcome",
        "variants": {"en": EMAIL},
        **overrides,
    }


def create(client: ApiClient, **overrides: Any) -> dict[str, Any]:
    response = send(client, "post", URL, template_body(**overrides))
    assert response.status_code == 201, response.content
    body: dict[str, Any] = response.json()
    return body


def versions_of(tenant: Tenant, key: str) -> list[int]:
    with tenant_context(tenant):
        return list(
            TemplateVersion.objects.filter(template__key=key)
            .order_by("version")
            .values_list("version", flat=True)
        )


# --- POST /templates -------------------------------------------------------------


def test_create_a_template(api_a: ApiClient, tenant_a: Tenant) -> None:
    send(api_a, "put", f"{LAYOUTS}/brand", LAYOUT)
    body = create(
        api_a,
        variants={"en": EMAIL, "pt_BR": {"subject": "Olá", "text": "Olá"}},
        fallback_locale="en",
        strict=True,
        layout="brand",
        description="Sent after sign-up",
    )
    assert (body["key"], body["channel"], body["current_version"]) == ("welcome", "email", 1)
    assert body["description"] == "Sent after sign-up"
    version = body["version"]
    assert version["variants"] == {"en": EMAIL, "pt-BR": {"subject": "Olá", "text": "Olá"}}
    assert (version["fallback_locale"], version["strict"], version["layout"]) == (
        "en",
        True,
        "brand",
    )
    assert version["created_by"] == f"api:{api_a.token[:16]}"
    assert versions_of(tenant_a, "welcome") == [1]


def test_a_taken_key_is_a_conflict(api_a: ApiClient, tenant_a: Tenant) -> None:
    create(api_a)
    again = template_body(channel="sms", variants={"en": {"text": "x"}})
    body = assert_problem(send(api_a, "post", URL, again), 409, "conflict")
    assert body["key"] == "welcome"
    with tenant_context(tenant_a):
        assert Template.objects.get().channel == "email"


@pytest.mark.parametrize(
    ("overrides", "pointer"),
    [
        ({"key": "Welcome!"}, "/key"),
        ({"channel": "fax"}, "/channel"),
        ({"variants": {}}, "/variants"),
        ({"variants": {"english": EMAIL}}, "/variants/english"),
        ({"variants": {"en": {"html": "<p>x</p>"}}}, "/variants/en/subject"),
        ({"variants": {"en": {**EMAIL, "title": "x"}}}, "/variants/en/title"),
        ({"variants": {"en": {**EMAIL, "subject": 42}}}, "/variants/en/subject"),
        ({"variants": {"en": EMAIL, "de": EMAIL}}, "/fallback_locale"),
        ({"fallback_locale": "de"}, "/fallback_locale"),
        ({"layout": "missing"}, "/layout"),
        ({"channel": "sms", "variants": {"en": {"text": "x"}}, "layout": "brand"}, "/layout"),
        ({"unknown": 1}, "/unknown"),
    ],
)
def test_create_refuses_invalid_input(
    api_a: ApiClient, tenant_a: Tenant, overrides: dict[str, Any], pointer: str
) -> None:
    send(api_a, "put", f"{LAYOUTS}/brand", LAYOUT)
    body = assert_problem(
        send(api_a, "post", URL, template_body(**overrides)), 422, "validation-failed"
    )
    assert [error["pointer"] for error in body["errors"]] == [pointer]
    with tenant_context(tenant_a):
        assert not Template.objects.exists()


def test_syntax_errors_name_the_locale_and_field(api_a: ApiClient) -> None:
    body = assert_problem(
        send(
            api_a,
            "post",
            URL,
            template_body(
                variants={"en": EMAIL, "de": {**EMAIL, "subject": BAD_JINJA}},
                fallback_locale="en",
            ),
        ),
        422,
        "validation-failed",
    )
    assert body["errors"] == [
        {"pointer": "/variants/de/subject", "detail": template_message(BAD_JINJA)}
    ]


# --- GET -------------------------------------------------------------------------


def test_get_and_list(api_a: ApiClient) -> None:
    create(api_a, key="b-email")
    create(api_a, key="a-sms", channel="sms", variants={"en": {"text": "Hi"}})
    create(api_a, key="c-email")
    assert api_a.get(f"{URL}/a-sms").json()["version"]["variants"] == {"en": {"text": "Hi"}}
    first = api_a.get(URL, {"limit": 2}).json()
    assert [t["key"] for t in first["items"]] == ["a-sms", "b-email"]
    rest = api_a.get(URL, {"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [t["key"] for t in rest["items"]] == ["c-email"]
    emails = api_a.get(URL, {"channel": "email"}).json()
    assert [t["key"] for t in emails["items"]] == ["b-email", "c-email"]
    assert_problem(api_a.get(URL, {"channel": "fax"}), 422, "validation-failed")
    assert_problem(api_a.get(f"{URL}/nope"), 404, "not-found")


# --- PATCH: versions ---------------------------------------------------------------


def test_an_edit_makes_a_new_version_and_keeps_the_old(api_a: ApiClient, tenant_a: Tenant) -> None:
    create(api_a)
    changed = {"en": {**EMAIL, "subject": "Welcome aboard"}}
    response = send(api_a, "patch", f"{URL}/welcome", {"variants": changed, "strict": True})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["current_version"] == 2
    assert body["version"]["variants"] == changed
    assert body["version"]["strict"] is True

    old = api_a.get(f"{URL}/welcome/versions/1").json()
    assert old["variants"] == {"en": EMAIL}
    assert old["strict"] is False
    assert [v["version"] for v in api_a.get(f"{URL}/welcome/versions").json()["items"]] == [2, 1]
    assert_problem(api_a.get(f"{URL}/welcome/versions/9"), 404, "not-found")

    renamed = send(api_a, "patch", f"{URL}/welcome", {"name": "Hello", "description": "d"}).json()
    assert (renamed["name"], renamed["current_version"]) == ("Hello", 2)
    assert versions_of(tenant_a, "welcome") == [1, 2]


def test_layout_can_be_set_and_removed(api_a: ApiClient) -> None:
    send(api_a, "put", f"{LAYOUTS}/brand", LAYOUT)
    create(api_a)
    assert (
        send(api_a, "patch", f"{URL}/welcome", {"layout": "brand"}).json()["version"]["layout"]
        == "brand"
    )
    removed = send(api_a, "patch", f"{URL}/welcome", {"layout": None}).json()
    assert (removed["current_version"], removed["version"]["layout"]) == (3, None)


@pytest.mark.parametrize(
    ("patch", "pointer"),
    [
        ({"variants": {"en": {"subject": BAD_JINJA, "html": "<p>x</p>"}}}, "/variants/en/subject"),
        ({"fallback_locale": "fr"}, "/fallback_locale"),
        ({"channel": "sms"}, "/channel"),
        ({"key": "renamed"}, "/key"),
        ({"strict": None}, "/strict"),
        ({"variants": None}, "/variants"),
        ({"name": None}, "/name"),
        ({"variants": {"en": {"subject": "x"}}}, "/variants/en/html"),
    ],
)
def test_patch_refuses_invalid_input(
    api_a: ApiClient, tenant_a: Tenant, patch: dict[str, Any], pointer: str
) -> None:
    create(api_a)
    body = assert_problem(send(api_a, "patch", f"{URL}/welcome", patch), 422, "validation-failed")
    assert [error["pointer"] for error in body["errors"]] == [pointer]
    assert versions_of(tenant_a, "welcome") == [1]


# --- DELETE ----------------------------------------------------------------------


def test_delete_is_refused_while_a_rule_sends_with_it(api_a: ApiClient, tenant_a: Tenant) -> None:
    create(api_a)
    with tenant_context(tenant_a):
        event_type_save(key="signup")
        rule = rule_create(
            name="Welcome",
            event_type_key="signup",
            actions=[{"channel": Channel.EMAIL, "template": "welcome"}],
            recipients={"kind": "event"},
            created_by="t",
        ).rule
    body = assert_problem(api_a.delete(f"{URL}/welcome"), 409, "in-use")
    assert body["used_by"] == [f"rule:{rule.pk}"]
    assert versions_of(tenant_a, "welcome") == [1]

    assert api_a.delete(f"/api/v1/rules/{rule.pk}").status_code == 204
    assert api_a.delete(f"{URL}/welcome").status_code == 204
    assert versions_of(tenant_a, "welcome") == []
    assert_problem(api_a.delete(f"{URL}/welcome"), 404, "not-found")


# --- layouts ---------------------------------------------------------------------


def test_layouts_put_get_list_delete(api_a: ApiClient, tenant_a: Tenant) -> None:
    created = send(api_a, "put", f"{LAYOUTS}/brand", LAYOUT)
    assert created.status_code == 200, created.content
    assert created.json()["created"] is True
    replaced = send(api_a, "put", f"{LAYOUTS}/brand", {"html": "<div>{{ content }}</div>"}).json()
    assert (replaced["created"], replaced["name"], replaced["text"]) == (False, "", "")
    assert api_a.get(f"{LAYOUTS}/brand").json()["html"] == "<div>{{ content }}</div>"
    assert [x["key"] for x in api_a.get(LAYOUTS).json()["items"]] == ["brand"]

    create(api_a, layout="brand")
    body = assert_problem(api_a.delete(f"{LAYOUTS}/brand"), 409, "in-use")
    assert body["used_by"] == ["template:welcome"]
    send(api_a, "patch", f"{URL}/welcome", {"layout": None})
    assert api_a.delete(f"{LAYOUTS}/brand").status_code == 204
    with tenant_context(tenant_a):
        assert not Layout.objects.exists()
    assert_problem(api_a.get(f"{LAYOUTS}/brand"), 404, "not-found")


@pytest.mark.parametrize(
    ("key", "body", "pointer"),
    [
        ("brand", {"html": "<p>no mark</p>"}, "/html"),
        ("brand", {"html": "<p>{{ content }}{% if %}</p>"}, "/html"),
        ("brand", {"html": LAYOUT["html"], "text": BAD_JINJA}, "/text"),
        ("brand", {}, "/html"),
        ("Brand!", {"html": LAYOUT["html"]}, "/key"),
    ],
)
def test_layout_put_refuses_invalid_input(
    api_a: ApiClient, tenant_a: Tenant, key: str, body: dict[str, Any], pointer: str
) -> None:
    problem = assert_problem(send(api_a, "put", f"{LAYOUTS}/{key}", body), 422, "validation-failed")
    assert [error["pointer"] for error in problem["errors"]] == [pointer]
    with tenant_context(tenant_a):
        assert not Layout.objects.exists()


# --- scopes and tenants ------------------------------------------------------------


def test_scopes(
    api_client_for: Callable[..., ApiClient], api_a: ApiClient, tenant_a: Tenant
) -> None:
    create(api_a)
    send(api_a, "put", f"{LAYOUTS}/brand", LAYOUT)
    reader = api_client_for(tenant_a, scopes=["messages:read"])
    for url in (URL, f"{URL}/welcome", f"{URL}/welcome/versions", f"{URL}/welcome/versions/1",
                LAYOUTS, f"{LAYOUTS}/brand"):  # fmt: skip
        assert reader.get(url).status_code == 200, url
    assert_problem(send(reader, "post", URL, template_body(key="x")), 403, "insufficient-scope")
    assert_problem(
        send(reader, "patch", f"{URL}/welcome", {"name": "x"}), 403, "insufficient-scope"
    )
    assert_problem(reader.delete(f"{URL}/welcome"), 403, "insufficient-scope")
    assert_problem(send(reader, "put", f"{LAYOUTS}/x", LAYOUT), 403, "insufficient-scope")
    assert_problem(reader.delete(f"{LAYOUTS}/brand"), 403, "insufficient-scope")
    sender = api_client_for(tenant_a, scopes=["events:write"])
    assert_problem(sender.get(URL), 403, "insufficient-scope")
    assert_problem(sender.get(LAYOUTS), 403, "insufficient-scope")
    assert versions_of(tenant_a, "welcome") == [1]


def test_another_tenants_templates_and_layouts_are_not_found(
    api_a: ApiClient, api_b: ApiClient, tenant_a: Tenant
) -> None:
    send(api_a, "put", f"{LAYOUTS}/brand", LAYOUT)
    create(api_a, layout="brand")
    for url in (f"{URL}/welcome", f"{URL}/welcome/versions", f"{URL}/welcome/versions/1",
                f"{LAYOUTS}/brand"):  # fmt: skip
        assert_problem(api_b.get(url), 404, "not-found")
    assert_problem(send(api_b, "patch", f"{URL}/welcome", {"name": "x"}), 404, "not-found")
    assert_problem(api_b.delete(f"{URL}/welcome"), 404, "not-found")
    assert_problem(api_b.delete(f"{LAYOUTS}/brand"), 404, "not-found")
    assert api_b.get(URL).json()["items"] == []
    assert api_b.get(LAYOUTS).json()["items"] == []
    # B can not use A's layout either.
    body = assert_problem(
        send(api_b, "post", URL, template_body(layout="brand")), 422, "validation-failed"
    )
    assert [e["pointer"] for e in body["errors"]] == ["/layout"]
    assert versions_of(tenant_a, "welcome") == [1]
