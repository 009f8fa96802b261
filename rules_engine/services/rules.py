"""Writes of rules: create, edit (a new version when what the rule does changes), delete.

A rule's name, enabled flag and order are plain fields, edited in place. Its
condition, actions, recipients and timing options (rules_engine.rule_options)
live in immutable versions: an edit that changes any of them makes version
n+1 under a row lock on the rule, so two concurrent edits get n+1 and n+2.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from django.db import transaction
from pydantic import ValidationError as PydanticValidationError

from herald.problems import FieldError, json_pointer
from rules_engine.models import EventType, Rule, RuleVersion, Template
from rules_engine.rule_options import VERSIONED_FIELDS, RuleDefinition, field_errors
from rules_engine.services.subscribers import InvalidInput

RULE_NAME_MAX_LENGTH = 200
RULE_ORDER_RANGE = (-1_000_000, 1_000_000)
CREATED_BY_MAX_LENGTH = 200
PLAIN_FIELDS = ("name", "enabled", "order")


class RuleChanges(TypedDict, total=False):
    """What ``rule_update`` may change; a field left out stays as it is."""

    name: str
    enabled: bool
    order: int
    condition: str
    actions: Sequence[Mapping[str, Any]]
    recipients: Mapping[str, Any]
    delay_seconds: int | None
    digest: Mapping[str, Any] | None
    throttle: Mapping[str, Any] | None
    send_window: Mapping[str, Any] | None


@dataclass(frozen=True, kw_only=True)
class RuleSaved:
    rule: Rule
    version: RuleVersion
    # False when an edit touched only plain fields (or changed nothing).
    new_version: bool


def _plain_errors(values: Mapping[str, Any]) -> list[FieldError]:
    errors = []
    if "name" in values:
        name = values["name"]
        if not isinstance(name, str) or not name.strip():
            errors.append(FieldError(pointer="/name", detail="must not be empty"))
        elif len(name) > RULE_NAME_MAX_LENGTH:
            errors.append(
                FieldError(
                    pointer="/name", detail=f"must be at most {RULE_NAME_MAX_LENGTH} characters"
                )
            )
    if "enabled" in values and not isinstance(values["enabled"], bool):
        errors.append(FieldError(pointer="/enabled", detail="must be true or false"))
    if "order" in values:
        order = values["order"]
        low, high = RULE_ORDER_RANGE
        if isinstance(order, bool) or not isinstance(order, int) or not low <= order <= high:
            errors.append(
                FieldError(pointer="/order", detail=f"must be an integer from {low} to {high}")
            )
    return errors


def _template_errors(definition: RuleDefinition, *, lock: bool) -> list[FieldError]:
    """Each action's template exists and sends on the action's channel.

    With ``lock``, the templates' rows stay locked until the transaction ends,
    so template_delete can not remove one between this check and the commit.
    """
    keys = [action.template for action in definition.actions]
    templates = Template.objects.filter(key__in=keys)
    if lock:
        templates = templates.select_for_update()
    channels = dict(templates.values_list("key", "channel"))
    errors = []
    for index, action in enumerate(definition.actions):
        pointer = json_pointer(["actions", index, "template"])
        channel = channels.get(action.template)
        if channel is None:
            errors.append(FieldError(pointer=pointer, detail=f"no template {action.template!r}"))
        elif channel != action.channel:
            errors.append(
                FieldError(
                    pointer=pointer,
                    detail=f"template {action.template!r} is for the {channel!r} channel, "
                    f"not {str(action.channel)!r}",
                )
            )
    return errors


def _parse(fields: Mapping[str, Any]) -> tuple[RuleDefinition | None, list[FieldError]]:
    try:
        return RuleDefinition.model_validate(dict(fields)), []
    except PydanticValidationError as error:
        return None, field_errors(error)


def rule_definition_clean(*, fields: Mapping[str, Any]) -> RuleDefinition:
    """A rule's versioned fields, validated (CEL compiled, templates found);
    raises InvalidInput naming each invalid field as a JSON pointer."""
    definition, errors = _parse(fields)
    if definition is not None:
        errors = _template_errors(definition, lock=False)
    if errors or definition is None:
        raise InvalidInput(errors)
    return definition


def _stored(version: RuleVersion) -> dict[str, Any]:
    return {field: getattr(version, field) for field in VERSIONED_FIELDS}


def _version_create(
    *, rule: Rule, number: int, definition: RuleDefinition, created_by: str
) -> RuleVersion:
    return RuleVersion.objects.create(
        rule=rule,
        version=number,
        created_by=created_by[:CREATED_BY_MAX_LENGTH],
        **definition.stored(),
    )


def rule_create(
    *,
    name: str,
    event_type_key: str,
    condition: str = "",
    actions: Sequence[Mapping[str, Any]],
    recipients: Mapping[str, Any],
    delay_seconds: int | None = None,
    digest: Mapping[str, Any] | None = None,
    throttle: Mapping[str, Any] | None = None,
    send_window: Mapping[str, Any] | None = None,
    enabled: bool = True,
    order: int = 0,
    created_by: str,
) -> RuleSaved:
    """Create a rule and its version 1; raises InvalidInput naming every invalid field."""
    errors = _plain_errors({"name": name, "enabled": enabled, "order": order})
    definition, definition_errors = _parse(
        {
            "condition": condition,
            "actions": actions,
            "recipients": recipients,
            "delay_seconds": delay_seconds,
            "digest": digest,
            "throttle": throttle,
            "send_window": send_window,
        }
    )
    with transaction.atomic():
        # Locked against a concurrent event_type_delete until the rule exists.
        event_type = EventType.objects.select_for_update(no_key=True).filter(key=event_type_key)
        event_type_row = event_type.first()
        if event_type_row is None:
            errors.append(
                FieldError(
                    pointer="/event_type",
                    detail=f"no event type {event_type_key!r}; declare it first",
                )
            )
        errors.extend(definition_errors)
        if definition is not None:
            errors.extend(_template_errors(definition, lock=True))
        if errors or definition is None or event_type_row is None:
            raise InvalidInput(errors)
        rule = Rule.objects.create(
            name=name, event_type=event_type_row, enabled=enabled, order=order, current_version=1
        )
        version = _version_create(rule=rule, number=1, definition=definition, created_by=created_by)
    return RuleSaved(rule=rule, version=version, new_version=True)


def rule_update(*, rule: Rule, created_by: str, **changes: Unpack[RuleChanges]) -> RuleSaved:
    """Change some of a rule's fields; raises InvalidInput naming every invalid field.

    A new version is made only when a versioned field changes (to a different
    value); name, enabled and order are edited in place.
    """
    unknown = set(changes) - set(PLAIN_FIELDS) - set(VERSIONED_FIELDS)
    if unknown:
        raise TypeError(f"rule_update() got unknown fields: {', '.join(sorted(unknown))}")
    plain = {field: value for field, value in changes.items() if field in PLAIN_FIELDS}
    versioned = {field: value for field, value in changes.items() if field in VERSIONED_FIELDS}
    errors = _plain_errors(plain)
    with transaction.atomic():
        locked = Rule.objects.select_for_update().select_related("event_type").get(pk=rule.pk)
        current = RuleVersion.objects.get(rule=locked, version=locked.current_version)
        version, new_version = current, False
        definition = None
        if versioned:
            merged = {**_stored(current), **versioned}
            definition, definition_errors = _parse(merged)
            errors.extend(definition_errors)
            if definition is not None:
                errors.extend(_template_errors(definition, lock=True))
        if errors:
            raise InvalidInput(errors)
        for field, value in plain.items():
            setattr(locked, field, value)
        if definition is not None and definition.stored() != _stored(current):
            version = _version_create(
                rule=locked,
                number=locked.current_version + 1,
                definition=definition,
                created_by=created_by,
            )
            locked.current_version = version.version
            new_version = True
        if plain or new_version:
            locked.save()
    return RuleSaved(rule=locked, version=version, new_version=new_version)


def rule_delete(*, rule: Rule) -> None:
    """Delete the rule and its versions; messages they produced keep their content
    and lose only the link to the version."""
    rule.delete()
