"""API key resolution: the middleware, the cache, and every way a key is refused."""

import json
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from herald.problems import PROBLEM_CONTENT_TYPE, problem_type
from tenants.authentication import AuthenticationFailed, api_key_cache, token_from_authorization
from tenants.db import tenant_connection
from tenants.models import ApiKey, ApiScope, Tenant
from tenants.services import api_key_revoke, tenant_set_active
from tests.factories import api_key_issue

pytestmark = pytest.mark.django_db


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    body = json.loads(response.content)
    assert body["type"] == problem_type(slug)
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def test_valid_key_resolves_its_tenant(client: Client, tenant_a: Tenant) -> None:
    key = api_key_issue(tenant=tenant_a, scopes=[ApiScope.EVENTS_WRITE])
    response = client.get("/api/v1/me", headers=bearer(key.token))
    assert response.status_code == 200
    assert response.json() == {
        "tenant": {"slug": "alpha", "name": "Alpha"},
        "api_key": {
            "name": key.api_key.name,
            "prefix": key.api_key.prefix,
            "scopes": ["events:write"],
        },
    }


def test_missing_key_is_401_problem(client: Client) -> None:
    response = client.get("/api/v1/me")
    assert_problem(response, 401, "missing-api-key")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer hk_test_short",
        "Bearer hk_prod_" + "a" * 40,
        "Bearer hk_test_" + "a" * 39 + "!",
        "Token hk_test_" + "a" * 40,
    ],
)
def test_malformed_key_is_401_problem(client: Client, header: str) -> None:
    response = client.get("/api/v1/me", HTTP_AUTHORIZATION=header)
    assert_problem(response, 401, "malformed-api-key")


def test_unknown_key_is_401_problem(client: Client) -> None:
    response = client.get("/api/v1/me", headers=bearer("hk_test_" + "A" * 40))
    assert_problem(response, 401, "invalid-api-key")


def test_revoked_key_is_refused_at_once_in_the_revoking_process(
    client: Client, tenant_a: Tenant
) -> None:
    key = api_key_issue(tenant=tenant_a)
    assert client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200
    api_key_revoke(api_key=key.api_key)
    assert_problem(client.get("/api/v1/me", headers=bearer(key.token)), 401, "revoked-api-key")


def test_revocation_elsewhere_takes_effect_within_five_seconds(
    client: Client, tenant_a: Tenant
) -> None:
    key = api_key_issue(tenant=tenant_a)
    assert client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200
    # Another process revokes: the row changes, this process's cache is not told.
    revoked_at = time.monotonic()
    ApiKey.objects.filter(pk=key.api_key.pk).update(revoked_at=timezone.now())
    served_from_cache = client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200

    while client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200:
        assert time.monotonic() - revoked_at < 5.0, "revoked key still accepted after 5 s"
        time.sleep(0.1)
    assert served_from_cache, "the warm key should have been served from the cache"
    assert time.monotonic() - revoked_at < 5.0


def test_expired_key_is_401_problem(client: Client, tenant_a: Tenant) -> None:
    key = api_key_issue(tenant=tenant_a, expires_at=timezone.now() + timedelta(seconds=30))
    assert client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200
    ApiKey.objects.filter(pk=key.api_key.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    api_key_cache.clear()
    assert_problem(client.get("/api/v1/me", headers=bearer(key.token)), 401, "expired-api-key")


def test_key_expiring_while_cached_is_refused(client: Client, tenant_a: Tenant) -> None:
    key = api_key_issue(tenant=tenant_a, expires_at=timezone.now() + timedelta(seconds=1))
    assert client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200
    time.sleep(1.1)
    assert_problem(client.get("/api/v1/me", headers=bearer(key.token)), 401, "expired-api-key")


def test_suspended_tenant_is_403_problem_at_once(client: Client, tenant_a: Tenant) -> None:
    key = api_key_issue(tenant=tenant_a)
    assert client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200
    tenant_set_active(tenant=tenant_a, is_active=False)
    assert_problem(client.get("/api/v1/me", headers=bearer(key.token)), 403, "tenant-suspended")
    tenant_set_active(tenant=tenant_a, is_active=True)
    assert client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200


def test_refused_request_never_runs_in_a_tenant_schema(client: Client) -> None:
    response = client.get("/api/v1/me", headers=bearer("hk_test_" + "B" * 40))
    assert response.status_code == 401
    assert tenant_connection.schema_name == "public"


def test_warm_key_costs_no_query(
    client: Client, tenant_a: Tenant, django_assert_num_queries
) -> None:
    key = api_key_issue(tenant=tenant_a)
    assert client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200
    with django_assert_num_queries(0):
        response = client.get("/api/v1/me", headers=bearer(key.token))
    assert response.status_code == 200


def test_cold_key_costs_one_lookup_and_one_touch(client: Client, tenant_a: Tenant) -> None:
    key = api_key_issue(tenant=tenant_a)
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/v1/me", headers=bearer(key.token)).status_code == 200
    statements = [q["sql"].split()[0] for q in queries if not q["sql"].startswith("SET ")]
    assert statements == ["SELECT", "UPDATE"]  # key JOIN tenant; last_used_at


def test_last_used_at_is_written_at_most_once_a_minute(
    client: Client, tenant_a: Tenant, settings
) -> None:
    key = api_key_issue(tenant=tenant_a)
    assert key.api_key.last_used_at is None
    client.get("/api/v1/me", headers=bearer(key.token))
    key.api_key.refresh_from_db()
    first_use = key.api_key.last_used_at
    assert first_use is not None

    settings.HERALD_API_KEY_CACHE_SECONDS = 0  # every request reloads the key
    client.get("/api/v1/me", headers=bearer(key.token))
    key.api_key.refresh_from_db()
    assert key.api_key.last_used_at == first_use

    ApiKey.objects.filter(pk=key.api_key.pk).update(last_used_at=first_use - timedelta(seconds=61))
    client.get("/api/v1/me", headers=bearer(key.token))
    key.api_key.refresh_from_db()
    assert key.api_key.last_used_at > first_use


def test_token_parser_accepts_only_bearer_herald_keys() -> None:
    token = "hk_live_" + "x" * 40
    assert token_from_authorization(f"Bearer {token}") == token
    assert token_from_authorization(f"bearer {token}") == token
    with pytest.raises(AuthenticationFailed):
        token_from_authorization(f"Bearer {token} extra")


def test_openapi_document_needs_no_key(client: Client) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/me" in document["paths"]


def test_unknown_api_path_is_404_problem_after_authentication(
    client: Client, tenant_a: Tenant
) -> None:
    assert_problem(client.get("/api/v1/nothing-here"), 401, "missing-api-key")
    key = api_key_issue(tenant=tenant_a)
    assert_problem(client.get("/api/v1/nothing-here", headers=bearer(key.token)), 404, "not-found")
