"""URLs on a tenant's hostname (<slug>.<base domain>): the tenant admin."""

from django.urls import path

from dashboard.sites import tenant_admin_site

urlpatterns = [
    path("admin/", tenant_admin_site.urls),
]
