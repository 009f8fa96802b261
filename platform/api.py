"""The public HTTP API under /api/v1/.

Authentication happens before this point (tenants.middleware): every request
that reaches an endpoint here carries ``request.api_key`` and runs in its
tenant's schema. Endpoints declare the scope they need with ``require_scope``.
Every error leaves as application/problem+json.
"""

import logging
from collections.abc import Sequence
from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, NinjaAPI, Schema
from ninja.errors import HttpError, ValidationError
from ninja.security import HttpBearer
from pydantic import BaseModel

from herald.jsonbody import BodyProblem, HeraldParser
from herald.pagination import InvalidCursor
from herald.problems import FieldError, json_pointer, problem_response, validation_problem
from tenants.authentication import ApiKeyPrincipal

logger = logging.getLogger(__name__)


class ApiKeyAuth(HttpBearer):
    """Declares the bearer scheme in the OpenAPI document.

    The key itself is checked by tenants.middleware before any endpoint runs
    (so a refusal is a problem document, never a fall-through); here the
    request only has to carry the principal that the middleware attached.
    """

    def authenticate(self, request: HttpRequest, token: str) -> ApiKeyPrincipal | None:
        principal: ApiKeyPrincipal | None = getattr(request, "api_key", None)
        return principal


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem document.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "urn:herald:problem:<slug>, stable"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "additionalProperties": True,
}
# Problems any operation may answer, besides those it declares itself.
COMMON_PROBLEMS = {
    "400": "Malformed JSON, JSON nested too deeply, or an unreadable request",
    "401": "Missing, malformed, unknown, revoked or expired API key",
    "403": "Suspended tenant, or a key without the scope this operation needs",
    "413": "Request body too large",
    "422": "Validation failed: the errors name each field (a JSON pointer)",
    "429": "Request rate or monthly event quota exceeded (Retry-After)",
    "500": "Unexpected error",
    "503": "The database is unreachable for the moment (Retry-After)",
}
DATABASE_RETRY_AFTER_SECONDS = 5


class HeraldNinjaAPI(NinjaAPI):
    def get_openapi_schema(self, **kwargs: Any) -> Any:
        """Errors are documented as what they are: application/problem+json."""
        from channels_delivery.api_inbox import document_inbox_security

        schema = super().get_openapi_schema(**kwargs)
        document_inbox_security(schema)
        schema["components"].setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        problem = {"$ref": "#/components/schemas/Problem"}
        for operations in schema["paths"].values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for status, response in responses.items():
                    if str(status)[0] in "45":
                        body = response.get("content", {}).get("application/json")
                        response["content"] = {
                            "application/problem+json": body or {"schema": problem}
                        }
                for status, description in COMMON_PROBLEMS.items():
                    if status not in responses and int(status) not in responses:
                        responses[status] = {
                            "description": description,
                            "content": {"application/problem+json": {"schema": problem}},
                        }
        return schema


api = HeraldNinjaAPI(
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
    parser=HeraldParser(),
    auth=ApiKeyAuth(),
)


class InsufficientScope(Exception):
    def __init__(self, *scopes: str) -> None:
        super().__init__(" or ".join(scopes))
        self.scopes = scopes


def principal_of(request: HttpRequest) -> ApiKeyPrincipal:
    principal: ApiKeyPrincipal = request.api_key  # type: ignore[attr-defined]
    return principal


def require_scope(request: HttpRequest, scope: str) -> ApiKeyPrincipal:
    return require_any_scope(request, scope)


def require_any_scope(request: HttpRequest, *scopes: str) -> ApiKeyPrincipal:
    principal = principal_of(request)
    if not any(principal.has_scope(scope) for scope in scopes):
        raise InsufficientScope(*scopes)
    return principal


@api.exception_handler(InsufficientScope)
def insufficient_scope(request: HttpRequest, exc: InsufficientScope) -> HttpResponse:
    needed = " or ".join(f"'{scope}'" for scope in exc.scopes)
    return problem_response(
        status=403,
        slug="insufficient-scope",
        title="Insufficient scope",
        detail=f"This endpoint needs an API key with the {needed} scope.",
        required_scope=exc.scopes[0] if len(exc.scopes) == 1 else list(exc.scopes),
    )


