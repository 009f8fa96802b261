"""The two dashboards, each on its own hostname and schema.

``staff_admin_site`` is served on the public hostname to platform staff (users
of the public schema); ``tenant_admin_site`` on ``<slug>.<base domain>`` to a
tenant's own users (users of that tenant's schema). Neither URL configuration
mounts the other site, so a tenant admin can not reach the staff admin.
"""

from django.http import HttpRequest
from unfold.sites import UnfoldAdminSite

from tenants.db import tenant_connection


class StaffAdminSite(UnfoldAdminSite):
    site_header = "Herald platform"
    site_title = "Herald platform"
    index_title = "Platform administration"


class TenantAdminSite(UnfoldAdminSite):
    site_header = "Herald"
    site_title = "Herald"

    def each_context(self, request: HttpRequest) -> dict[str, object]:
        context = super().each_context(request)
        tenant = getattr(request, "tenant", None)
        context["site_header"] = tenant.name if tenant is not None else self.site_header
        context["herald_schema"] = tenant_connection.schema_name
        return context


staff_admin_site = StaffAdminSite(name="staff_admin")
tenant_admin_site = TenantAdminSite(name="tenant_admin")
