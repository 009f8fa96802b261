"""The tenant dashboard's event types, rules, templates and layouts.

Forms validate with the services' validators (a compiler's message shows at
its field) and saves go through the services (an edit makes a new version).
"""

import json
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from rules_engine.cel import CelCompileError, validate_expression
from rules_engine.models import EventType, Layout, Rule, RuleVersion, Template, TemplateVersion
from rules_engine.services.event_types import event_type_save
from rules_engine.services.rules import rule_create
from rules_engine.services.templates import layout_save, template_create, template_update
from rules_engine.templating import TemplateSyntaxProblem, validate_template
from tenants.models import Tenant
from tests.conftest import TENANT_PASSWORD

pytestmark = pytest.mark.django_db

ADMIN = "/admin/rules_engine"
EMAIL = {"subject": "Shipped", "html": "<p>Shipped</p>"}
BAD_CEL = "event.payload.total >"
BAD_JINJA = "Hello {{ subscriber.name"
LAYOUT_HTML = "<html>{{ content }}</html>"


def admin_client(slug: str) -> Client:
    client = Client(HTTP_HOST=f"{slug}.localhost")
    response = client.post(
        "/admin/login/",
        {"username": f"admin@{slug}.example.com", "password": TENANT_PASSWORD},
    )
    assert response.status_code == 302, "login failed"
    return client


@pytest.fixture
def alpha(tenant_a: Tenant) -> Client:
    return admin_client("alpha")


@pytest.fixture
def configured(tenant_a: Tenant) -> dict[str, int]:
    with tenant_context(tenant_a):
        event_type = event_type_save(key="order.shipped")
        template_create(
            key="shipped-email", channel=Channel.EMAIL, variants={"en": EMAIL}, created_by="t"
        )
        template_create(
            key="shipped-sms", channel=Channel.SMS, variants={"en": {"text": "x"}}, created_by="t"
        )
        rule = rule_create(
            name="Existing",
            event_type_key="order.shipped",
            condition="event.payload.total > 1",
            actions=[{"channel": "email", "template": "shipped-email"}],
            recipients={"kind": "event"},
            created_by="api:hk_test_x",
        ).rule
        return {"event_type": event_type.pk, "rule": rule.pk}


def compiler_message(source: str) -> str:
    try:
        validate_expression(source)
    except CelCompileError as error:
        return error.message
    raise AssertionError(f"{source!r} compiles")


def template_message(source: str) -> str:
    try:
        validate_template(source)
    except TemplateSyntaxProblem as problem:
        return problem.message
    raise AssertionError(f"{source!r} compiles")


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, f"saved anyway: {response.status_code}"
    errors: dict[str, list[str]] = response.context["adminform"].form.errors
    assert errors, "no form errors"
    return {field: list(messages) for field, messages in errors.items()}


def rule_form(event_type: int, **overrides: Any) -> dict[str, Any]:
    data = {
        "name": "From the dashboard",
        "event_type": event_type,
        "enabled": "on",
        "order": 2,
        "condition": "event.payload.total > 100",
        "actions": json.dumps([{"channel": "sms", "template": "shipped-sms"}]),
        "recipients": json.dumps({"kind": "topic", "topic": "vip"}),
        "delay_seconds": "",
        "digest": "",
        "throttle": json.dumps({"limit": 2, "window_seconds": 3600}),
        "send_window": "",
        "_save": "Save",
    }
    data.update(overrides)
    return data


# --- pages ---------------------------------------------------------------------------


def test_pages_render(alpha: Client, tenant_a: Tenant, configured: dict[str, int]) -> None:
    with tenant_context(tenant_a):
        layout = layout_save(key="brand", html=LAYOUT_HTML).layout
        template = Template.objects.get(key="shipped-email")
    for url in (
        f"{ADMIN}/eventtype/",
        f"{ADMIN}/eventtype/add/",
        f"{ADMIN}/eventtype/{configured['event_type']}/change/",
        f"{ADMIN}/rule/",
        f"{ADMIN}/rule/add/",
        f"{ADMIN}/template/",
        f"{ADMIN}/template/add/",
        f"{ADMIN}/template/{template.pk}/change/",
        f"{ADMIN}/layout/",
        f"{ADMIN}/layout/add/",
        f"{ADMIN}/layout/{layout.pk}/change/",
    ):
        assert alpha.get(url).status_code == 200, url
    change = alpha.get(f"{ADMIN}/rule/{configured['rule']}/change/")
    assert change.status_code == 200
    # The current version's fields are in the form.
    assert change.context["adminform"].form.initial["condition"] == "event.payload.total > 1"
    assert "api:hk_test_x" in change.content.decode()  # the history


# --- rules ---------------------------------------------------------------------------


