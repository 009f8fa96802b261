"""URLs for /api/: reached only through API-key resolution (tenants.middleware)."""

from django.http import HttpRequest, HttpResponse
from django.urls import path, re_path

from herald.api import api
from herald.problems import problem_response


def api_not_found(request: HttpRequest, rest: str) -> HttpResponse:
    return problem_response(
        status=404,
        slug="not-found",
        title="Not found",
        detail=f"No API endpoint at {request.path}.",
    )


urlpatterns = [
    path("api/v1/", api.urls),
    re_path(r"^api/(?P<rest>.*)$", api_not_found),
]
