"""A tenant's rows are invisible to every other tenant: ORM, API key, dashboard."""

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.http import HttpRequest, JsonResponse
from django.test import Client
from django.urls import include, path
from django_tenants.utils import tenant_context

from tenants.db import tenant_connection
from tenants.models import Tenant
from tests.conftest import TENANT_PASSWORD
from tests.factories import api_key_issue

pytestmark = pytest.mark.django_db


def users_in_current_schema(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "schema": tenant_connection.schema_name,
            "users": sorted(User.objects.values_list("username", flat=True)),
        }
    )


# An API URL configuration with one extra endpoint that reads a tenant table.
urlpatterns = [
    path("api/v1/_probe/users", users_in_current_schema),
    path("", include("herald.urls_api")),
]


@pytest.fixture
def probe_api(settings: Any) -> None:
    settings.API_URLCONF = __name__


def test_orm_rows_of_one_tenant_are_invisible_in_another(
    tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with tenant_context(tenant_a):
        User.objects.create_user(username="only-in-alpha")
        assert User.objects.filter(username="only-in-alpha").exists()
    with tenant_context(tenant_b):
        assert not User.objects.filter(username="only-in-alpha").exists()
        assert tenant_connection.schema_name == "beta"
    assert not User.objects.filter(username="only-in-alpha").exists()  # public


def test_api_key_sees_only_its_own_tenant(
    client: Client, tenant_a: Tenant, tenant_b: Tenant, probe_api: None
) -> None:
    with tenant_context(tenant_a):
        User.objects.create_user(username="only-in-alpha")
    key_a = api_key_issue(tenant=tenant_a)
    key_b = api_key_issue(tenant=tenant_b)

    seen_by_b = client.get("/api/v1/_probe/users", HTTP_AUTHORIZATION=f"Bearer {key_b.token}")
    assert seen_by_b.status_code == 200
    assert seen_by_b.json()["schema"] == "beta"
    assert "only-in-alpha" not in seen_by_b.json()["users"]
    assert "admin@alpha.example.com" not in seen_by_b.json()["users"]

    seen_by_a = client.get("/api/v1/_probe/users", HTTP_AUTHORIZATION=f"Bearer {key_a.token}")
    assert seen_by_a.json()["schema"] == "alpha"
    assert "only-in-alpha" in seen_by_a.json()["users"]


def test_host_header_can_not_steer_an_api_key_to_another_tenant(
    client: Client, tenant_a: Tenant, tenant_b: Tenant, probe_api: None
) -> None:
    key_b = api_key_issue(tenant=tenant_b)
    response = client.get(
        "/api/v1/_probe/users",
        HTTP_AUTHORIZATION=f"Bearer {key_b.token}",
        HTTP_HOST="alpha.localhost",
    )
    assert response.json()["schema"] == "beta"


def test_tenant_admin_logs_in_only_on_its_own_host(client: Client, tenant_a: Tenant) -> None:
    credentials = {"username": "admin@alpha.example.com", "password": TENANT_PASSWORD}
    refused = client.post("/admin/login/", credentials, HTTP_HOST="beta.localhost")
    assert refused.status_code == 200  # the form again, with an error
    assert "_auth_user_id" not in client.session

    accepted = client.post("/admin/login/", credentials, HTTP_HOST="alpha.localhost")
    assert accepted.status_code == 302
    index = client.get("/admin/", HTTP_HOST="alpha.localhost")
    assert index.status_code == 200
    # The session belongs to alpha's schema; beta's dashboard does not know it.
    assert client.get("/admin/", HTTP_HOST="beta.localhost").status_code == 302


def test_tenant_host_does_not_serve_the_staff_admin(client: Client, tenant_a: Tenant) -> None:
    client.post(
        "/admin/login/",
        {"username": "admin@alpha.example.com", "password": TENANT_PASSWORD},
        HTTP_HOST="alpha.localhost",
    )
    # (A tenant's own API keys have a page there; the staff's list of every key does not.)
    for url in (
        "/admin/tenants/tenant/",
        "/admin/tenants/plan/",
        "/admin/dashboard/contentaccess/",
    ):
        assert client.get(url, HTTP_HOST="alpha.localhost").status_code == 404


def test_staff_admin_is_on_the_public_host(client: Client, db: None) -> None:
    User.objects.create_superuser(username="root-staff", password=TENANT_PASSWORD)
    client.login(username="root-staff", password=TENANT_PASSWORD)
    assert client.get("/admin/tenants/tenant/", HTTP_HOST="localhost").status_code == 200
    # Platform staff are not users of any tenant.
    assert client.get("/admin/", HTTP_HOST="alpha.localhost").status_code == 302


def test_unknown_host_is_404(client: Client, db: None) -> None:
    assert client.get("/admin/login/", HTTP_HOST="nobody.localhost").status_code == 404


def test_suspended_tenant_dashboard_is_refused(client: Client, tenant_a: Tenant) -> None:
    from tenants.services import tenant_set_active

    tenant_set_active(tenant=tenant_a, is_active=False)
    assert client.get("/admin/login/", HTTP_HOST="alpha.localhost").status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "10.1.2.3", "nobody.localhost", "localhost"])
def test_healthz_answers_any_host(client: Client, db: None, host: str) -> None:
    response = client.get("/healthz", HTTP_HOST=host)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up"}


@pytest.mark.parametrize("host", ["localhost", "alpha.localhost"])
def test_root_leads_to_the_dashboard(client: Client, db: None, host: str) -> None:
    response = client.get("/", HTTP_HOST=host)
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
