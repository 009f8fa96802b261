"""API key authentication with a short-lived in-process cache.

A warm key costs no database query: the lookup (key row and tenant) is cached
for ``HERALD_API_KEY_CACHE_SECONDS`` (at most 5 s, enforced in settings), so a
revocation or a suspension made in any process takes effect everywhere within
that time, and at once in the process that made it. ``last_used_at`` is written
at most once per ``HERALD_API_KEY_TOUCH_SECONDS`` per key.
"""

import hashlib
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context

from tenants.models import ApiKey, Tenant

TOKEN_PATTERN = re.compile(r"^hk_(live|test)_[A-Za-z0-9]{40}$")


class AuthenticationFailed(Exception):
    """The request is refused; ``slug`` and ``status`` become the problem response."""

    def __init__(self, *, status: int, slug: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail


@dataclass(frozen=True, kw_only=True)
class ApiKeyPrincipal:
    """Who is calling: the key (without its secret) and its tenant."""

    key_id: int
    name: str
    prefix: str
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    tenant: Tenant

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(kw_only=True)
class _Entry:
    principal: ApiKeyPrincipal
    fetched_at: float
    touched_at: float


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str, *, now: float) -> _Entry | None:
        entry = self._entries.get(key_hash)
        if entry is None or now - entry.fetched_at >= settings.HERALD_API_KEY_CACHE_SECONDS:
            return None
        return entry

    def put(self, key_hash: str, entry: _Entry) -> None:
        with self._lock:
            self._entries[key_hash] = entry

    def forget_key(self, *, key_id: int) -> None:
        with self._lock:
            for key_hash, entry in list(self._entries.items()):
                if entry.principal.key_id == key_id:
                    del self._entries[key_hash]

    def forget_tenant(self, *, tenant_id: int) -> None:
        with self._lock:
            for key_hash, entry in list(self._entries.items()):
                if entry.principal.tenant.pk == tenant_id:
                    del self._entries[key_hash]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


api_key_cache = ApiKeyCache()


def _unauthorized(slug: str, title: str, detail: str) -> AuthenticationFailed:
    return AuthenticationFailed(status=401, slug=slug, title=title, detail=detail)


def token_from_authorization(header: str | None) -> str:
    if not header:
        raise _unauthorized(
            "missing-api-key",
            "API key required",
            "Send the key as 'Authorization: Bearer hk_…'.",
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not TOKEN_PATTERN.match(token):
        raise _unauthorized(
            "malformed-api-key",
            "Malformed API key",
            "The Authorization header must be 'Bearer ' followed by a Herald key "
            "(hk_live_… or hk_test_…, 48 characters).",
        )
    return token


def _load(key_hash: str, *, now: float) -> _Entry | None:
    # The connection may still be on the previous request's tenant schema.
    with schema_context(get_public_schema_name()):
        api_key = (
            ApiKey.objects.select_related("tenant", "tenant__plan")
            .filter(key_hash=key_hash)
            .first()
        )
    if api_key is None:
        return None
    principal = ApiKeyPrincipal(
        key_id=api_key.pk,
        name=api_key.name,
        prefix=api_key.prefix,
        scopes=frozenset(api_key.scopes),
        expires_at=api_key.expires_at,
        revoked_at=api_key.revoked_at,
        tenant=api_key.tenant,
    )
    last_used = api_key.last_used_at
    age = (timezone.now() - last_used).total_seconds() if last_used else None
    touched_at = now - age if age is not None else float("-inf")
    return _Entry(principal=principal, fetched_at=now, touched_at=touched_at)


def api_key_authenticate(*, authorization: str | None) -> ApiKeyPrincipal:
    """Return the caller for an Authorization header, or raise AuthenticationFailed."""
    token = token_from_authorization(authorization)
    key_hash = token_hash(token)
    now = time.monotonic()
    entry = api_key_cache.get(key_hash, now=now)
    if entry is None:
        entry = _load(key_hash, now=now)
        if entry is None:
            raise _unauthorized(
                "invalid-api-key", "Invalid API key", "No active key matches this token."
            )
        api_key_cache.put(key_hash, entry)

    principal = entry.principal
    if principal.revoked_at is not None:
        raise _unauthorized("revoked-api-key", "Revoked API key", "This key has been revoked.")
    if principal.expires_at is not None and principal.expires_at <= timezone.now():
        raise _unauthorized(
            "expired-api-key",
            "Expired API key",
            f"This key expired at {principal.expires_at.isoformat()}.",
        )
    if not principal.tenant.is_active:
        raise AuthenticationFailed(
            status=403,
            slug="tenant-suspended",
            title="Tenant suspended",
            detail="This tenant is suspended; contact the platform operator.",
        )

    if now - entry.touched_at >= settings.HERALD_API_KEY_TOUCH_SECONDS:
        entry.touched_at = now
        with schema_context(get_public_schema_name()):
            ApiKey.objects.filter(pk=principal.key_id).update(last_used_at=timezone.now())
    return principal
