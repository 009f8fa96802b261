"""Event types as the ingest path needs them, without a query per event.

Each process keeps, per tenant schema, the tenant's event types for
``HERALD_EVENT_TYPE_CACHE_SECONDS`` (one query loads them all). JSON Schema
validators are compiled once per schema content (the canonical JSON of the
schema, so each version of a schema is its own entry and two tenants with the
same schema share one) and kept in a bounded LRU: a deleted and re-created
event type can never meet a validator of its earlier schema. A schema edited in
the dashboard applies everywhere within the TTL, and at once in the process
that saved it.
"""

import functools
import json
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator

from rules_engine.models import EventType
from tenants.db import tenant_connection


@dataclass(frozen=True, kw_only=True)
class EventTypeInfo:
    key: str
    category: str
    is_critical: bool
    schema_version: int
    validator: Validator | None


_types: dict[str, tuple[float, dict[str, EventTypeInfo]]] = {}
_lock = threading.Lock()


def payload_schema_check(schema: object) -> None:
    """Raise SchemaError when ``schema`` is not a valid JSON Schema (2020-12)."""
    if not isinstance(schema, dict):
        raise SchemaError("a payload schema must be a JSON object")
    Draft202012Validator.check_schema(schema)


@functools.lru_cache(maxsize=1024)
def _compiled(canonical_schema: str) -> Validator:
    schema = json.loads(canonical_schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def _validator(event_type: EventType) -> Validator | None:
    if not event_type.payload_schema:
        return None
    return _compiled(json.dumps(event_type.payload_schema, sort_keys=True, separators=(",", ":")))


def _load(schema_name: str) -> dict[str, EventTypeInfo]:
    return {
        event_type.key: EventTypeInfo(
            key=event_type.key,
            category=event_type.category,
            is_critical=event_type.is_critical,
            schema_version=event_type.schema_version,
            validator=_validator(event_type),
        )
        for event_type in EventType.objects.all()
    }


def event_types_current() -> dict[str, EventTypeInfo]:
    """The current tenant's event types by key (cached)."""
    schema_name = tenant_connection.schema_name
    now = time.monotonic()
    cached = _types.get(schema_name)
    if cached is not None and now - cached[0] < settings.HERALD_EVENT_TYPE_CACHE_SECONDS:
        return cached[1]
    loaded = _load(schema_name)
    with _lock:
        _types[schema_name] = (now, loaded)
    return loaded


def event_types_forget(*, schema_name: str) -> None:
    with _lock:
        _types.pop(schema_name, None)
