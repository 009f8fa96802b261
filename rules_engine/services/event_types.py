"""Declaring event types (the dashboard, the API and tests call this)."""

import re
from typing import Any

from django.db import transaction
from jsonschema.exceptions import SchemaError

from rules_engine.event_types import event_types_forget, payload_schema_check
from rules_engine.models import EventType
from tenants.db import tenant_connection

# The key POST /events accepts for "event".
EVENT_TYPE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
# Herald's own status callbacks (channels_delivery.models.CallbackType): a webhook
# endpoint subscribes to them by name, so no event may be called the same.
RESERVED_EVENT_KEYS = frozenset(
    {"message.sent", "message.delivered", "message.failed", "message.read", "endpoint.disabled"}
)
RESERVED_EVENT_KEY_MESSAGE = (
    "{key!r} is reserved for Herald's status callbacks to webhook endpoints; "
    "name the event type otherwise"
)


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
    """Create or update an event type; a changed schema gets a new version.

    Raises EventTypeInvalid for a key events could not name, or a payload
    schema that is not a JSON Schema.
    """
    if not EVENT_TYPE_KEY.fullmatch(key):
        raise EventTypeInvalid(
            "key",
            "must be 1 to 200 characters of letters, digits and . _ : / -, "
            "starting with a letter or digit",
        )
    if key in RESERVED_EVENT_KEYS:
        raise EventTypeInvalid("key", RESERVED_EVENT_KEY_MESSAGE.format(key=key))
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


class EventTypeInUse(ValueError):
    def __init__(self, key: str, *, rule_ids: list[int]) -> None:
        self.key = key
        self.rule_ids = rule_ids
        ids = ", ".join(str(rule_id) for rule_id in rule_ids)
        super().__init__(f"Event type {key!r} has rules (id {ids}); delete those rules first.")


def event_type_delete(*, event_type: EventType) -> None:
    """Delete an event type; raises EventTypeInUse while any rule (enabled or not) uses it.

    Events of the type stay, and are accepted afterwards as an unknown type
    (or refused, for a tenant in strict mode).
    """
    with transaction.atomic():
        # Locked first: a rule being created for it waits, then finds it gone.
        locked = EventType.objects.select_for_update().filter(pk=event_type.pk).first()
        if locked is None:
            return
        rule_ids = list(locked.rules.order_by("pk").values_list("pk", flat=True))
        if rule_ids:
            raise EventTypeInUse(locked.key, rule_ids=rule_ids)
        locked.delete()
    event_types_forget(schema_name=tenant_connection.schema_name)
