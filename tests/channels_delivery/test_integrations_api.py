"""/api/v1/integrations: create, read, list, change and delete a tenant's
integrations, the providers listing, write-only secrets, the admin scope, and
tenant isolation."""

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from channels_delivery.models import Integration
from channels_delivery.services.integrations import integration_config, integration_create
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/integrations"
PASSWORD = "smtp-password-never-shown-9f2c"
AUTH_TOKEN = "twilio-token-never-shown-41ab"


def smtp_config(**overrides: Any) -> dict[str, Any]:
    return {
        "host": "smtp.acme.example",
        "port": 587,
        "security": "starttls",
        "username": "mailer",
        "password": PASSWORD,
        "from_email": "no-reply@acme.example",
        **overrides,
    }


def smtp_body(**overrides: Any) -> dict[str, Any]:
    return {
        "channel": "email",
        "provider": "smtp",
        "name": "Primary SMTP",
        "config": smtp_config(),
        **overrides,
    }


def post(client: Client, url: str, body: Any) -> Any:
    return client.post(url, body, content_type="application/json")


def patch(client: Client, url: str, body: Any) -> Any:
    return client.patch(url, body, content_type="application/json")


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"urn:herald:problem:{slug}"
    assert body["detail"]
    return body


def pointers(response: Any) -> dict[str, str]:
    body = assert_problem(response, 422, "validation-failed")
    return {error["pointer"]: error["detail"] for error in body["errors"]}


def assert_no_secrets(response: Any) -> None:
    assert PASSWORD.encode() not in response.content
    assert AUTH_TOKEN.encode() not in response.content


def create_in(tenant: Tenant, name: str = "Primary SMTP", **kwargs: Any) -> Integration:
    with tenant_context(tenant):
        return integration_create(
            channel="email", provider="smtp", name=name, config=smtp_config(), **kwargs
        )


def stored(tenant: Tenant, integration_id: int) -> tuple[Integration, dict[str, Any]]:
    """The row and its full config (secrets decrypted), as delivery would read them."""
    with tenant_context(tenant):
        integration = Integration.objects.get(pk=integration_id)
        return integration, integration_config(integration=integration)


def integrations_of(tenant: Tenant) -> list[str]:
    with tenant_context(tenant):
        return list(Integration.objects.order_by("pk").values_list("name", flat=True))


# --- GET /integrations/providers ----------------------------------------------------


def test_providers_lists_each_channel_with_its_providers_fields(api_a: ApiClient) -> None:
    response = api_a.get(f"{URL}/providers")
    assert response.status_code == 200, response.content
    channels = {entry["channel"]: entry for entry in response.json()["channels"]}
    assert set(channels) == {"email", "sms", "webhook", "chat", "in_app", "push"}

    email = {provider["key"]: provider for provider in channels["email"]["providers"]}
    assert channels["email"]["built_in"] is False
    assert {"smtp", "console", "anymail"} <= set(email)
    assert email["smtp"]["secret_fields"] == ["password"]
    assert {"host", "port", "username", "password", "from_email"} <= set(
        email["smtp"]["config_fields"]
    )
    assert email["anymail"]["secret_fields"] == ["api_key", "secret_key"]

    sms = {provider["key"]: provider for provider in channels["sms"]["providers"]}
    assert sms["twilio"]["secret_fields"] == ["auth_token"]
    assert "account_sid" in sms["twilio"]["config_fields"]
    assert sms["twilio"]["description"].startswith("Twilio's Messages API")

    for built_in in ("webhook", "in_app", "push"):
        assert channels[built_in]["built_in"] is True
        assert channels[built_in]["providers"] == []


# --- POST /integrations ---------------------------------------------------------------


