"""Factories for the shared models (keys go through the real issuing service)."""

import itertools
from collections.abc import Iterable
from datetime import datetime

import factory

from tenants.models import ApiScope, Plan, Tenant
from tenants.services import ApiKeyCreated, api_key_create

_key_names = itertools.count(1)


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan

    name = factory.Sequence(lambda n: f"Plan {n}")


def api_key_issue(
    *,
    tenant: Tenant,
    scopes: Iterable[str] = (ApiScope.ADMIN,),
    expires_at: datetime | None = None,
) -> ApiKeyCreated:
    """An API key and its token, made exactly as production makes them."""
    return api_key_create(
        tenant=tenant, name=f"key {next(_key_names)}", scopes=scopes, expires_at=expires_at
    )
