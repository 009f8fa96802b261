"""Find the tenant of every request and switch the connection to its schema.

API requests (``/api/``) are resolved by API key, never by hostname: a request
with a missing or bad key is refused with a problem response and never falls
through to the public schema; a client address that keeps sending keys that
match nothing is refused (429) before its keys are looked up (herald.limits).
The in-app inbox under ``/api/v1/inbox/`` (but its secret endpoints) is read by
tenants' frontends, which have no key: it is resolved by tenant slug and
subscriber hash instead (channels_delivery.inbox_auth).
Links in emails (``/u/``, ``/o/``, ``/c/``) carry a signed token naming their
tenant and are answered before any lookup (channels_delivery.views_tracking), and
so are ESPs' tracking webhooks (``/hooks/esp/``, channels_delivery.esp_tracking).
Everything else (the dashboards) is resolved by hostname, as django-tenants does.
"""

import logging
import time

import sentry_sdk
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import set_urlconf
from django_tenants.middleware.main import TenantMainMiddleware

from channels_delivery.esp_tracking import esp_tracking_dispatch, is_esp_tracking_path
from channels_delivery.inbox_auth import (
    HASH_HEADER,
    SUBSCRIBER_HEADER,
    TENANT_HEADER,
    inbox_authenticate,
)
from channels_delivery.views_tracking import is_tracking_path, tracking_dispatch
from dashboard.metrics import metrics
from herald.limits import (
    QuotaReservation,
    RateLimitDecision,
    api_key_failure_record,
    api_key_failures_blocked,
    client_address,
    key_failures_response,
    rate_limit_and_reserve,
    rate_limit_check,
    rate_limited_response,
)
from herald.problems import problem_response
from herald.views import healthz
from tenants.authentication import (
    AuthenticationFailed,
    api_key_authenticate,
    api_key_cache,
    token_from_authorization,
    token_hash,
)
from tenants.db import tenant_connection
from tenants.models import Tenant

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
# Served without a key: the API's own description.
PUBLIC_API_PATHS = frozenset({"/api/v1/openapi.json", "/api/v1/docs"})
# Answered for every Host header, before any tenant lookup or host validation.
HEALTH_PATHS = frozenset({"/healthz"})
# Prometheus scrapes by address too; the view checks its own bearer token.
METRICS_PATH = "/metrics"
SEND_EVENT_PATH = "/api/v1/events"
# The in-app inbox is read by the tenant's frontend, which has no API key: it
# proves a subscriber with a hash instead (channels_delivery.inbox_auth). The
# tenant's own management of the inbox secret keeps to API keys.
INBOX_PREFIX = "/api/v1/inbox/"
INBOX_API_KEY_PATHS = frozenset({"/api/v1/inbox/secret", "/api/v1/inbox/secret/rotate"})
# Browsers call the inbox cross-origin; no cookies are involved, so any origin may.
INBOX_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": f"Content-Type, {TENANT_HEADER}, {SUBSCRIBER_HEADER}, "
    f"{HASH_HEADER}",
    "Access-Control-Max-Age": "600",
}


# Failures that name no key at all; a revoked or expired key is a real one.
KEY_MATCHES_NOTHING = frozenset({"missing-api-key", "malformed-api-key", "invalid-api-key"})


def _key_is_warm(authorization: str | None) -> bool:
    """Whether this process verified the key moments ago (it is in the key cache).

    Such a key skips the failed-key check: it costs no Redis round trip on the
    hot path, and a client behind a shared proxy address keeps working while
    another client there is refused for its failures.
    """
    try:
        token = token_from_authorization(authorization)
    except AuthenticationFailed:
        return False
    return api_key_cache.get(token_hash(token), now=time.monotonic()) is not None


def _is_subscriber_path(path: str) -> bool:
    return path.startswith(INBOX_PREFIX) and path not in INBOX_API_KEY_PATHS


def _use_tenant_schema(tenant: Tenant) -> None:
    """Switch the connection to ``tenant``'s schema, unless it is there already.

    Switching makes the next query send ``SET search_path`` (and clears the
    content-type cache); a web process serving one busy tenant would pay that on
    every request. Staying put is safe because django-tenants forgets the
    search_path it set whenever the connection closes or a transaction rolls back
    (TENANT_LIMIT_SET_CALLS), and every request sets its schema here or in the
    dashboard branch before any query.
    """
    if (
        tenant_connection.schema_name == tenant.schema_name
        and tenant_connection.include_public_schema
    ):
        tenant_connection.tenant = tenant  # the fresh row: plan, limits, is_active
        return
    tenant_connection.set_tenant(tenant)


