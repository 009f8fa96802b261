"""Provisioning: tenants, their domains and admins, and API keys (writes only)."""

import re
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context, schema_exists

from dashboard.roles import Role, user_role_set
from tenants.authentication import api_key_cache, token_hash
from tenants.db import tenant_connection
from tenants.models import ApiKey, ApiScope, Domain, Plan, Tenant

# Names that would be confusing or dangerous as a subdomain or a schema.
RESERVED_SLUGS = frozenset(
    {
        "admin", "api", "app", "assets", "billing", "cdn", "dashboard", "default", "docs",
        "ftp", "help", "herald", "information-schema", "localhost", "mail", "media",
        "postgres", "public", "root", "smtp", "static", "staff", "status", "support",
        "system", "www", "ws",
    }
)  # fmt: skip
SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")
DEFAULT_PLAN_NAME = "Free"
TOKEN_ALPHABET = string.ascii_letters + string.digits
TOKEN_RANDOM_LENGTH = 40  # ~238 bits
TOKEN_PREFIX_LENGTH = 16  # "hk_test_" and 8 random characters


class ProvisioningError(ValueError):
    """Bad input to a provisioning service; ``field`` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, kw_only=True)
class TenantCreated:
    tenant: Tenant
    domain: Domain
    admin_username: str
    # Set only when the password was generated: shown once, stored nowhere.
    generated_password: str | None


@dataclass(frozen=True, kw_only=True)
class ApiKeyCreated:
    api_key: ApiKey
    # The only time the token exists outside the caller's hands.
    token: str


def tenant_slug_validate(slug: str) -> None:
    if not SLUG_PATTERN.match(slug):
        raise ProvisioningError(
            "slug",
            f"{slug!r} is not a valid slug: use 3 to 40 lowercase letters, digits and hyphens, "
            "starting with a letter and not ending with a hyphen",
        )
    if slug in RESERVED_SLUGS:
        raise ProvisioningError("slug", f"{slug!r} is reserved; choose another slug")
    if "--" in slug:
        raise ProvisioningError("slug", f"{slug!r} contains '--'; use single hyphens")
    if slug.startswith("pg-"):
        # The schema would be pg_…, a prefix PostgreSQL keeps for itself.
        raise ProvisioningError("slug", f"{slug!r} starts with 'pg-', which is reserved")


def schema_name_for(slug: str) -> str:
    return slug.replace("-", "_")


def plan_get_default() -> Plan:
    plan, _ = Plan.objects.get_or_create(name=DEFAULT_PLAN_NAME)
    return plan


def public_tenant_ensure(*, domains: Iterable[str]) -> Tenant:
    """The public schema's tenant row and its hostnames (the staff dashboard's)."""
    tenant = Tenant.objects.filter(schema_name=get_public_schema_name()).first()
    if tenant is None:
        tenant = Tenant(schema_name=get_public_schema_name(), slug="public", name="Herald platform")
        tenant.auto_create_schema = False
        tenant.save()
    for index, hostname in enumerate(dict.fromkeys(domains)):
        Domain.objects.get_or_create(
            domain=hostname, defaults={"tenant": tenant, "is_primary": index == 0}
        )
    return tenant


def tenant_create(
    *,
    slug: str,
    name: str,
    admin_email: str,
    admin_password: str | None = None,
    plan: Plan | None = None,
) -> TenantCreated:
    """Create a tenant with its schema, its domain and its first admin, or nothing at all."""
    if tenant_connection.schema_name != get_public_schema_name():
        raise ProvisioningError("slug", "tenants can only be created from the public schema")
    tenant_slug_validate(slug)
    name = name.strip()
    if not name:
        raise ProvisioningError("name", "a tenant needs a name")
    try:
        validate_email(admin_email)
    except ValidationError:
        raise ProvisioningError("admin_email", f"{admin_email!r} is not an email address") from None
    if admin_password is not None:
        try:
            validate_password(admin_password)
        except ValidationError as error:
            raise ProvisioningError("admin_password", " ".join(error.messages)) from None

    schema_name = schema_name_for(slug)
    hostname = f"{slug}.{settings.HERALD_BASE_DOMAIN}"
    if Tenant.objects.filter(slug=slug).exists() or schema_exists(schema_name):
        raise ProvisioningError("slug", f"{slug!r} is already taken")
    if Domain.objects.filter(domain=hostname).exists():
        raise ProvisioningError("slug", f"the hostname {hostname} is already in use")

    generated_password = None
    if admin_password is None:
        generated_password = admin_password = secrets.token_urlsafe(12)

    # One transaction: PostgreSQL DDL is transactional, so a failure at any
    # step (a racing duplicate, a migration, the admin user) drops the schema
    # together with the rows.
    try:
        with transaction.atomic():
            tenant = Tenant(
                schema_name=schema_name, slug=slug, name=name, plan=plan or plan_get_default()
            )
            tenant.auto_create_schema = False
            tenant.save()
            tenant.create_schema(check_if_exists=False, sync_schema=True, verbosity=0)
            domain = Domain.objects.create(domain=hostname, tenant=tenant, is_primary=True)
            with schema_context(schema_name):
                admin = User.objects.create_superuser(
                    username=admin_email, email=admin_email, password=admin_password
                )
                # The schema's migration made the roles (dashboard.signals); the
                # owner is also an admin, as the admins it adds are.
                user_role_set(user=admin, role=Role.ADMIN)
    except IntegrityError:
        raise ProvisioningError("slug", f"{slug!r} is already taken") from None
    finally:
        tenant_connection.set_schema_to_public()
    return TenantCreated(
        tenant=tenant,
        domain=domain,
        admin_username=admin_email,
        generated_password=generated_password,
    )


def tenant_set_active(*, tenant: Tenant, is_active: bool) -> Tenant:
    """Suspend or resume a tenant; this process forgets its keys at once."""
    Tenant.objects.filter(pk=tenant.pk).update(is_active=is_active)
    tenant.is_active = is_active
    api_key_cache.forget_tenant(tenant_id=tenant.pk)
    return tenant


def api_key_token_generate() -> str:
    environment = "live" if settings.HERALD_ENV == "production" else "test"
    random_part = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_RANDOM_LENGTH))
    return f"hk_{environment}_{random_part}"


def api_key_create(
    *,
    tenant: Tenant,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
) -> ApiKeyCreated:
    if tenant.schema_name == get_public_schema_name():
        raise ProvisioningError("tenant", "the public schema can not have API keys")
    name = name.strip()
    if not name or len(name) > 100:
        raise ProvisioningError("name", "a key needs a name of 1 to 100 characters")
    scope_list = sorted(set(scopes))
    unknown = [scope for scope in scope_list if scope not in ApiScope.values]
    if not scope_list or unknown:
        raise ProvisioningError(
            "scopes",
            f"unknown scopes {unknown}; choose from {', '.join(ApiScope.values)}"
            if unknown
            else f"choose at least one of {', '.join(ApiScope.values)}",
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ProvisioningError("expires_at", "the expiry must be in the future")

    token = api_key_token_generate()
    api_key = ApiKey.objects.create(
        tenant=tenant,
        name=name,
        prefix=token[:TOKEN_PREFIX_LENGTH],
        key_hash=token_hash(token),
        scopes=scope_list,
        expires_at=expires_at,
    )
    return ApiKeyCreated(api_key=api_key, token=token)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key; idempotent. Other processes refuse it within the cache TTL."""
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if locked.revoked_at is None:
            locked.revoked_at = timezone.now()
            locked.save(update_fields=["revoked_at"])
    api_key_cache.forget_key(key_id=locked.pk)
    api_key.revoked_at = locked.revoked_at
    return locked