def test_create_answers_the_integration_without_its_secrets(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    response = post(api_a, URL, smtp_body(priority=5, rate_limit_per_second=20))
    assert response.status_code == 201, response.content
    assert_no_secrets(response)
    body = response.json()
    assert body["channel"] == "email"
    assert body["provider"] == "smtp"
    assert body["name"] == "Primary SMTP"
    assert body["priority"] == 5
    assert body["enabled"] is True
    assert body["rate_limit_per_second"] == 20
    assert body["secrets_set"] == ["password"]
    assert "password" not in body["config"]
    assert body["config"]["host"] == "smtp.acme.example"
    assert body["config"]["from_email"] == "no-reply@acme.example"

    integration, config = stored(tenant_a, body["id"])
    assert config["password"] == PASSWORD
    assert PASSWORD not in integration.secrets  # encrypted at rest


def test_create_refuses_a_bad_config_naming_each_field(api_a: ApiClient, tenant_a: Tenant) -> None:
    response = post(
        api_a,
        URL,
        smtp_body(config=smtp_config(host="", port=0, from_email="nobody", nick="x")),
    )
    errors = pointers(response)
    assert set(errors) == {"/config/host", "/config/port", "/config/from_email", "/config/nick"}
    assert errors["/config/nick"] == "unknown field"
    assert_no_secrets(response)
    assert integrations_of(tenant_a) == []


def test_create_names_a_missing_secret_under_config(api_a: ApiClient) -> None:
    body = smtp_body(config={k: v for k, v in smtp_config().items() if k != "password"})
    assert pointers(post(api_a, URL, body)) == {
        "/config/password": "required when a username is set"
    }


@pytest.mark.parametrize(
    ("overrides", "pointer", "detail"),
    [
        ({"provider": "pigeon"}, "/provider", "no provider 'pigeon' for the email channel"),
        ({"channel": "webhook"}, "/channel", "/api/v1/webhook-endpoints"),
        ({"channel": "in_app"}, "/channel", "built in and takes no integration"),
        # Refused even with the provider Herald itself delivers the channel with.
        ({"channel": "in_app", "provider": "inbox"}, "/channel", "in_app channel is built in"),
        ({"channel": "push", "provider": "webpush"}, "/channel", "push channel is built in"),
        ({"channel": "fax"}, "/channel", ""),
        ({"name": ""}, "/name", ""),
        ({"priority": 5000}, "/priority", ""),
        ({"rate_limit_per_second": 0}, "/rate_limit_per_second", ""),
        ({"secrets": {"password": "x"}}, "/secrets", ""),
    ],
)
def test_create_refuses_bad_fields(
    api_a: ApiClient, tenant_a: Tenant, overrides: dict[str, Any], pointer: str, detail: str
) -> None:
    errors = pointers(post(api_a, URL, smtp_body(**overrides)))
    assert pointer in errors
    assert detail in errors[pointer]
    assert integrations_of(tenant_a) == []


def test_create_refuses_a_name_the_channel_has_with_409(api_a: ApiClient, tenant_a: Tenant) -> None:
    assert post(api_a, URL, smtp_body()).status_code == 201
    body = assert_problem(post(api_a, URL, smtp_body()), 409, "conflict")
    assert "Primary SMTP" in body["detail"]
    # The same name on another channel is another integration.
    twilio = {
        "channel": "sms",
        "provider": "twilio",
        "name": "Primary SMTP",
        "config": {"account_sid": "AC123", "auth_token": AUTH_TOKEN, "from": "+14155550100"},
    }
    created = post(api_a, URL, twilio)
    assert created.status_code == 201, created.content
    assert_no_secrets(created)
    assert created.json()["secrets_set"] == ["auth_token"]
    assert integrations_of(tenant_a) == ["Primary SMTP", "Primary SMTP"]


# --- GET /integrations/{id} and GET /integrations -----------------------------------


def test_get_answers_the_integration_without_its_secrets(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    integration = create_in(tenant_a)
    response = api_a.get(f"{URL}/{integration.pk}")
    assert response.status_code == 200, response.content
    assert_no_secrets(response)
    assert response.json()["id"] == integration.pk
    assert response.json()["secrets_set"] == ["password"]
    assert "password" not in response.json()["config"]

    assert_problem(api_a.get(f"{URL}/{integration.pk + 1000}"), 404, "not-found")


def test_list_pages_in_priority_order_and_filters_by_channel(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    third = create_in(tenant_a, "Third", priority=30)
    first = create_in(tenant_a, "First", priority=-5)
    second = create_in(tenant_a, "Second", priority=10)
    with tenant_context(tenant_a):
        sms = integration_create(
            channel="sms",
            provider="twilio",
            name="Texts",
            config={"account_sid": "AC123", "auth_token": AUTH_TOKEN, "from": "+14155550100"},
            priority=20,
        )

    page = api_a.get(URL, {"limit": 2})
    assert page.status_code == 200, page.content
    assert_no_secrets(page)
    assert [item["id"] for item in page.json()["items"]] == [first.pk, second.pk]
    rest = api_a.get(URL, {"limit": 2, "cursor": page.json()["next_cursor"]})
    assert [item["id"] for item in rest.json()["items"]] == [sms.pk, third.pk]
    assert rest.json()["next_cursor"] is None

    emails = api_a.get(URL, {"channel": "email"}).json()
    assert [item["name"] for item in emails["items"]] == ["First", "Second", "Third"]
    texts = api_a.get(URL, {"channel": "sms"})
    assert_no_secrets(texts)
    assert [item["secrets_set"] for item in texts.json()["items"]] == [["auth_token"]]


def test_list_refuses_a_bad_cursor_and_an_unknown_channel(api_a: ApiClient) -> None:
    assert_problem(api_a.get(URL, {"cursor": "not-a-cursor"}), 400, "invalid-cursor")
    assert "/query/channel" in pointers(api_a.get(URL, {"channel": "fax"}))
    assert "/query/limit" in pointers(api_a.get(URL, {"limit": 0}))


# --- PATCH /integrations/{id} ---------------------------------------------------------


def test_patch_merges_config_and_keeps_secrets_left_out(api_a: ApiClient, tenant_a: Tenant) -> None:
    integration = create_in(tenant_a)
    response = patch(api_a, f"{URL}/{integration.pk}", {"config": {"port": 2525}})
    assert response.status_code == 200, response.content
    assert_no_secrets(response)
    assert response.json()["config"]["port"] == 2525
    assert response.json()["config"]["host"] == "smtp.acme.example"
    assert response.json()["secrets_set"] == ["password"]
    _, config = stored(tenant_a, integration.pk)
    assert (config["port"], config["host"], config["password"]) == (
        2525,
        "smtp.acme.example",
        PASSWORD,
    )

    # A blank secret (what a form sends for "unchanged") keeps it too.
    patch(api_a, f"{URL}/{integration.pk}", {"config": {"password": ""}})
    assert stored(tenant_a, integration.pk)[1]["password"] == PASSWORD

    changed = patch(api_a, f"{URL}/{integration.pk}", {"config": {"password": "new-pw-7781"}})
    assert changed.status_code == 200
    assert b"new-pw-7781" not in changed.content
    assert stored(tenant_a, integration.pk)[1]["password"] == "new-pw-7781"


def test_patch_null_clears_a_secret_and_resets_a_field(api_a: ApiClient, tenant_a: Tenant) -> None:
    integration = create_in(tenant_a)
    patch(api_a, f"{URL}/{integration.pk}", {"config": {"port": 2525}})
    response = patch(
        api_a,
        f"{URL}/{integration.pk}",
        {"config": {"username": None, "password": None, "port": None}},
    )
    assert response.status_code == 200, response.content
    assert response.json()["secrets_set"] == []
    _, config = stored(tenant_a, integration.pk)
    assert "password" not in config
    assert config["username"] == ""
    assert config["port"] == 587  # the provider's default for starttls


def test_patch_refuses_a_bad_config_and_changes_nothing(api_a: ApiClient, tenant_a: Tenant) -> None:
    integration = create_in(tenant_a)
    response = patch(
        api_a,
        f"{URL}/{integration.pk}",
        {"name": "Renamed", "config": {"security": "tls", "password": None}},
    )
    errors = pointers(response)
    assert set(errors) == {"/config/security", "/config/password"}
    assert_no_secrets(response)
    row, config = stored(tenant_a, integration.pk)
    assert (row.name, config["security"], config["password"]) == (
        "Primary SMTP",
        "starttls",
        PASSWORD,
    )


def test_patch_changes_name_priority_enabled_and_rate_limit(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    integration = create_in(tenant_a, rate_limit_per_second=5)
    response = patch(
        api_a,
        f"{URL}/{integration.pk}",
        {"name": "Fallback", "priority": 100, "enabled": False},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["name"], body["priority"], body["enabled"]) == ("Fallback", 100, False)
    assert body["rate_limit_per_second"] == 5  # left out: unchanged
    assert (
        patch(api_a, f"{URL}/{integration.pk}", {"rate_limit_per_second": 50}).json()[
            "rate_limit_per_second"
        ]
        == 50
    )
    assert (
        patch(api_a, f"{URL}/{integration.pk}", {"rate_limit_per_second": None}).json()[
            "rate_limit_per_second"
        ]
        is None
    )
    row, config = stored(tenant_a, integration.pk)
    assert (row.name, row.priority, row.enabled, row.rate_limit_per_second) == (
        "Fallback",
        100,
        False,
        None,
    )
    assert config["password"] == PASSWORD


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"name": None}, "/name"),
        ({"config": None}, "/config"),
        ({"enabled": None}, "/enabled"),
        ({"priority": -1001}, "/priority"),
        ({"channel": "sms"}, "/channel"),
        ({"provider": "console"}, "/provider"),
    ],
)
def test_patch_refuses_bad_fields(
    api_a: ApiClient, tenant_a: Tenant, body: dict[str, Any], pointer: str
) -> None:
    integration = create_in(tenant_a)
    assert pointer in pointers(patch(api_a, f"{URL}/{integration.pk}", body))
    row, _ = stored(tenant_a, integration.pk)
    assert (row.channel, row.provider, row.name, row.enabled) == (
        "email",
        "smtp",
        "Primary SMTP",
        True,
    )


