"""API-wide HTTP hygiene: body size caps, and problem+json for every error.

Errors raised inside endpoints become problem documents in herald.api; this
middleware catches what happens around them (a 405 from the router, a 400
from Django's request parsing, a 500 from another middleware) so that every
4xx/5xx under /api/ is application/problem+json.
"""

from collections.abc import Callable
from http import HTTPStatus

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from herald.problems import PROBLEM_CONTENT_TYPE, problem_response

API_PREFIX = "/api/"


def body_limit_for(path: str) -> int:
    if path.rstrip("/").endswith("/batch") or path.rstrip("/").endswith("/bulk"):
        return int(settings.HERALD_MAX_BATCH_BODY_BYTES)
    return int(settings.HERALD_MAX_BODY_BYTES)


class ApiProblemMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        if "\x00" in request.path_info or "%00" in request.META.get("QUERY_STRING", ""):
            # PostgreSQL can not compare text with NUL in it: refuse before any lookup.
            return problem_response(
                status=400,
                slug="nul-character",
                title="NUL character in the URL",
                detail="The path or query string contains U+0000 (%00).",
            )
        limit = body_limit_for(request.path_info)
        try:
            length = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            return problem_response(
                status=400,
                slug="bad-request",
                title="Bad request",
                detail="Content-Length is not a number.",
            )
        if length > limit:
            return problem_response(
                status=413,
                slug="body-too-large",
                title="Request body too large",
                detail=f"The body is {length} bytes; this endpoint accepts at most {limit}.",
                max_bytes=limit,
            )
        response = self.get_response(request)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith(
            PROBLEM_CONTENT_TYPE
        ):
            return self._as_problem(request, response)
        return response

    def _as_problem(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        status = response.status_code
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        detail = phrase
        if status == 405:
            detail = f"{request.method} is not allowed here; allowed: {response.get('Allow', '')}."
        elif status == 400:
            detail = "The request could not be read."
        problem = problem_response(
            status=status,
            slug=phrase.lower().replace(" ", "-") if status != 500 else "internal-error",
            title=phrase,
            detail=detail,
        )
        for header in ("Allow", "Retry-After", "WWW-Authenticate"):
            if header in response:
                problem[header] = response[header]
        return problem
