"""/api/v1/webhook-endpoints: create, read, list, change, delete, rotate and read
the signing secret; the SSRF guard at /url, health fields, where the secret may
appear, the admin scope, and tenant isolation."""

import base64
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.models import WebhookEndpoint
from channels_delivery.services.webhooks import (
    endpoint_create,
    endpoint_disable,
    endpoint_secret,
    endpoint_signing_secrets,
)
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhook-endpoints"
# An IP literal on a public address: checked without DNS.
HOOK_URL = "https://93.184.216.34/herald"
SECRET_PATTERN = re.compile(rb"whsec_[A-Za-z0-9+/=]{16,}")
OWN_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def post(client: Client, url: str, body: Any = None) -> Any:
    if body is None:  # no body at all, as `curl -X POST` sends
        return client.post(url, "", content_type="application/json")
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


def create_in(tenant: Tenant, url: str = HOOK_URL, **kwargs: Any) -> tuple[WebhookEndpoint, str]:
    with tenant_context(tenant):
        endpoint = endpoint_create(url=url, **kwargs)
        return endpoint, endpoint_secret(endpoint=endpoint)


def stored(tenant: Tenant, endpoint_id: int) -> tuple[WebhookEndpoint, str]:
    with tenant_context(tenant):
        endpoint = WebhookEndpoint.objects.get(pk=endpoint_id)
        return endpoint, endpoint_secret(endpoint=endpoint)


def endpoint_ids(tenant: Tenant) -> list[int]:
    with tenant_context(tenant):
        return list(WebhookEndpoint.objects.order_by("pk").values_list("pk", flat=True))


def assert_no_secret(response: Any, *secrets: str) -> None:
    assert not SECRET_PATTERN.search(response.content), response.content
    for secret in secrets:
        assert secret.encode() not in response.content


# --- POST /webhook-endpoints ------------------------------------------------------------


def test_create_answers_the_secret_once(api_a: ApiClient, tenant_a: Tenant) -> None:
    response = post(
        api_a,
        URL,
        {
            "url": HOOK_URL,
            "description": "Orders",
            "event_types": ["order.shipped", "message.delivered", "endpoint.disabled"],
        },
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"][len("whsec_") :])) == 32
    assert body["url"] == HOOK_URL
    assert body["description"] == "Orders"
    assert body["event_types"] == ["order.shipped", "message.delivered", "endpoint.disabled"]
    assert (body["enabled"], body["disabled_reason"], body["failing_since"]) == (True, "", None)

    endpoint, secret = stored(tenant_a, body["id"])
    assert secret == body["secret"]
    assert secret not in endpoint.secrets  # encrypted at rest

    read = api_a.get(f"{URL}/{body['id']}")
    assert read.status_code == 200
    assert "secret" not in read.json()
    assert_no_secret(read, secret)


def test_create_takes_a_secret_of_the_tenants_own(api_a: ApiClient, tenant_a: Tenant) -> None:
    response = post(api_a, URL, {"url": HOOK_URL, "secret": OWN_SECRET, "enabled": False})
    assert response.status_code == 201, response.content
    assert response.json()["secret"] == OWN_SECRET
    assert response.json()["enabled"] is False
    assert stored(tenant_a, response.json()["id"])[1] == OWN_SECRET


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://10.0.0.7/hook", "10.0.0.7 is a private address"),
        ("http://127.0.0.1:8000/hook", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is"),
        ("http://[::ffff:10.0.0.1]/hook", "that is 10.0.0.1"),
        ("http://localhost/hook", "loopback name"),
        ("ftp://93.184.216.34/hook", "only http and https URLs are allowed"),
        ("https://nowhere.invalid/hook", "does not resolve"),
        ("https://user:pw@93.184.216.34/hook", "user name or password"),
    ],
)
def test_create_refuses_an_unsafe_url_with_the_guards_reason(
    api_a: ApiClient, tenant_a: Tenant, url: str, reason: str
) -> None:
    errors = pointers(post(api_a, URL, {"url": url}))
    assert list(errors) == ["/url"]
    assert reason in errors["/url"]
    assert endpoint_ids(tenant_a) == []


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"url": HOOK_URL, "secret": "not-a-whsec"}, "/secret"),
        ({"url": HOOK_URL, "secret": "whsec_" + base64.b64encode(b"short").decode()}, "/secret"),
        ({"url": HOOK_URL, "event_types": [""]}, "/event_types"),
        ({"url": HOOK_URL, "event_types": "order.shipped"}, "/event_types"),
        ({"url": HOOK_URL, "description": "x" * 201}, "/description"),
        ({"url": HOOK_URL, "token": "x"}, "/token"),
        ({}, "/url"),
    ],
)
def test_create_refuses_bad_fields(
    api_a: ApiClient, tenant_a: Tenant, body: dict[str, Any], pointer: str
) -> None:
    assert pointer in pointers(post(api_a, URL, body))
    assert endpoint_ids(tenant_a) == []


