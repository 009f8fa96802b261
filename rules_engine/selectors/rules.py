"""Reads of rules and their versions."""

from collections.abc import Iterable

from django.db.models import F

from herald.pagination import DEFAULT_LIMIT, Page, cursor_paginate
from rules_engine.models import Rule, RuleVersion


def rules_for_event_type(event_type_key: str) -> list[tuple[Rule, RuleVersion]]:
    """The enabled rules of an event type with their current versions, in
    evaluation order (order, id). One query: the pipeline calls it per event."""
    versions = (
        RuleVersion.objects.filter(
            rule__event_type__key=event_type_key,
            rule__enabled=True,
            version=F("rule__current_version"),
        )
        .select_related("rule")
        .order_by("rule__order", "rule_id")
    )
    return [(version.rule, version) for version in versions]


def rule_get(*, rule_id: int) -> Rule | None:
    return Rule.objects.select_related("event_type").filter(pk=rule_id).first()


def rule_list(
    *, event_type_key: str | None = None, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[Rule]:
    """Rules in evaluation order (order, id); raises InvalidCursor for a cursor
    this list did not make."""
    rules = Rule.objects.select_related("event_type")
    if event_type_key is not None:
        rules = rules.filter(event_type__key=event_type_key)
    return cursor_paginate(rules, field="order", cursor=cursor, limit=limit, descending=False)


def rule_versions_current(rules: Iterable[Rule]) -> dict[int, RuleVersion]:
    """The current version of each rule, by rule id (one query)."""
    rule_ids = [rule.pk for rule in rules]
    if not rule_ids:
        return {}
    versions = RuleVersion.objects.filter(rule_id__in=rule_ids, version=F("rule__current_version"))
    return {version.rule_id: version for version in versions}


def rule_version_get(*, rule: Rule, version: int) -> RuleVersion | None:
    return RuleVersion.objects.filter(rule=rule, version=version).first()


def rule_version_list(
    *, rule: Rule, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[RuleVersion]:
    """The rule's versions, newest first; raises InvalidCursor as rule_list does."""
    return cursor_paginate(
        RuleVersion.objects.filter(rule=rule), field="version", cursor=cursor, limit=limit
    )


def rules_using_template(*, template_key: str) -> list[Rule]:
    """Rules whose current version sends with this template."""
    return list(
        Rule.objects.filter(
            versions__version=F("current_version"),
            versions__actions__contains=[{"template": template_key}],
        ).order_by("pk")
    )
