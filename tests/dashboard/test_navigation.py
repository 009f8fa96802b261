"""The sidebars are grouped by task, and show only what the user may open."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from tenants.models import Tenant
from tests.conftest import TENANT_PASSWORD
from tests.dashboard.test_rules_admin import admin_client

pytestmark = pytest.mark.django_db


def sidebar(html: str) -> str:
    return html.split("<main", 1)[0]


def test_the_tenant_sidebar_is_grouped_by_task(tenant_a: Tenant) -> None:
    html = sidebar(admin_client("alpha").get("/admin/").content.decode())
    for group in ("Design", "Audience", "Delivery", "Logs", "Settings"):
        assert group in html
    for link in (
        "/admin/rules_engine/rule/",
        "/admin/rules_engine/template/",
        "/admin/tenants/apikey/",
        "/admin/auth/user/",
    ):
        assert f'href="{link}"' in html
    assert "Content access log" not in html
    assert "/admin/tenants/tenant/" not in html


def test_the_staff_sidebar_and_what_a_limited_user_sees(tenant_a: Tenant) -> None:
    User.objects.create_superuser(username="ops", password=TENANT_PASSWORD)
    ops = Client(HTTP_HOST="localhost")
    assert ops.login(username="ops", password=TENANT_PASSWORD)
    html = sidebar(ops.get("/admin/").content.decode())
    for link in (
        "/admin/tenants/tenant/",
        "/admin/tenants/plan/",
        "/admin/dashboard/contentaccess/",
    ):
        assert f'href="{link}"' in html
    assert "/admin/rules_engine/" not in html

    limited = User.objects.create_user(username="watcher", password=TENANT_PASSWORD, is_staff=True)
    limited.user_permissions.add(Permission.objects.get(codename="view_tenant"))
    client = Client(HTTP_HOST="localhost")
    assert client.login(username="watcher", password=TENANT_PASSWORD)
    shown = sidebar(client.get("/admin/").content.decode())
    assert 'href="/admin/tenants/tenant/"' in shown
    assert 'href="/admin/tenants/plan/"' not in shown
    assert 'href="/admin/auth/user/"' not in shown