def json_pointer_of(location: Sequence[Any]) -> str:
    """A pydantic error location as a JSON pointer. The tags of tagged unions,
    written ``<like-this>`` (rules_engine.api.events.Recipient), name a branch of
    the schema, not a place in the document, and are left out."""
    kept = [
        part for part in location
        if not (isinstance(part, str) and part.startswith("<") and part.endswith(">"))
    ]  # fmt: skip
    return json_pointer(kept) or "/"


def _pointer(location: tuple[Any, ...] | list[Any]) -> str:
    """A JSON pointer into the request: body fields from the body's root."""
    parts = list(location)
    # django-ninja reports body fields as ("body", <parameter name>, field, …).
    parts = parts[2:] if parts[:1] == ["body"] else parts
    return json_pointer_of(parts)


@api.exception_handler(ValidationError)
def validation_failed(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return validation_problem(
        [
            FieldError(pointer=_pointer(error.get("loc", ())), detail=error.get("msg", "invalid"))
            for error in exc.errors
        ]
    )


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    cause = exc.__cause__
    if isinstance(cause, BodyProblem):  # django-ninja wraps parser errors in a 400
        return problem_response(
            status=cause.status,
            slug=cause.slug,
            title=cause.title,
            detail=cause.detail,
            **cause.extensions,
        )
    return problem_response(
        status=exc.status_code, slug=f"http-{exc.status_code}", title=str(exc), detail=str(exc)
    )


@api.exception_handler(InvalidCursor)
def invalid_cursor(request: HttpRequest, exc: InvalidCursor) -> HttpResponse:
    return problem_response(
        status=400,
        slug="invalid-cursor",
        title="Invalid cursor",
        detail=f"{exc} Pass the next_cursor of the previous page, or no cursor for the first.",
    )


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return problem_response(
        status=404,
        slug="not-found",
        title="Not found",
        detail=str(exc) or "No such resource in this tenant.",
    )


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def database_unavailable(
    request: HttpRequest, exc: OperationalError | InterfaceError
) -> HttpResponse:
    """The database went away mid-request (a restart, a failover, a dropped
    connection): the client may retry, as when it happens during authentication
    (tenants.middleware). Django drops the broken connection after the request;
    the next one reconnects. Errors in what was asked (an integrity error, a bad
    query) stay 500s."""
    logger.exception("database unavailable in %s %s", request.method, request.path)
    return problem_response(
        status=503,
        slug="service-unavailable",
        title="Service unavailable",
        detail="Herald's database is unreachable; retry shortly.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
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


def _register_routers() -> None:
    from channels_delivery.api import router as messages
    from channels_delivery.api_inbox import router as inbox
    from channels_delivery.api_integrations import router as integrations
    from channels_delivery.api_stats import router as stats
    from channels_delivery.api_webhooks import router as webhook_endpoints
    from rules_engine.api.event_types import router as event_types
    from rules_engine.api.events import router as events
    from rules_engine.api.preferences import defaults_router as preference_defaults
    from rules_engine.api.preferences import router as preferences
    from rules_engine.api.rules import router as rules
    from rules_engine.api.subscribers import router as subscribers
    from rules_engine.api.templates import layouts_router as layouts
    from rules_engine.api.templates import router as templates
    from rules_engine.api.topics import router as topics

    api.add_router("/events", events)
    api.add_router("/subscribers", subscribers)
    api.add_router("/subscribers", preferences)
    api.add_router("/preferences", preference_defaults)
    api.add_router("/topics", topics)
    api.add_router("/messages", messages)
    api.add_router("/inbox", inbox)
    api.add_router("/event-types", event_types)
    api.add_router("/rules", rules)
    api.add_router("/templates", templates)
    api.add_router("/layouts", layouts)
    api.add_router("/integrations", integrations)
    api.add_router("/webhook-endpoints", webhook_endpoints)
    api.add_router("/stats", stats)


class ProblemOut(Schema):
    type: str
    title: str
    status: int
    detail: str


class FieldErrorOut(BaseModel):
    pointer: str = Field(description="JSON pointer to the field, e.g. /email")
    detail: str


class ValidationProblemOut(ProblemOut):
    errors: list[FieldErrorOut] = []


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


_register_routers()
