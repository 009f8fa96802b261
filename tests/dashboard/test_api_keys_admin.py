"""The tenant dashboard's API keys: issued with the token shown once, revoked,
and only the tenant's own."""

import re

import pytest
from django.test import Client

from tenants.models import ApiKey, Tenant
from tenants.services import api_key_create
from tests.dashboard.test_rules_admin import admin_client
from tests.factories import api_key_issue

pytestmark = pytest.mark.django_db

KEYS = "/admin/tenants/apikey/"


def test_a_key_is_issued_with_its_token_shown_once_and_then_works(tenant_a: Tenant) -> None:
    client = admin_client("alpha")
    form = client.get(f"{KEYS}add/")
    assert form.status_code == 200
    assert "messages:read" in form.content.decode()

    issued = client.post(f"{KEYS}add/", {"name": "reporting", "scopes": ["messages:read"]})

    assert issued.status_code == 200
    token = re.search(r"data-shown-once>([^<]+)<", issued.content.decode())
    assert token is not None
    key = ApiKey.objects.get(tenant=tenant_a, name="reporting")
    assert key.scopes == ["messages:read"]
    api = Client(headers={"Authorization": f"Bearer {token.group(1)}"})
    assert api.get("/api/v1/stats").status_code == 200
    # Never again: the key's page shows its prefix, not the token.
    page = client.get(f"{KEYS}{key.pk}/change/")
    assert page.status_code == 200
    assert token.group(1) not in page.content.decode()
    assert key.prefix in page.content.decode()


def test_bad_input_is_named(tenant_a: Tenant) -> None:
    client = admin_client("alpha")
    response = client.post(f"{KEYS}add/", {"name": "", "scopes": []})
    assert response.status_code == 200
    html = response.content.decode()
    assert "This field is required" in html
    assert not ApiKey.objects.filter(tenant=tenant_a, name="").exists()
    past = client.post(
        f"{KEYS}add/",
        {"name": "old", "scopes": ["admin"], "expires_at_0": "2020-01-01", "expires_at_1": "00:00"},
    )
    assert "the expiry must be in the future" in past.content.decode()


def test_a_key_is_revoked_and_refused(tenant_a: Tenant) -> None:
    client = admin_client("alpha")
    issued = api_key_issue(tenant=tenant_a, scopes=["messages:read"])
    api = Client(headers={"Authorization": f"Bearer {issued.token}"})
    assert api.get("/api/v1/me").status_code == 200
    confirm = client.get(f"{KEYS}{issued.api_key.pk}/revoke/")
    assert confirm.status_code == 200
    done = client.post(f"{KEYS}{issued.api_key.pk}/revoke/")
    assert done.status_code == 302
    issued.api_key.refresh_from_db()
    assert issued.api_key.revoked_at is not None
    assert api.get("/api/v1/me").status_code == 401
    listed = client.get(KEYS).content.decode()
    assert "revoked" in listed


def test_another_tenants_keys_are_neither_listed_nor_reachable(
    tenant_a: Tenant, tenant_b: Tenant
) -> None:
    betas = api_key_create(tenant=tenant_b, name="beta-secret-key", scopes=["admin"])
    client = admin_client("alpha")
    assert "beta-secret-key" not in client.get(KEYS).content.decode()
    assert client.get(f"{KEYS}{betas.api_key.pk}/change/").status_code in (302, 404)
    client.post(f"{KEYS}{betas.api_key.pk}/revoke/")
    client.post(KEYS, {"action": "revoke", "_selected_action": [betas.api_key.pk]})
    betas.api_key.refresh_from_db()
    assert betas.api_key.revoked_at is None
