"""Declaring event types (the dashboard and tests call this; the API sends events)."""

from typing import Any

from django.db import transaction
from jsonschema.exceptions import SchemaError

from rules_engine.event_types import event_types_forget, payload_schema_check
from rules_engine.models import EventType
from tenants.db import tenant_connection


class EventTypeInvalid(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def event_type_save(
    *,
    key: str,
    name: str = "",
    description: str = "",
    category: str = "",
    payload_schema: dict[str, Any] | None = None,
    sample_payload: dict[str, Any] | None = None,
    is_critical: bool = False,
) -> EventType:
    """Create or update an event type; a changed schema gets a new version."""
    if payload_schema is not None:
        try:
            payload_schema_check(payload_schema)
        except SchemaError as error:
            raise EventTypeInvalid("payload_schema", error.message) from None
    with transaction.atomic():
        event_type = EventType.objects.select_for_update().filter(key=key).first()
        if event_type is None:
            event_type = EventType(key=key)
        elif event_type.payload_schema != payload_schema:
            event_type.schema_version += 1
        event_type.name = name
        event_type.description = description
        event_type.category = category
        event_type.payload_schema = payload_schema
        event_type.sample_payload = sample_payload or {}
        event_type.is_critical = is_critical
        event_type.save()
    event_types_forget(schema_name=tenant_connection.schema_name)
    return event_type