def test_adding_a_rule_goes_through_the_service(
    alpha: Client, tenant_a: Tenant, configured: dict[str, int]
) -> None:
    response = alpha.post(f"{ADMIN}/rule/add/", rule_form(configured["event_type"]))
    assert response.status_code == 302, response.context["adminform"].form.errors
    with tenant_context(tenant_a):
        rule = Rule.objects.get(name="From the dashboard")
        version = RuleVersion.objects.get(rule=rule)
    assert (rule.order, rule.current_version) == (2, 1)
    assert version.condition == "event.payload.total > 100"
    assert version.recipients == {"kind": "topic", "topic": "vip"}
    assert version.throttle == {"limit": 2, "window_seconds": 3600}
    assert version.created_by == "admin:admin@alpha.example.com"


def test_editing_a_rule_makes_a_new_version(
    alpha: Client, tenant_a: Tenant, configured: dict[str, int]
) -> None:
    url = f"{ADMIN}/rule/{configured['rule']}/change/"
    response = alpha.post(url, rule_form(configured["event_type"], condition="true"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    with tenant_context(tenant_a):
        versions = list(
            RuleVersion.objects.filter(rule_id=configured["rule"])
            .order_by("version")
            .values_list("version", "condition", "created_by")
        )
        rule = Rule.objects.get(pk=configured["rule"])
    assert versions == [
        (1, "event.payload.total > 1", "api:hk_test_x"),
        (2, "true", "admin:admin@alpha.example.com"),
    ]
    assert (rule.name, rule.current_version) == ("From the dashboard", 2)

    # Only a rename: no new version.
    form = rule_form(configured["event_type"], condition="true", name="Renamed")
    assert alpha.post(url, form).status_code == 302
    with tenant_context(tenant_a):
        assert RuleVersion.objects.filter(rule_id=configured["rule"]).count() == 2
        assert Rule.objects.get(pk=configured["rule"]).name == "Renamed"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"condition": BAD_CEL}, "condition", compiler_message(BAD_CEL)),
        (
            {"recipients": json.dumps({"kind": "broadcast", "filter": BAD_CEL})},
            "recipients",
            f"filter: {compiler_message(BAD_CEL)}",
        ),
        (
            {"digest": json.dumps({"key": BAD_CEL, "window_seconds": 600})},
            "digest",
            f"key: {compiler_message(BAD_CEL)}",
        ),
        (
            {"actions": json.dumps([{"channel": "email", "template": "shipped-sms"}])},
            "actions",
            "0/template: template 'shipped-sms' is for the 'sms' channel, not 'email'",
        ),
        (
            {"send_window": json.dumps({"start": "10:00", "end": "10:00"})},
            "send_window",
            "end: must differ from start: the window would never open",
        ),
        ({"actions": "not json"}, "actions", "Enter a valid JSON."),
    ],
)
def test_invalid_input_shows_at_its_field(
    alpha: Client,
    tenant_a: Tenant,
    configured: dict[str, int],
    overrides: dict[str, Any],
    field: str,
    message: str,
) -> None:
    response = alpha.post(f"{ADMIN}/rule/add/", rule_form(configured["event_type"], **overrides))
    assert form_errors(response) == {field: [message]}
    with tenant_context(tenant_a):
        assert Rule.objects.count() == 1


def test_editing_refuses_invalid_cel_and_keeps_the_version(
    alpha: Client, tenant_a: Tenant, configured: dict[str, int]
) -> None:
    response = alpha.post(
        f"{ADMIN}/rule/{configured['rule']}/change/",
        rule_form(configured["event_type"], condition=BAD_CEL),
    )
    assert form_errors(response) == {"condition": [compiler_message(BAD_CEL)]}
    with tenant_context(tenant_a):
        assert RuleVersion.objects.filter(rule_id=configured["rule"]).count() == 1


# --- templates and layouts ------------------------------------------------------------


def template_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "key": "welcome",
        "name": "Welcome",
        "channel": "email",
        "description": "",
        "variants": json.dumps({"en": EMAIL, "de": {"subject": "Hallo", "text": "Hallo"}}),
        "fallback_locale": "en",
        "layout": "",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def test_adding_and_editing_a_template_makes_versions(alpha: Client, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        layout_save(key="brand", html=LAYOUT_HTML)
    response = alpha.post(f"{ADMIN}/template/add/", template_form())
    assert response.status_code == 302, response.context["adminform"].form.errors
    with tenant_context(tenant_a):
        template = Template.objects.get(key="welcome")
    url = f"{ADMIN}/template/{template.pk}/change/"
    edited = template_form(strict="on", layout="brand")
    del edited["key"], edited["channel"]  # fixed once created
    assert alpha.post(url, edited).status_code == 302
    with tenant_context(tenant_a):
        versions = list(
            TemplateVersion.objects.filter(template=template)
            .order_by("version")
            .values_list("version", "strict", "layout__key", "created_by")
        )
    assert versions == [
        (1, False, None, "admin:admin@alpha.example.com"),
        (2, True, "brand", "admin:admin@alpha.example.com"),
    ]


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            {"variants": json.dumps({"en": EMAIL, "de": {"subject": BAD_JINJA, "text": "x"}})},
            "variants",
            f"de/subject: {template_message(BAD_JINJA)}",
        ),
        (
            {"variants": json.dumps({"en": {"html": "<p>x</p>"}}), "fallback_locale": ""},
            "variants",
            "en/subject: required for the 'email' channel",
        ),
        ({"fallback_locale": "fr"}, "fallback_locale", "'fr' is not one of the variants (de, en)"),
        ({"key": "Not a key"}, "key", "Use 1 to 100 characters"),
    ],
)
def test_invalid_templates_show_at_their_field(
    alpha: Client, tenant_a: Tenant, overrides: dict[str, Any], field: str, message: str
) -> None:
    errors = form_errors(alpha.post(f"{ADMIN}/template/add/", template_form(**overrides)))
    assert list(errors) == [field]
    assert errors[field][0].startswith(message)
    with tenant_context(tenant_a):
        assert not Template.objects.exists()


