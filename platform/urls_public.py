"""URLs on the public hostname: the platform staff admin."""

from django.urls import path

from dashboard.sites import staff_admin_site

urlpatterns = [
    path("admin/", staff_admin_site.urls),
]