# --- GET /webhook-endpoints and /{id} ---------------------------------------------------


def test_get_shows_health_and_never_the_secret(api_a: ApiClient, tenant_a: Tenant) -> None:
    endpoint, secret = create_in(tenant_a, description="Flaky")
    failing_since = timezone.now() - timedelta(days=2)
    with tenant_context(tenant_a):
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=failing_since)
        endpoint.refresh_from_db()
        endpoint_disable(endpoint=endpoint, reason="the receiver answered 410 Gone")
    response = api_a.get(f"{URL}/{endpoint.pk}")
    assert response.status_code == 200, response.content
    assert_no_secret(response, secret)
    body = response.json()
    assert body["enabled"] is False
    assert body["disabled_reason"] == "the receiver answered 410 Gone"
    assert body["failing_since"] is not None
    assert abs(datetime.fromisoformat(body["failing_since"]) - failing_since) < timedelta(seconds=1)
    assert_problem(api_a.get(f"{URL}/{endpoint.pk + 1000}"), 404, "not-found")


def test_list_pages_oldest_first_and_filters_by_enabled(api_a: ApiClient, tenant_a: Tenant) -> None:
    first, secret = create_in(tenant_a)
    second, _ = create_in(tenant_a, enabled=False)
    third, _ = create_in(tenant_a)
    page = api_a.get(URL, {"limit": 2})
    assert page.status_code == 200, page.content
    assert_no_secret(page, secret)
    assert [item["id"] for item in page.json()["items"]] == [first.pk, second.pk]
    rest = api_a.get(URL, {"limit": 2, "cursor": page.json()["next_cursor"]})
    assert [item["id"] for item in rest.json()["items"]] == [third.pk]
    assert rest.json()["next_cursor"] is None
    enabled = api_a.get(URL, {"enabled": "true"}).json()["items"]
    assert [item["id"] for item in enabled] == [first.pk, third.pk]
    disabled = api_a.get(URL, {"enabled": "false"}).json()["items"]
    assert [item["id"] for item in disabled] == [second.pk]
    assert_problem(api_a.get(URL, {"cursor": "nope"}), 400, "invalid-cursor")


# --- PATCH /webhook-endpoints/{id} ---------------------------------------------------------


def test_patch_changes_what_is_sent(api_a: ApiClient, tenant_a: Tenant) -> None:
    endpoint, secret = create_in(tenant_a, description="Old", event_types=["a.b"])
    response = patch(
        api_a,
        f"{URL}/{endpoint.pk}",
        {"url": "https://93.184.216.35/v2", "event_types": ["message.failed", "order.paid"]},
    )
    assert response.status_code == 200, response.content
    assert_no_secret(response, secret)
    body = response.json()
    assert body["url"] == "https://93.184.216.35/v2"
    assert body["event_types"] == ["message.failed", "order.paid"]
    assert body["description"] == "Old"  # left out: unchanged
    row, stored_secret = stored(tenant_a, endpoint.pk)
    assert (row.url, row.event_types, stored_secret) == (
        "https://93.184.216.35/v2",
        ["message.failed", "order.paid"],
        secret,
    )
    everything = patch(api_a, f"{URL}/{endpoint.pk}", {"event_types": []})
    assert everything.json()["event_types"] == []


