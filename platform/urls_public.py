"""URLs on the public hostname: the platform staff admin."""

from django.urls import path
from django.views.generic import RedirectView

from dashboard.sites import staff_admin_site

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", staff_admin_site.urls),
]