def test_patch_to_a_name_the_channel_has_is_409(api_a: ApiClient, tenant_a: Tenant) -> None:
    create_in(tenant_a, "Primary")
    fallback = create_in(tenant_a, "Fallback")
    assert_problem(patch(api_a, f"{URL}/{fallback.pk}", {"name": "Primary"}), 409, "conflict")
    assert integrations_of(tenant_a) == ["Primary", "Fallback"]


def test_patch_unknown_integration_is_404(api_a: ApiClient) -> None:
    assert_problem(patch(api_a, f"{URL}/999999", {"enabled": False}), 404, "not-found")


# --- DELETE /integrations/{id} ----------------------------------------------------------


def test_delete_removes_the_integration(api_a: ApiClient, tenant_a: Tenant) -> None:
    kept = create_in(tenant_a, "Kept")
    gone = create_in(tenant_a, "Gone")
    response = api_a.delete(f"{URL}/{gone.pk}")
    assert response.status_code == 204, response.content
    assert integrations_of(tenant_a) == ["Kept"]
    assert_problem(api_a.get(f"{URL}/{gone.pk}"), 404, "not-found")
    assert_problem(api_a.delete(f"{URL}/{gone.pk}"), 404, "not-found")
    assert api_a.get(f"{URL}/{kept.pk}").status_code == 200


