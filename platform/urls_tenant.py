"""URLs on a tenant's hostname (<slug>.<base domain>): the tenant admin."""

from django.urls import path
from django.views.generic import RedirectView

from dashboard.sites import tenant_admin_site

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", tenant_admin_site.urls),
]
