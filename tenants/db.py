"""The database connection as django-tenants extends it, typed.

django-tenants' backend adds schema switching to Django's connection; this is
the same ``django.db.connection`` proxy, with those methods known to mypy.
"""

from typing import Any, Protocol, cast

from django.db import connection


class TenantConnection(Protocol):
    schema_name: str
    tenant: Any
    include_public_schema: bool

    def set_schema_to_public(self) -> None: ...

    def set_tenant(self, tenant: Any, include_public: bool = True) -> None: ...


tenant_connection = cast(TenantConnection, connection)
