"""Reads of shared tenant data."""

from django.db.models import QuerySet

from tenants.models import ApiKey, Tenant


def tenant_get_by_slug(*, slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug).exclude(schema_name="public").first()


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(tenant=tenant).order_by("-created_at")


def api_key_find(*, tenant: Tenant, identifier: str) -> ApiKey | None:
    """A key of this tenant by id or by its visible prefix."""
    keys = api_key_list(tenant=tenant)
    identifier = identifier.strip().rstrip("…")  # as api_key_list prints it
    if identifier.isdigit():
        return keys.filter(pk=int(identifier)).first()
    return keys.filter(prefix=identifier).first()