# --- scope and tenants ---------------------------------------------------------------


def every_operation(client: Client, integration_id: int) -> list[Any]:
    item = f"{URL}/{integration_id}"
    return [
        client.get(f"{URL}/providers"),
        client.get(URL),
        client.get(item),
        patch(client, item, {"name": "Changed", "config": {"password": "stolen"}}),
        client.delete(item),
        post(client, URL, smtp_body(name="Another")),
    ]


@pytest.mark.parametrize("scopes", [["messages:read"], ["events:write"], ["subscribers:write"]])
def test_every_operation_needs_the_admin_scope(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, scopes: list[str]
) -> None:
    integration = create_in(tenant_a)
    client = api_client_for(tenant_a, scopes=scopes)
    for response in every_operation(client, integration.pk):
        body = assert_problem(response, 403, "insufficient-scope")
        assert body["required_scope"] == "admin"
        assert_no_secrets(response)
    row, config = stored(tenant_a, integration.pk)
    assert (row.name, config["password"]) == ("Primary SMTP", PASSWORD)
    assert integrations_of(tenant_a) == ["Primary SMTP"]


def test_another_tenant_can_not_reach_an_integration(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    integration = create_in(tenant_a)
    item = f"{URL}/{integration.pk}"
    for response in (
        api_b.get(item),
        patch(api_b, item, {"name": "Changed", "config": {"password": "stolen"}}),
        api_b.delete(item),
    ):
        assert_problem(response, 404, "not-found")
        assert_no_secrets(response)
    listed = api_b.get(URL)
    assert listed.json() == {"items": [], "next_cursor": None}
    row, config = stored(tenant_a, integration.pk)
    assert (row.name, config["password"]) == ("Primary SMTP", PASSWORD)
    # The same name is free in B.
    assert post(api_b, URL, smtp_body()).status_code == 201
    assert integrations_of(tenant_b) == ["Primary SMTP"]
    assert integrations_of(tenant_a) == ["Primary SMTP"]


def test_no_answer_ever_carries_a_secret(api_a: ApiClient, tenant_a: Tenant) -> None:
    created = post(api_a, URL, smtp_body())
    item = f"{URL}/{created.json()['id']}"
    responses = [
        created,
        api_a.get(f"{URL}/providers"),
        api_a.get(URL),
        api_a.get(item),
        patch(api_a, item, {"config": {"port": 2525}}),
        patch(api_a, item, {"config": {"port": "x"}}),
        post(api_a, URL, smtp_body()),
        post(api_a, URL, smtp_body(name="Other", config=smtp_config(host=""))),
        api_a.delete(item),
    ]
    for response in responses:
        assert response.status_code < 500
        assert_no_secrets(response)
