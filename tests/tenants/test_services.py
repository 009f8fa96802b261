"""Provisioning services: tenants are created whole or not at all; keys are hashed."""

import hashlib
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_context, schema_exists

from tenants.db import tenant_connection
from tenants.models import ApiKey, ApiScope, Domain, Tenant
from tenants.services import (
    ProvisioningError,
    api_key_create,
    api_key_revoke,
    tenant_create,
)

pytestmark = pytest.mark.django_db


def assert_nothing_left(slug: str) -> None:
    schema = slug.replace("-", "_")
    assert not Tenant.objects.filter(slug=slug).exists()
    assert not Domain.objects.filter(domain=f"{slug}.localhost").exists()
    if schema.isidentifier() and len(schema) < 64:
        assert not schema_exists(schema)


def test_tenant_create_makes_schema_domain_and_admin() -> None:
    created = tenant_create(slug="gamma-co", name="Gamma Co", admin_email="ops@gamma.example.com")
    tenant = created.tenant
    assert tenant.schema_name == "gamma_co"
    assert schema_exists("gamma_co")
    assert created.domain.domain == "gamma-co.localhost"
    assert created.generated_password
    assert len(created.generated_password) >= 16
    assert tenant.plan is not None
    assert tenant.plan.name == "Free"
    with schema_context("gamma_co"):
        admin = User.objects.get(username="ops@gamma.example.com")
        assert admin.is_superuser
        assert admin.check_password(created.generated_password)
    # The tenant admin lives in the tenant's schema, not among platform staff.
    assert not User.objects.filter(username="ops@gamma.example.com").exists()
    assert tenant_connection.schema_name == "public"


def test_given_password_is_used_and_not_echoed() -> None:
    created = tenant_create(
        slug="delta",
        name="Delta",
        admin_email="ops@delta.example.com",
        admin_password="a-long-enough-passphrase-9",
    )
    assert created.generated_password is None
    with schema_context("delta"):
        assert User.objects.get().check_password("a-long-enough-passphrase-9")


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("public", "reserved"),
        ("www", "reserved"),
        ("admin", "reserved"),
        ("api", "reserved"),
        ("Acme", "not a valid slug"),
        ("ac", "not a valid slug"),
        ("-acme", "not a valid slug"),
        ("acme-", "not a valid slug"),
        ("ac_me", "not a valid slug"),
        ("ac me", "not a valid slug"),
        ("acmé", "not a valid slug"),
        ("1acme", "not a valid slug"),
        ("a" * 41, "not a valid slug"),
        ("ac--me", "single hyphens"),
        ("pg-stuff", "reserved"),
        ("acme; drop schema public", "not a valid slug"),
        ("alpha", "already taken"),
    ],
)
def test_bad_slug_is_refused_and_leaves_nothing(slug: str, message: str, tenant_a: Tenant) -> None:
    tenants_before = Tenant.objects.count()
    domains_before = Domain.objects.count()
    with pytest.raises(ProvisioningError, match=message) as error:
        tenant_create(slug=slug, name="X", admin_email="x@example.com")
    assert error.value.field == "slug"
    assert Tenant.objects.count() == tenants_before
    assert Domain.objects.count() == domains_before
    if slug not in ("alpha", "public"):  # those two exist legitimately
        assert_nothing_left(slug)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "  "}, "name"),
        ({"admin_email": "not-an-email"}, "admin_email"),
        ({"admin_password": "123"}, "admin_password"),
    ],
)
def test_bad_input_is_refused_before_anything_is_created(kwargs: dict, field: str) -> None:
    arguments = {"slug": "epsilon", "name": "Epsilon", "admin_email": "e@example.com", **kwargs}
    with pytest.raises(ProvisioningError) as error:
        tenant_create(**arguments)
    assert error.value.field == field
    assert_nothing_left("epsilon")


def test_failure_after_the_schema_exists_rolls_everything_back(monkeypatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(User.objects, "create_superuser", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        tenant_create(slug="zeta", name="Zeta", admin_email="z@example.com")
    assert_nothing_left("zeta")
    assert tenant_connection.schema_name == "public"


def test_tenant_create_outside_public_schema_is_refused(in_tenant_a: Tenant) -> None:
    with pytest.raises(ProvisioningError, match="public schema"):
        tenant_create(slug="eta", name="Eta", admin_email="e@example.com")


def test_api_key_token_is_never_stored(tenant_a: Tenant) -> None:
    created = api_key_create(tenant=tenant_a, name="ci", scopes=[ApiScope.EVENTS_WRITE])
    token = created.token
    assert token.startswith("hk_test_")
    assert len(token) == 48
    api_key = ApiKey.objects.get(pk=created.api_key.pk)
    assert api_key.key_hash == hashlib.sha256(token.encode()).hexdigest()
    assert api_key.prefix == token[:16]
    secret_part = token[16:]
    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM tenants_apikey AS t")
        rows = [row[0] for row in cursor.fetchall()]
    assert rows
    assert not any(token in row or secret_part in row for row in rows)


def test_api_key_tokens_are_unique_and_high_entropy(tenant_a: Tenant) -> None:
    tokens = {
        api_key_create(tenant=tenant_a, name=f"k{i}", scopes=["admin"]).token for i in range(50)
    }
    assert len(tokens) == 50
    assert len({token[8:16] for token in tokens}) == 50


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scopes": []}, "scopes"),
        ({"scopes": ["events:write", "root"]}, "scopes"),
        ({"name": ""}, "name"),
        ({"expires_at": "past"}, "expires_at"),
    ],
)
def test_api_key_create_refuses_bad_input(tenant_a: Tenant, kwargs: dict, field: str) -> None:
    arguments = {"tenant": tenant_a, "name": "k", "scopes": ["admin"], **kwargs}
    if arguments.get("expires_at") == "past":
        arguments["expires_at"] = timezone.now() - timedelta(minutes=1)
    with pytest.raises(ProvisioningError) as error:
        api_key_create(**arguments)
    assert error.value.field == field
    assert not ApiKey.objects.filter(tenant=tenant_a).exists()


def test_public_schema_can_not_have_keys() -> None:
    public = Tenant.objects.get(schema_name="public")
    with pytest.raises(ProvisioningError, match="public"):
        api_key_create(tenant=public, name="k", scopes=["admin"])


def test_api_key_revoke_is_idempotent(tenant_a: Tenant) -> None:
    api_key = api_key_create(tenant=tenant_a, name="k", scopes=["admin"]).api_key
    first = api_key_revoke(api_key=api_key).revoked_at
    assert first is not None
    assert api_key_revoke(api_key=api_key).revoked_at == first
