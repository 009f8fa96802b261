"""Which model changes become which Herald events: ``ModelEvents`` subclasses.

Defining a subclass registers it; the app connects every registered class to
its model's signals when Django is ready (``herald_events`` modules of the
installed apps are imported first). A class says which model, which of its
changes (created, updated — optionally only for some changes — deleted) send
which event, which fields go into the payload and who receives it.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, cast

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.signals import post_delete, post_init, post_save

from herald_client.models import InlineSubscriber, Recipient

logger = logging.getLogger("herald_client.django")

# field name -> (value before, value after) of the fields a save changed.
Changes = Mapping[str, tuple[Any, Any]]
Condition = Callable[[Any, Changes], bool]

_ANY = object()
_SNAPSHOT = "_herald_snapshot"
# Defined before the app was ready, waiting for connect_all.
_registry: list[type["ModelEvents"]] = []
_connected = False
_by_model: dict[type[models.Model], list["ModelEvents"]] = {}


def changed(field: str, *, to: Any = _ANY) -> Condition:
    """A condition for ``updated``: the save changed ``field`` (to ``to``, if given)."""

    def condition(instance: Any, changes: Changes) -> bool:
        return field in changes and (to is _ANY or changes[field][1] == to)

    condition.__name__ = f"changed({field!r}" + ("" if to is _ANY else f", to={to!r}") + ")"
    return condition


class ModelEvents:
    """The Herald events of one model. Class attributes:

    - ``model``: the model class or ``"app_label.Model"``.
    - ``created`` / ``deleted``: the event sent when a row is created / deleted.
    - ``updated``: the event sent on every save of an existing row, or a mapping
      of event -> condition(instance, changes) (see ``changed``) to send only
      for some changes.
    - ``fields``: attribute paths (``"customer.name"``) put into the payload,
      nested the same way (``{"customer": {"name": …}}``).
    - ``to``: attribute paths whose values are the recipients' subscriber ids.

    Override ``payload(instance)``, ``recipients(instance)`` or, for anything
    else of the request (``topic``, ``actor``, ``tenant_data``), ``body(instance,
    event)``. An unset event is not sent.
    """

    model: ClassVar[str | type[models.Model]]
    created: ClassVar[str | None] = None
    updated: ClassVar[str | Mapping[str, Condition] | None] = None
    deleted: ClassVar[str | None] = None
    fields: ClassVar[Sequence[str]] = ()
    to: ClassVar[Sequence[str]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model" not in cls.__dict__:
            raise ImproperlyConfigured(f"{cls.__qualname__} must set `model`")
        for name in ("created", "deleted"):
            value = getattr(cls, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ImproperlyConfigured(f"{cls.__qualname__}.{name} must be an event name")
        if cls.updated is not None and not isinstance(cls.updated, str | Mapping):
            raise ImproperlyConfigured(
                f"{cls.__qualname__}.updated must be an event name or a mapping of "
                "event names to conditions"
            )
        for attribute in ("fields", "to"):
            if isinstance(getattr(cls, attribute), str):
                raise ImproperlyConfigured(
                    f"{cls.__qualname__}.{attribute} must be a list of attribute paths"
                )
        if _connected:
            _connect(cls)
        else:
            _registry.append(cls)

    # --- what is sent ---------------------------------------------------------

    def payload(self, instance: models.Model) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for path in self.fields:
            *parents, leaf = path.split(".")
            node = payload
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = attribute(instance, path)
        return payload

    def recipients(self, instance: models.Model) -> list[Recipient]:
        found: list[Recipient] = []
        for path in self.to:
            value = attribute(instance, path)
            if value is None or value == "":
                continue
            found.append(cast(InlineSubscriber, value) if isinstance(value, dict) else str(value))
        return found

    def body(self, instance: models.Model, event: str) -> dict[str, Any]:
        """The request Herald gets (``POST /api/v1/events``) for this event."""
        body: dict[str, Any] = {"event": event, "payload": self.payload(instance)}
        recipients = self.recipients(instance)
        if recipients:
            body["to"] = recipients
        return body

    # --- which events a change sends -------------------------------------------

    def events_updated(self, instance: models.Model, changes: Changes) -> list[str]:
        if self.updated is None:
            return []
        if isinstance(self.updated, str):
            return [self.updated]
        return [event for event, condition in self.updated.items() if condition(instance, changes)]


def attribute(instance: Any, path: str) -> Any:
    """``instance.a.b.c``; None where a link of the chain is None."""
    value = instance
    for part in path.split("."):
        if value is None:
            return None
        value = getattr(value, part)
    return value


def model_of(events: type[ModelEvents]) -> type[models.Model]:
    if isinstance(events.model, str):
        try:
            return apps.get_model(events.model)
        except (LookupError, ValueError) as error:
            raise ImproperlyConfigured(
                f"{events.__qualname__}.model: no model {events.model!r} ({error})"
            ) from error
    return events.model


def _snapshot(instance: models.Model) -> dict[str, Any]:
    deferred = instance.get_deferred_fields()
    return {
        field.name: getattr(instance, field.attname)
        for field in instance._meta.concrete_fields
        if field.attname not in deferred
    }


def _changes(instance: models.Model) -> Changes:
    before: dict[str, Any] = instance.__dict__.get(_SNAPSHOT, {})
    after = _snapshot(instance)
    return {
        name: (before[name], value)
        for name, value in after.items()
        if name in before and before[name] != value
    }


def _remember(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    instance.__dict__[_SNAPSHOT] = _snapshot(instance)


def _saved(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool,
    using: str,
    **kwargs: Any,
) -> None:
    """Every mapping of the model sees the same changes; then the snapshot moves
    on, so the next save compares with this one."""
    from herald_client.django.outbox import outbox_add

    mappings = _by_model.get(sender, [])
    if not raw:  # loaddata: fixtures are not news
        changes = {} if created else _changes(instance)
        for mapping in mappings:
            if created:
                events = [mapping.created] if mapping.created else []
            else:
                events = mapping.events_updated(instance, changes)
            for event in events:
                outbox_add(mapping.body(instance, event), using=using)
    if _SNAPSHOT in instance.__dict__:
        instance.__dict__[_SNAPSHOT] = _snapshot(instance)


def _deleted(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    from herald_client.django.outbox import outbox_add

    for mapping in _by_model.get(sender, []):
        if mapping.deleted:
            outbox_add(mapping.body(instance, mapping.deleted), using=using)


def _connect(events: type[ModelEvents]) -> None:
    model = model_of(events)
    _by_model.setdefault(model, []).append(events())
    uid = f"herald_client:{model._meta.label}"
    post_save.connect(_saved, sender=model, weak=False, dispatch_uid=f"{uid}:save")
    post_delete.connect(_deleted, sender=model, weak=False, dispatch_uid=f"{uid}:delete")
    if isinstance(events.updated, Mapping):  # conditions compare with what was loaded
        post_init.connect(_remember, sender=model, weak=False, dispatch_uid=f"{uid}:init")
    logger.debug("herald events of %s: %s", model._meta.label, events.__qualname__)


def connect_all() -> None:
    """Connect every ModelEvents defined so far to its model's signals; one
    defined later (a module imported after start-up) is connected as it is."""
    global _connected
    for events in _registry:
        _connect(events)
    _registry.clear()
    _connected = True