def test_patch_refuses_an_unsafe_url_and_changes_nothing(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    endpoint, _ = create_in(tenant_a)
    errors = pointers(
        patch(api_a, f"{URL}/{endpoint.pk}", {"url": "http://192.168.1.1/", "description": "x"})
    )
    assert errors == {"/url": "192.168.1.1 is a private address"}
    row, _ = stored(tenant_a, endpoint.pk)
    assert (row.url, row.description) == (HOOK_URL, "")


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"url": None}, "/url"),
        ({"enabled": None}, "/enabled"),
        ({"event_types": None}, "/event_types"),
        ({"event_types": ["x" * 201]}, "/event_types"),
        ({"secret": OWN_SECRET}, "/secret"),
    ],
)
def test_patch_refuses_bad_fields(
    api_a: ApiClient, tenant_a: Tenant, body: dict[str, Any], pointer: str
) -> None:
    endpoint, secret = create_in(tenant_a, event_types=["a.b"])
    assert pointer in pointers(patch(api_a, f"{URL}/{endpoint.pk}", body))
    row, stored_secret = stored(tenant_a, endpoint.pk)
    assert (row.url, row.enabled, row.event_types, stored_secret) == (
        HOOK_URL,
        True,
        ["a.b"],
        secret,
    )


def test_patch_disables_with_a_reason_and_enabling_clears_the_streak(
    api_a: ApiClient, api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    endpoint, _ = create_in(tenant_a)
    disabled = patch(api_a, f"{URL}/{endpoint.pk}", {"enabled": False})
    assert disabled.status_code == 200, disabled.content
    assert disabled.json()["enabled"] is False
    assert "disabled through the API" in disabled.json()["disabled_reason"]
    with tenant_context(tenant_a):
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now())

    enabled = patch(api_a, f"{URL}/{endpoint.pk}", {"enabled": True})
    assert enabled.status_code == 200
    body = enabled.json()
    assert (body["enabled"], body["disabled_reason"], body["failing_since"]) == (True, "", None)


def test_patch_unknown_endpoint_is_404(api_a: ApiClient) -> None:
    assert_problem(patch(api_a, f"{URL}/999999", {"enabled": False}), 404, "not-found")


# --- DELETE /webhook-endpoints/{id} -------------------------------------------------------


def test_delete_removes_the_endpoint(api_a: ApiClient, tenant_a: Tenant) -> None:
    kept, _ = create_in(tenant_a)
    gone, _ = create_in(tenant_a)
    assert api_a.delete(f"{URL}/{gone.pk}").status_code == 204
    assert endpoint_ids(tenant_a) == [kept.pk]
    assert_problem(api_a.get(f"{URL}/{gone.pk}"), 404, "not-found")
    assert_problem(api_a.delete(f"{URL}/{gone.pk}"), 404, "not-found")


# --- secrets: rotate and read ------------------------------------------------------------


