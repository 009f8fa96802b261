"""The staff dashboard's tenant and key pages, and what they do through the services."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tenants.models import ApiKey, Plan, Tenant
from tests.conftest import TENANT_PASSWORD
from tests.factories import api_key_issue

pytestmark = pytest.mark.django_db

STAFF_HOST = "localhost"


@pytest.fixture
def staff_client(client: Client) -> Client:
    User.objects.create_superuser(username="ops", password=TENANT_PASSWORD)
    assert client.login(username="ops", password=TENANT_PASSWORD)
    return client


def test_staff_pages_render(staff_client: Client, tenant_a: Tenant) -> None:
    key = api_key_issue(tenant=tenant_a)
    for url in (
        "/admin/",
        "/admin/tenants/tenant/",
        f"/admin/tenants/tenant/{tenant_a.pk}/change/",
        "/admin/tenants/plan/",
        "/admin/tenants/apikey/",
        f"/admin/tenants/apikey/{key.api_key.pk}/change/",
    ):
        response = staff_client.get(url, HTTP_HOST=STAFF_HOST)
        assert response.status_code == 200, url
        assert key.token not in response.content.decode()
        assert key.api_key.key_hash not in response.content.decode()


def test_public_tenant_is_not_listed(staff_client: Client, tenant_a: Tenant) -> None:
    response = staff_client.get("/admin/tenants/tenant/", HTTP_HOST=STAFF_HOST)
    assert response.status_code == 200
    listed = [tenant.slug for tenant in response.context["cl"].result_list]
    assert "public" not in listed
    assert {"alpha", "beta"} <= set(listed)


def test_suspend_action_refuses_keys_at_once(staff_client: Client, tenant_a: Tenant) -> None:
    key = api_key_issue(tenant=tenant_a)
    auth = {"Authorization": f"Bearer {key.token}"}
    assert staff_client.get("/api/v1/me", headers=auth).status_code == 200
    staff_client.post(
        "/admin/tenants/tenant/",
        {"action": "suspend", "_selected_action": [tenant_a.pk]},
        HTTP_HOST=STAFF_HOST,
    )
    tenant_a.refresh_from_db()
    assert tenant_a.is_active is False
    assert staff_client.get("/api/v1/me", headers=auth).status_code == 403

    staff_client.post(
        "/admin/tenants/tenant/",
        {"action": "resume", "_selected_action": [tenant_a.pk]},
        HTTP_HOST=STAFF_HOST,
    )
    assert staff_client.get("/api/v1/me", headers=auth).status_code == 200


def test_revoke_action(staff_client: Client, tenant_a: Tenant) -> None:
    key = api_key_issue(tenant=tenant_a)
    staff_client.post(
        "/admin/tenants/apikey/",
        {"action": "revoke", "_selected_action": [key.api_key.pk]},
        HTTP_HOST=STAFF_HOST,
    )
    assert ApiKey.objects.get(pk=key.api_key.pk).revoked_at is not None
    response = staff_client.get("/api/v1/me", headers={"Authorization": f"Bearer {key.token}"})
    assert response.status_code == 401


def test_keys_can_not_be_added_from_the_staff_dashboard(staff_client: Client) -> None:
    """A tenant issues its own keys (its dashboard, or `herald api_key_create`)."""
    for url in ("/admin/tenants/apikey/add/",):
        assert staff_client.get(url, HTTP_HOST=STAFF_HOST).status_code == 403


def test_non_staff_can_not_open_the_staff_dashboard(client: Client, db: None) -> None:
    User.objects.create_user(username="someone", password=TENANT_PASSWORD)
    client.login(username="someone", password=TENANT_PASSWORD)
    response = client.get("/admin/tenants/tenant/", HTTP_HOST=STAFF_HOST)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_tenants_list_their_usage_against_the_plan(staff_client: Client, tenant_a: Tenant) -> None:
    from django.utils import timezone
    from django_tenants.utils import tenant_context

    from channels_delivery.services.stats import stats_fold
    from rules_engine.models import Event, Subscriber

    tenant_a.plan = Plan.objects.create(name="usage-test", events_per_month=10, max_subscribers=4)
    tenant_a.save()
    with tenant_context(tenant_a):
        stats_fold()  # what other tests committed is the baseline
    before = staff_client.get("/admin/tenants/tenant/", HTTP_HOST=STAFF_HOST)
    listed = {tenant.slug: tenant for tenant in before.context["cl"].result_list}
    used = listed["alpha"].month_events
    with tenant_context(tenant_a):
        Event.objects.bulk_create(
            [Event(event_type_key="x", created_at=timezone.now()) for _ in range(3)]
        )
        Subscriber.objects.create(external_id="usage-1")
        stats_fold()

    response = staff_client.get("/admin/tenants/tenant/", HTTP_HOST=STAFF_HOST)
    assert response.status_code == 200
    assert f"{used + 3:,} / 10 (" in response.content.decode()

    page = staff_client.get(f"/admin/tenants/tenant/{tenant_a.pk}/change/", HTTP_HOST=STAFF_HOST)
    html = page.content.decode()
    assert f"Events this month: {used + 3:,} of 10" in html
    assert "Subscribers: " in html
    assert "of 4 (" in html


def test_staff_create_a_tenant_whose_admin_can_log_in(staff_client: Client) -> None:
    import re

    form = staff_client.get("/admin/tenants/tenant/add/", HTTP_HOST=STAFF_HOST)
    assert form.status_code == 200
    taken = staff_client.post(
        "/admin/tenants/tenant/add/",
        {"slug": "alpha", "name": "Again", "admin_email": "a@gamma.example.com"},
        HTTP_HOST=STAFF_HOST,
    )
    assert "&#x27;alpha&#x27; is already taken" in taken.content.decode()

    created = staff_client.post(
        "/admin/tenants/tenant/add/",
        {"slug": "gamma", "name": "Gamma Co", "admin_email": "owner@gamma.example.com"},
        HTTP_HOST=STAFF_HOST,
    )

    assert created.status_code == 200
    html = created.content.decode()
    assert "gamma.localhost" in html
    password = re.search(r"data-shown-once>([^<]+)<", html)
    assert password is not None
    gamma = Tenant.objects.get(slug="gamma")
    assert gamma.name == "Gamma Co"
    owner = Client(HTTP_HOST="gamma.localhost")
    login = owner.post(
        "/admin/login/",
        {"username": "owner@gamma.example.com", "password": password.group(1)},
    )
    assert login.status_code == 302
    assert owner.get("/admin/").status_code == 200


def test_creating_a_tenant_needs_the_permission(tenant_a: Tenant) -> None:
    from django.contrib.auth.models import Permission

    watcher = User.objects.create_user(username="watcher", password=TENANT_PASSWORD, is_staff=True)
    watcher.user_permissions.add(Permission.objects.get(codename="view_tenant"))
    client = Client(HTTP_HOST=STAFF_HOST)
    assert client.login(username="watcher", password=TENANT_PASSWORD)
    refused = client.post(
        "/admin/tenants/tenant/add/",
        {"slug": "delta", "name": "Delta", "admin_email": "owner@delta.example.com"},
    )
    assert refused.status_code == 403
    assert not Tenant.objects.filter(slug="delta").exists()
