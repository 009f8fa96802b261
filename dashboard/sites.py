"""The two dashboards, each on its own hostname and schema.

``staff_admin_site`` is served on the public hostname to platform staff (users
of the public schema); ``tenant_admin_site`` on ``<slug>.<base domain>`` to a
tenant's own users (users of that tenant's schema). Neither URL configuration
mounts the other site, so a tenant admin can not reach the staff admin.
"""

from typing import Any

from django.http import HttpRequest
from django.template.response import TemplateResponse
from django_tenants.utils import get_public_schema_name
from unfold.sites import UnfoldAdminSite

PLATFORM_TITLE = "Herald platform"


def site_header(request: HttpRequest) -> str:
    """The dashboard's name: the tenant's on its own host, the platform's on the public one.

    django-unfold calls this (settings.UNFOLD) for every admin page.
    """
    tenant = getattr(request, "tenant", None)
    if tenant is None or tenant.schema_name == get_public_schema_name():
        return PLATFORM_TITLE
    return f"{tenant.name} · Herald"


def site_subheader(request: HttpRequest) -> str:
    tenant = getattr(request, "tenant", None)
    if tenant is None or tenant.schema_name == get_public_schema_name():
        return "Platform staff"
    return "Notifications dashboard"


class StaffAdminSite(UnfoldAdminSite):
    index_title = "Platform health"
    index_template = "dashboard/home_staff.html"

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        from dashboard.home import staff_home

        return super().index(request, {**staff_home(request), **(extra_context or {})})


class TenantAdminSite(UnfoldAdminSite):
    index_title = "Delivery overview"
    index_template = "dashboard/home_tenant.html"

    def index(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> TemplateResponse:
        from dashboard.home import tenant_home

        return super().index(request, {**tenant_home(request), **(extra_context or {})})


staff_admin_site = StaffAdminSite(name="staff_admin")
tenant_admin_site = TenantAdminSite(name="tenant_admin")