def test_rotate_answers_a_new_secret_and_the_old_one_keeps_signing(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    endpoint, old = create_in(tenant_a)
    response = post(api_a, f"{URL}/{endpoint.pk}/rotate-secret")
    assert response.status_code == 200, response.content
    new = response.json()["secret"]
    assert new.startswith("whsec_")
    assert new != old
    assert old.encode() not in response.content
    row, current = stored(tenant_a, endpoint.pk)
    assert current == new
    with tenant_context(tenant_a):
        assert endpoint_signing_secrets(endpoint=row) == [new, old]
    assert api_a.get(f"{URL}/{endpoint.pk}/secret").json() == {"secret": new}


def test_rotate_takes_a_secret_of_the_tenants_own(api_a: ApiClient, tenant_a: Tenant) -> None:
    endpoint, _ = create_in(tenant_a)
    response = post(api_a, f"{URL}/{endpoint.pk}/rotate-secret", {"secret": OWN_SECRET})
    assert response.status_code == 200, response.content
    assert response.json() == {"secret": OWN_SECRET}
    assert stored(tenant_a, endpoint.pk)[1] == OWN_SECRET
    # An empty body is a rotation to a generated secret.
    generated = post(api_a, f"{URL}/{endpoint.pk}/rotate-secret", {})
    assert generated.status_code == 200
    assert generated.json()["secret"] not in (OWN_SECRET, "")


@pytest.mark.parametrize(
    ("body", "pointer"),
    [({"secret": "whsec_###"}, "/secret"), ({"secret": 42}, "/secret"), ({"ttl": 1}, "/ttl")],
)
def test_rotate_refuses_a_bad_secret_and_keeps_the_current(
    api_a: ApiClient, tenant_a: Tenant, body: dict[str, Any], pointer: str
) -> None:
    endpoint, secret = create_in(tenant_a)
    response = post(api_a, f"{URL}/{endpoint.pk}/rotate-secret", body)
    assert pointer in pointers(response)
    assert_no_secret(response, secret)
    assert stored(tenant_a, endpoint.pk)[1] == secret


def test_secret_reads_the_current_secret(api_a: ApiClient, tenant_a: Tenant) -> None:
    endpoint, secret = create_in(tenant_a)
    response = api_a.get(f"{URL}/{endpoint.pk}/secret")
    assert response.status_code == 200, response.content
    assert response.json() == {"secret": secret}
    assert_problem(api_a.get(f"{URL}/999999/secret"), 404, "not-found")
    assert_problem(post(api_a, f"{URL}/999999/rotate-secret"), 404, "not-found")


def test_only_create_rotate_and_secret_answer_a_secret(api_a: ApiClient, tenant_a: Tenant) -> None:
    created = post(api_a, URL, {"url": HOOK_URL})
    item = f"{URL}/{created.json()['id']}"
    secret = created.json()["secret"]
    for response in (
        api_a.get(URL),
        api_a.get(item),
        patch(api_a, item, {"description": "changed"}),
        patch(api_a, item, {"url": "http://10.0.0.1/"}),
        post(api_a, URL, {"url": "http://10.0.0.1/"}),
        post(api_a, f"{item}/rotate-secret", {"secret": "bad"}),
    ):
        assert response.status_code < 500
        assert_no_secret(response, secret)
    assert api_a.delete(item).status_code == 204


# --- scope and tenants -------------------------------------------------------------------


def every_operation(client: Client, endpoint_id: int) -> list[Any]:
    item = f"{URL}/{endpoint_id}"
    # The create goes last: the endpoint it makes in another tenant's schema may
    # get the same id as the one under test.
    return [
        client.get(URL),
        client.get(item),
        patch(client, item, {"url": "https://93.184.216.99/stolen", "enabled": False}),
        post(client, f"{item}/rotate-secret", {"secret": OWN_SECRET}),
        client.get(f"{item}/secret"),
        client.delete(item),
        post(client, URL, {"url": HOOK_URL}),
    ]


@pytest.mark.parametrize("scopes", [["messages:read"], ["events:write"], ["subscribers:write"]])
def test_every_operation_needs_the_admin_scope(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, scopes: list[str]
) -> None:
    endpoint, secret = create_in(tenant_a)
    client = api_client_for(tenant_a, scopes=scopes)
    for response in every_operation(client, endpoint.pk):
        body = assert_problem(response, 403, "insufficient-scope")
        assert body["required_scope"] == "admin"
        assert_no_secret(response, secret)
    row, stored_secret = stored(tenant_a, endpoint.pk)
    assert (row.url, row.enabled, stored_secret) == (HOOK_URL, True, secret)
    assert endpoint_ids(tenant_a) == [endpoint.pk]


def test_another_tenant_can_not_reach_an_endpoint(
    api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    endpoint, secret = create_in(tenant_a)
    operations = every_operation(api_b, endpoint.pk)
    listed, *by_id, created = operations
    assert listed.json() == {"items": [], "next_cursor": None}
    assert created.status_code == 201  # B's own endpoint, in B's schema
    for response in by_id:
        assert_problem(response, 404, "not-found")
        assert_no_secret(response, secret)
    row, stored_secret = stored(tenant_a, endpoint.pk)
    assert (row.url, row.enabled, stored_secret) == (HOOK_URL, True, secret)
    assert endpoint_ids(tenant_a) == [endpoint.pk]
    assert len(endpoint_ids(tenant_b)) == 1