class TenantResolutionMiddleware(TenantMainMiddleware):
    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        path = request.path_info
        if path.startswith(API_PREFIX):
            refusal = self._resolve_api_request(request)
            if refusal is not None:
                # A refused request never runs in a tenant's schema, not even the
                # previous request's (the connection stays on it otherwise).
                tenant_connection.set_schema_to_public()
            return refusal
        tenant_connection.set_schema_to_public()
        if path in HEALTH_PATHS:
            # Load balancers probe by IP address: answer before host validation.
            return healthz(request)
        if path == METRICS_PATH:
            return metrics(request)
        if is_tracking_path(path):
            # Links in emails live on the public address; their signed token names
            # the tenant, and the view switches to it (channels_delivery.views_tracking).
            return tracking_dispatch(request)
        if is_esp_tracking_path(path):
            # ESPs' delivery reports: the token names the tenant and integration
            # (channels_delivery.esp_tracking).
            return esp_tracking_dispatch(request)
        try:
            response: HttpResponse | None = super().process_request(request)
        except DatabaseError:
            logger.exception("database unavailable while resolving the tenant")
            return HttpResponse("Service unavailable", status=503, headers={"Retry-After": "5"})
        tenant = getattr(request, "tenant", None)
        if tenant is not None and not tenant.is_active:
            tenant_connection.set_schema_to_public()
            return HttpResponse("This tenant is suspended.", status=403)
        if tenant is not None:
            sentry_sdk.set_tag("tenant", tenant.schema_name)
        return response

    def _resolve_api_request(self, request: HttpRequest) -> HttpResponse | None:
        request.urlconf = settings.API_URLCONF  # type: ignore[attr-defined]
        set_urlconf(request.urlconf)  # type: ignore[attr-defined]
        if request.path_info in PUBLIC_API_PATHS:
            tenant_connection.set_schema_to_public()
            return None
        if _is_subscriber_path(request.path_info):
            return self._resolve_inbox_request(request)
        authorization = request.headers.get("Authorization")
        client = client_address(request.META)
        if not _key_is_warm(authorization):
            blocked = api_key_failures_blocked(client=client)
            if blocked is not None:
                return key_failures_response(blocked)
        try:
            principal = api_key_authenticate(authorization=authorization)
        except AuthenticationFailed as failure:
            if failure.slug in KEY_MATCHES_NOTHING:
                api_key_failure_record(client=client)
            headers = {"WWW-Authenticate": 'Bearer realm="herald"'} if failure.status == 401 else {}
            return problem_response(
                status=failure.status,
                slug=failure.slug,
                title=failure.title,
                detail=failure.detail,
                headers=headers,
            )
        except DatabaseError:
            logger.exception("database unavailable while authenticating an API key")
            return problem_response(
                status=503,
                slug="service-unavailable",
                title="Service unavailable",
                detail="Herald's database is unreachable; retry shortly.",
                headers={"Retry-After": "5"},
            )
        # Checked before switching schema: a refused request never runs in the tenant's.
        if request.method == "POST" and request.path_info == SEND_EVENT_PATH:
            # Its one event's quota comes in the same Redis round trip.
            decision, reservation = rate_limit_and_reserve(tenant=principal.tenant, events=1)
            request.quota_reservation = reservation  # type: ignore[attr-defined]
        else:
            decision = rate_limit_check(tenant=principal.tenant)
        if decision is not None:
            request.rate_limit = decision  # type: ignore[attr-defined]
            if not decision.allowed:
                return rate_limited_response(decision)
        request.api_key = principal  # type: ignore[attr-defined]
        request.tenant = principal.tenant  # type: ignore[attr-defined]
        _use_tenant_schema(principal.tenant)
        sentry_sdk.set_tag("tenant", principal.tenant.schema_name)
        return None

    def _resolve_inbox_request(self, request: HttpRequest) -> HttpResponse | None:
        if request.method == "OPTIONS":  # a CORS preflight carries no credentials
            return HttpResponse(status=204, headers=INBOX_CORS_HEADERS)
        try:
            principal = inbox_authenticate(
                tenant_slug=request.headers.get(TENANT_HEADER),
                external_id=request.headers.get(SUBSCRIBER_HEADER),
                given_hash=request.headers.get(HASH_HEADER),
            )
        except AuthenticationFailed as failure:
            return problem_response(
                status=failure.status,
                slug=failure.slug,
                title=failure.title,
                detail=failure.detail,
            )
        except DatabaseError:
            logger.exception("database unavailable while authenticating an inbox subscriber")
            return problem_response(
                status=503,
                slug="service-unavailable",
                title="Service unavailable",
                detail="Herald's database is unreachable; retry shortly.",
                headers={"Retry-After": "5"},
            )
        request.inbox_principal = principal  # type: ignore[attr-defined]
        request.tenant = principal.tenant  # type: ignore[attr-defined]
        _use_tenant_schema(principal.tenant)
        sentry_sdk.set_tag("tenant", principal.tenant.schema_name)
        return None

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if _is_subscriber_path(request.path_info):
            for name, value in INBOX_CORS_HEADERS.items():
                response.headers.setdefault(name, value)
        reservation: QuotaReservation | None = getattr(request, "quota_reservation", None)
        if reservation is not None:
            reservation.release()  # refused before the endpoint took it
        decision: RateLimitDecision | None = getattr(request, "rate_limit", None)
        if decision is not None:
            for name, value in decision.headers().items():
                response.headers.setdefault(name, value)
        return response
