"""Staff see a tenant's content only after giving a reason; every grant and
every page shown is recorded, and the grant expires."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message
from dashboard.models import ContentAccess, ContentAccessView
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.conftest import TENANT_PASSWORD
from tests.dashboard.test_rules_admin import admin_client

pytestmark = pytest.mark.django_db

STAFF_HOST = "localhost"
SECRET_SUBJECT = "Your prescription is ready"


def staff(username: str, *, superuser: bool = False, permitted: bool = False) -> Client:
    if superuser:
        User.objects.create_superuser(username=username, password=TENANT_PASSWORD)
    else:
        user = User.objects.create_user(username=username, password=TENANT_PASSWORD, is_staff=True)
        user.user_permissions.add(Permission.objects.get(codename="view_tenant"))
        if permitted:
            user.user_permissions.add(Permission.objects.get(codename="open_tenant_content"))
    client = Client(HTTP_HOST=STAFF_HOST)
    assert client.login(username=username, password=TENANT_PASSWORD)
    return client


@pytest.fixture
def alpha_content(tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        ada = Subscriber.objects.create(external_id="content-ada")
        Message.objects.create(
            event=Event.objects.create(event_type_key="rx.ready"),
            subscriber=ada,
            channel=Channel.EMAIL,
            content={"subject": SECRET_SUBJECT},
        )


def test_content_is_shown_only_after_a_reason_and_every_view_is_recorded(
    tenant_a: Tenant, alpha_content: None
) -> None:
    client = staff("ops", superuser=True)
    content_url = f"/admin/tenants/tenant/{tenant_a.pk}/content/"
    change = client.get(f"/admin/tenants/tenant/{tenant_a.pk}/change/")
    assert SECRET_SUBJECT not in change.content.decode()
    assert "Open content (audited)" in change.content.decode()

    first = client.get(content_url)
    assert first.status_code == 302
    assert first["Location"].endswith("/content/open/")

    too_short = client.post(f"{content_url}open/", {"reason": "because"})
    assert too_short.status_code == 200
    assert "at least 10 characters" in too_short.content.decode()
    assert not ContentAccess.objects.exists()

    granted = client.post(f"{content_url}open/", {"reason": "Support ticket #4711: missing mail"})
    assert granted.status_code == 302
    page = client.get(content_url)
    assert page.status_code == 200
    assert SECRET_SUBJECT in page.content.decode()
    assert "content-ada" in page.content.decode()
    access = ContentAccess.objects.get()
    assert access.staff_user.username == "ops"
    assert access.tenant == tenant_a
    assert access.reason == "Support ticket #4711: missing mail"
    assert access.expires_at - access.granted_at == timedelta(minutes=30)
    client.get(content_url)
    assert list(ContentAccessView.objects.values_list("path", flat=True)) == [content_url] * 2

    log = client.get(f"/admin/dashboard/contentaccess/{access.pk}/change/")
    assert log.status_code == 200
    assert "Support ticket #4711" in log.content.decode()
    delete = client.post(f"/admin/dashboard/contentaccess/{access.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 403
    assert ContentAccess.objects.filter(pk=access.pk).exists()


def test_a_grant_expires_and_opens_only_its_tenant(
    tenant_a: Tenant, tenant_b: Tenant, alpha_content: None
) -> None:
    client = staff("ops", superuser=True)
    client.post(
        f"/admin/tenants/tenant/{tenant_a.pk}/content/open/",
        {"reason": "Support ticket #4711: missing mail"},
    )
    other = client.get(f"/admin/tenants/tenant/{tenant_b.pk}/content/")
    assert other.status_code == 302  # beta needs its own reason
    ContentAccess.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = client.get(f"/admin/tenants/tenant/{tenant_a.pk}/content/")
    assert expired.status_code == 302
    assert SECRET_SUBJECT not in expired.content.decode()


def test_staff_without_the_permission_can_not_open_content(
    tenant_a: Tenant, alpha_content: None
) -> None:
    client = staff("viewer")
    assert client.get(f"/admin/tenants/tenant/{tenant_a.pk}/change/").status_code == 200
    refused = client.post(
        f"/admin/tenants/tenant/{tenant_a.pk}/content/open/",
        {"reason": "Support ticket #4711: missing mail"},
    )
    assert refused.status_code == 403
    assert client.get(f"/admin/tenants/tenant/{tenant_a.pk}/content/").status_code == 403
    assert not ContentAccess.objects.exists()

    permitted = staff("support", permitted=True)
    permitted.post(
        f"/admin/tenants/tenant/{tenant_a.pk}/content/open/",
        {"reason": "Support ticket #4711: missing mail"},
    )
    shown = permitted.get(f"/admin/tenants/tenant/{tenant_a.pk}/content/")
    assert SECRET_SUBJECT in shown.content.decode()


def test_a_tenant_admin_can_not_reach_the_content_pages(tenant_a: Tenant) -> None:
    client = admin_client("alpha")
    response = client.get(f"/admin/tenants/tenant/{tenant_a.pk}/content/")
    assert response.status_code == 404
    outsider = Client(HTTP_HOST=STAFF_HOST)
    login = outsider.post(
        "/admin/login/", {"username": "admin@alpha.example.com", "password": TENANT_PASSWORD}
    )
    assert login.status_code == 200  # the form again: alpha's users are not staff here
    anonymous = outsider.get(f"/admin/tenants/tenant/{tenant_a.pk}/content/")
    assert anonymous.status_code == 302
    assert "/admin/login/" in anonymous["Location"]
