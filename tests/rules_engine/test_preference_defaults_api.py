"""GET/PUT /api/v1/preferences/defaults: the tenant's defaults for everybody."""

from collections.abc import Callable
from typing import Any

import pytest

from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/preferences/defaults"


def put(client: ApiClient, body: Any) -> Any:
    return client.put(URL, body, content_type="application/json")


def test_defaults_round_trip_and_apply_to_subscribers(api_a: ApiClient) -> None:
    body = {"preferences": [{"category": "marketing", "channel": "email", "enabled": False}]}
    response = put(api_a, body)
    assert response.status_code == 200
    expected = {
        "event_type": None,
        "category": "marketing",
        "channel": "email",
        "enabled": False,
        "source": "default",
    }
    assert response.json()["preferences"] == [expected]
    assert api_a.get(URL).json()["preferences"] == [expected]
    api_a.put("/api/v1/subscribers/u-1", {}, content_type="application/json")
    effective = api_a.get("/api/v1/subscribers/u-1/preferences").json()["preferences"]
    assert expected in effective


def test_setting_defaults_needs_admin(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    writer = api_client_for(tenant_a, scopes=["subscribers:write"])
    body = {"preferences": [{"channel": "sms", "enabled": False}]}
    response = put(writer, body)
    assert response.status_code == 403
    assert response.json()["required_scope"] == "admin"
    assert writer.get(URL).status_code == 200


def test_invalid_default_is_422(api_a: ApiClient) -> None:
    response = put(api_a, {"preferences": [{"channel": "pigeon", "enabled": False}]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"].startswith("/preferences/0")


def test_defaults_are_per_tenant(api_a: ApiClient, api_b: ApiClient) -> None:
    put(api_a, {"preferences": [{"channel": "sms", "enabled": False}]})
    assert api_b.get(URL).json()["preferences"] == []
