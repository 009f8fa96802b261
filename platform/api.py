"""The public HTTP API under /api/v1/.

Authentication happens before this point (tenants.middleware): every request
that reaches an endpoint here carries ``request.api_key`` and runs in its
tenant's schema. Endpoints declare the scope they need with ``require_scope``.
Every error leaves as application/problem+json.
"""

import logging
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import HttpError, ValidationError

from herald.problems import problem_response
from tenants.authentication import ApiKeyPrincipal

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="Herald API",
    version="1",
    description=(
        "Send events, manage subscribers and read back what Herald delivered. "
        "Authenticate with `Authorization: Bearer <API key>`. Errors are "
        "RFC 9457 problem details (application/problem+json)."
    ),
    urls_namespace="api-v1",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
api.openapi_extra = {
    "components": {
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"apiKey": []}],
}


class InsufficientScope(Exception):
    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope


def principal_of(request: HttpRequest) -> ApiKeyPrincipal:
    principal: ApiKeyPrincipal = request.api_key  # type: ignore[attr-defined]
    return principal


def require_scope(request: HttpRequest, scope: str) -> ApiKeyPrincipal:
    principal = principal_of(request)
    if not principal.has_scope(scope):
        raise InsufficientScope(scope)
    return principal


@api.exception_handler(InsufficientScope)
def insufficient_scope(request: HttpRequest, exc: InsufficientScope) -> HttpResponse:
    return problem_response(
        status=403,
        slug="insufficient-scope",
        title="Insufficient scope",
        detail=f"This endpoint needs an API key with the '{exc.scope}' scope.",
        required_scope=exc.scope,
    )


@api.exception_handler(ValidationError)
def validation_failed(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors: list[dict[str, Any]] = [
        {
            "pointer": "/" + "/".join(str(part) for part in error.get("loc", ())[1:]),
            "detail": error.get("msg", "invalid"),
        }
        for error in exc.errors
    ]
    return problem_response(
        status=422,
        slug="validation-failed",
        title="Validation failed",
        detail="; ".join(f"{e['pointer']}: {e['detail']}" for e in errors) or "Invalid request.",
        errors=errors,
    )


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return problem_response(
        status=exc.status_code, slug=f"http-{exc.status_code}", title=str(exc), detail=str(exc)
    )


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return problem_response(
        status=404,
        slug="not-found",
        title="Not found",
        detail=str(exc) or "No such resource in this tenant.",
    )


@api.exception_handler(Exception)
def unexpected_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    # Logged at ERROR, so Sentry's logging integration reports it with the tenant tag.
    logger.exception("unhandled error in %s %s", request.method, request.path)
    return problem_response(
        status=500,
        slug="internal-error",
        title="Internal error",
        detail="Herald could not complete this request; the error has been logged.",
    )


class KeyOut(Schema):
    name: str
    prefix: str
    scopes: list[str]


class TenantOut(Schema):
    slug: str
    name: str


class MeOut(Schema):
    tenant: TenantOut
    api_key: KeyOut


@api.get("/me", response=MeOut, summary="Who am I", tags=["account"])
def me(request: HttpRequest) -> dict[str, Any]:
    """The tenant and the key this request authenticated as. Any scope may call it."""
    principal = principal_of(request)
    return {
        "tenant": {"slug": principal.tenant.slug, "name": principal.tenant.name},
        "api_key": {
            "name": principal.name,
            "prefix": principal.prefix,
            "scopes": sorted(principal.scopes),
        },
    }
