"""Shared fixtures: a real PostgreSQL test database with two committed tenants.

Creating a tenant runs its schema's migrations, so ``alpha`` and ``beta`` are
made once per session, committed (so worker processes see them too), and every
test runs inside a transaction that is rolled back, as pytest-django does.
"""

from collections.abc import Iterator

import pytest
from django_tenants.utils import tenant_context

from tenants.authentication import api_key_cache
from tenants.db import tenant_connection
from tenants.models import Tenant
from tenants.services import public_tenant_ensure, tenant_create

TENANT_PASSWORD = "correct-horse-battery-staple-42"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: pytest.FixtureRequest) -> None:
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        public_tenant_ensure(domains=["localhost", "testserver"])
        for slug in ("alpha", "beta"):
            if not Tenant.objects.filter(slug=slug).exists():
                tenant_create(
                    slug=slug,
                    name=slug.capitalize(),
                    admin_email=f"admin@{slug}.example.com",
                    admin_password=TENANT_PASSWORD,
                )


@pytest.fixture(autouse=True)
def _public_schema_and_cold_cache() -> Iterator[None]:
    tenant_connection.set_schema_to_public()
    api_key_cache.clear()
    yield
    tenant_connection.set_schema_to_public()
    api_key_cache.clear()


@pytest.fixture
def tenant_a(db: None) -> Tenant:
    return Tenant.objects.get(slug="alpha")


@pytest.fixture
def tenant_b(db: None) -> Tenant:
    return Tenant.objects.get(slug="beta")


@pytest.fixture
def in_tenant_a(tenant_a: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant_a):
        yield tenant_a
