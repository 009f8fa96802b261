# Minimal stubs so django-stubs sees the tenant mixins as models.
from typing import Any

from django.db import models

class TenantMixin(models.Model):
    schema_name: models.CharField[str, str]
    auto_create_schema: bool
    auto_drop_schema: bool
    domain_url: str
    def create_schema(
        self, check_if_exists: bool = ..., sync_schema: bool = ..., verbosity: int = ...
    ) -> None: ...
    def delete(self, force_drop: bool = ..., *args: Any, **kwargs: Any) -> Any: ...  # type: ignore[override]

class DomainMixin(models.Model):
    domain: models.CharField[str, str]
    tenant: Any
    is_primary: models.BooleanField[bool, bool]