def test_a_template_a_rule_uses_is_protected_from_deletion(
    alpha: Client, tenant_a: Tenant, configured: dict[str, int]
) -> None:
    with tenant_context(tenant_a):
        template = Template.objects.get(key="shipped-email")
    url = f"{ADMIN}/template/{template.pk}/delete/"
    page = alpha.get(url)
    assert page.status_code == 200
    assert "Existing" in page.content.decode()
    alpha.post(url, {"post": "yes"})
    with tenant_context(tenant_a):
        assert Template.objects.filter(key="shipped-email").exists()

    with tenant_context(tenant_a):
        sms = Template.objects.get(key="shipped-sms")
    alpha.post(f"{ADMIN}/template/{sms.pk}/delete/", {"post": "yes"})
    with tenant_context(tenant_a):
        assert not Template.objects.filter(key="shipped-sms").exists()


def test_layouts(alpha: Client, tenant_a: Tenant, configured: dict[str, int]) -> None:
    refused = alpha.post(
        f"{ADMIN}/layout/add/", {"key": "brand", "name": "", "html": "<p>x</p>", "text": ""}
    )
    assert form_errors(refused) == {
        "html": ["must contain {{ content }}, where the email's body goes"]
    }
    added = alpha.post(
        f"{ADMIN}/layout/add/", {"key": "brand", "name": "Brand", "html": LAYOUT_HTML, "text": ""}
    )
    assert added.status_code == 302
    with tenant_context(tenant_a):
        layout = Layout.objects.get(key="brand")
        template_update(
            template=Template.objects.get(key="shipped-email"), layout="brand", created_by="t"
        )
    alpha.post(f"{ADMIN}/layout/{layout.pk}/delete/", {"post": "yes"})
    with tenant_context(tenant_a):
        assert Layout.objects.filter(key="brand").exists()


# --- event types -------------------------------------------------------------------


def test_event_types(alpha: Client, tenant_a: Tenant, configured: dict[str, int]) -> None:
    form = {
        "key": "invoice.paid",
        "name": "Invoice paid",
        "description": "",
        "category": "billing",
        "payload_schema": json.dumps({"type": "nonsense"}),
        "sample_payload": "{}",
        "_save": "Save",
    }
    errors = form_errors(alpha.post(f"{ADMIN}/eventtype/add/", form))
    assert list(errors) == ["payload_schema"]
    form["payload_schema"] = json.dumps({"type": "object"})
    assert alpha.post(f"{ADMIN}/eventtype/add/", form).status_code == 302
    with tenant_context(tenant_a):
        assert EventType.objects.get(key="invoice.paid").payload_schema == {"type": "object"}

    # An event type with rules is protected.
    alpha.post(f"{ADMIN}/eventtype/{configured['event_type']}/delete/", {"post": "yes"})
    with tenant_context(tenant_a):
        assert EventType.objects.filter(key="order.shipped").exists()


# --- tenants ------------------------------------------------------------------------


def test_another_tenants_admin_sees_none_of_it(
    tenant_a: Tenant, tenant_b: Tenant, configured: dict[str, int]
) -> None:
    beta = admin_client("beta")
    with tenant_context(tenant_a):
        template = Template.objects.get(key="shipped-email")
    for url in (f"{ADMIN}/rule/", f"{ADMIN}/template/", f"{ADMIN}/eventtype/"):
        response = beta.get(url)
        assert response.status_code == 200
        assert list(response.context["cl"].result_list) == [], url
    for url in (
        f"{ADMIN}/rule/{configured['rule']}/change/",
        f"{ADMIN}/template/{template.pk}/change/",
        f"{ADMIN}/eventtype/{configured['event_type']}/change/",
    ):
        response = beta.get(url, follow=True)
        assert "Existing" not in response.content.decode()
        assert "shipped-email" not in response.content.decode()
        assert response.redirect_chain, url  # "doesn't exist" sends back to the index
    # And B's own edit form can not name A's event type.
    response = beta.post(f"{ADMIN}/rule/add/", rule_form(configured["event_type"]))
    assert "event_type" in form_errors(response)
    with tenant_context(tenant_b):
        assert not Rule.objects.exists()
