"""/api/v1/rules: which events become messages, for whom, on which channels.

A rule's condition, actions, recipients and timing options are versioned: an
edit that changes them makes a new version, the old ones stay readable under
``/rules/{id}/versions``, and every message records the version that made it.
Writes need the ``admin`` scope; reads accept ``messages:read`` too.
``POST /rules/{id}/test`` (the dry run) writes nothing and still needs ``admin``:
it is the rule author's tool, it costs as much as processing an event (a
broadcast reads every subscriber), and it renders any subscriber's messages
from a payload the caller makes up.
"""

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from django.http import Http404, HttpRequest
from ninja import Field, Query, Router, Schema, Status
from pydantic import BaseModel, ConfigDict

from herald.api import ProblemOut, ValidationProblemOut
from herald.problems import validation_problem
from rules_engine.api.event_types import (
    not_nullable,
    require_config_read,
    require_config_write,
)
from rules_engine.api.events import Recipient
from rules_engine.api.subscribers import PageQuery
from rules_engine.models import Rule, RuleVersion
from rules_engine.rule_options import (
    Actions,
    CelExpression,
    DelaySeconds,
    Digest,
    Recipients,
    RuleDefinition,
    SendWindow,
    Throttle,
)
from rules_engine.selectors.rules import (
    rule_get,
    rule_list,
    rule_version_get,
    rule_version_list,
    rule_versions_current,
)
from rules_engine.services.dry_run import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    DryRunNotFound,
    rule_dry_run,
)
from rules_engine.services.rules import (
    RULE_NAME_MAX_LENGTH,
    RULE_ORDER_RANGE,
    rule_create,
    rule_delete,
    rule_update,
)
from rules_engine.services.subscribers import InvalidInput

router = Router(tags=["rules"])

Name = Annotated[str, Field(min_length=1, max_length=RULE_NAME_MAX_LENGTH)]
Order = Annotated[
    int,
    Field(
        ge=RULE_ORDER_RANGE[0],
        le=RULE_ORDER_RANGE[1],
        description="Rules of an event type are evaluated in (order, id).",
    ),
]


class RuleIn(RuleDefinition):
    """A new rule: its plain fields and its first version."""

    name: Name
    event_type: str = Field(
        min_length=1, max_length=200, description="The key of a declared event type."
    )
    enabled: bool = True
    order: Order = 0


class RulePatchIn(BaseModel):
    """Fields to change; those left out stay. `null` clears an option
    (delay_seconds, digest, throttle, send_window). The event type is fixed."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = Field(default=None, json_schema_extra=not_nullable)
    enabled: bool | None = Field(default=None, json_schema_extra=not_nullable)
    order: Order | None = Field(default=None, json_schema_extra=not_nullable)
    condition: CelExpression | None = Field(default=None, json_schema_extra=not_nullable)
    actions: Actions | None = Field(default=None, json_schema_extra=not_nullable)
    recipients: Recipients | None = Field(default=None, json_schema_extra=not_nullable)
    delay_seconds: DelaySeconds | None = None
    digest: Digest | None = None
    throttle: Throttle | None = None
    send_window: SendWindow | None = None


class ActionOut(Schema):
    channel: str
    template: str


class RecipientsOut(Schema):
    kind: str
    topic: str | None = None
    filter: str | None = None


class DigestOut(Schema):
    key: str
    window_seconds: int


class ThrottleOut(Schema):
    limit: int
    window_seconds: int


class SendWindowOut(Schema):
    start: str
    end: str


class RuleVersionOut(Schema):
    version: int
    condition: str
    actions: list[ActionOut]
    recipients: RecipientsOut
    delay_seconds: int | None
    digest: DigestOut | None
    throttle: ThrottleOut | None
    send_window: SendWindowOut | None
    created_at: datetime
    created_by: str = Field(description="api:<key prefix> or admin:<username>")


class RuleOut(Schema):
    id: int
    name: str
    event_type: str
    enabled: bool
    order: int
    current_version: int
    created_at: datetime
    updated_at: datetime
    version: RuleVersionOut = Field(description="The current version.")


class RulePageOut(Schema):
    items: list[RuleOut]
    next_cursor: str | None


class RuleVersionPageOut(Schema):
    items: list[RuleVersionOut]
    next_cursor: str | None


class RuleListQuery(PageQuery):
    event_type: str | None = Field(default=None, description="Only this event type's rules.")


def _version_out(version: RuleVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "condition": version.condition,
        "actions": version.actions,
        "recipients": version.recipients,
        "delay_seconds": version.delay_seconds,
        "digest": version.digest,
        "throttle": version.throttle,
        "send_window": version.send_window,
        "created_at": version.created_at,
        "created_by": version.created_by,
    }


def _rule_out(rule: Rule, version: RuleVersion) -> dict[str, Any]:
    return {
        "id": rule.pk,
        "name": rule.name,
        "event_type": rule.event_type.key,
        "enabled": rule.enabled,
        "order": rule.order,
        "current_version": rule.current_version,
        "created_at": rule.created_at,
        "updated_at": rule.updated_at,
        "version": _version_out(version),
    }


def _rule_or_404(rule_id: int) -> Rule:
    rule = rule_get(rule_id=rule_id)
    if rule is None:
        raise Http404(f"No rule {rule_id} in this tenant.")
    return rule


@router.post(
    "",
    response={201: RuleOut, 422: ValidationProblemOut},
    summary="Create a rule",
)
def rules_create(request: HttpRequest, body: RuleIn) -> Any:
    """Create a rule (version 1). The event type must be declared and each
    action's template must exist on the action's channel; an invalid CEL
    expression is refused with the compiler's message at its field."""
    created_by = require_config_write(request)
    definition = body.stored()
    try:
        saved = rule_create(
            name=body.name,
            event_type_key=body.event_type,
            enabled=body.enabled,
            order=body.order,
            condition=definition["condition"],
            actions=definition["actions"],
            recipients=definition["recipients"],
            delay_seconds=definition["delay_seconds"],
            digest=definition["digest"],
            throttle=definition["throttle"],
            send_window=definition["send_window"],
            created_by=created_by,
        )
    except InvalidInput as invalid:
        return validation_problem(invalid.errors)
    return Status(201, _rule_out(saved.rule, saved.version))


@router.get(
    "",
    response={200: RulePageOut, 400: ProblemOut, 422: ValidationProblemOut},
    summary="List rules",
)
def rules_list(request: HttpRequest, query: Query[RuleListQuery]) -> Any:
    """Rules in evaluation order (order, id), each with its current version, a
    page at a time; `event_type` filters."""
    require_config_read(request)
    found = rule_list(event_type_key=query.event_type, cursor=query.cursor, limit=query.limit)
    current = rule_versions_current(found.items)
    return {
        # A rule deleted between the two queries is left out.
        "items": [_rule_out(r, current[r.pk]) for r in found.items if r.pk in current],
        "next_cursor": found.next_cursor,
    }


@router.get(
    "/{rule_id}",
    response={200: RuleOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Get a rule",
)
def rules_read(request: HttpRequest, rule_id: int) -> Any:
    """The rule with its current version."""
    require_config_read(request)
    rule = _rule_or_404(rule_id)
    current = rule_versions_current([rule]).get(rule.pk)
    if current is None:  # deleted since the first query
        raise Http404(f"No rule {rule_id} in this tenant.")
    return _rule_out(rule, current)


@router.patch(
    "/{rule_id}",
    response={200: RuleOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Change a rule",
)
def rules_update(request: HttpRequest, rule_id: int, body: RulePatchIn) -> Any:
    """Change some fields. A change to the condition, actions, recipients or
    timing options makes a new version; name, enabled and order change in place."""
    created_by = require_config_write(request)
    rule = _rule_or_404(rule_id)
    changes = body.model_dump(mode="json", exclude_unset=True)
    if "recipients" in changes and body.recipients is not None:
        changes["recipients"] = body.recipients.model_dump(mode="json", exclude_none=True)
    try:
        saved = rule_update(rule=rule, created_by=created_by, **changes)
    except InvalidInput as invalid:
        return validation_problem(invalid.errors)
    return _rule_out(saved.rule, saved.version)


@router.delete(
    "/{rule_id}",
    response={204: None, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Delete a rule",
)
def rules_delete(request: HttpRequest, rule_id: int) -> Any:
    """Delete the rule and its versions. Messages it made stay, without the
    link to the version."""
    require_config_write(request)
    rule_delete(rule=_rule_or_404(rule_id))
    return Status(204, None)


@router.get(
    "/{rule_id}/versions",
    response={200: RuleVersionPageOut, 400: ProblemOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="List a rule's versions",
)
def rules_versions_list(request: HttpRequest, rule_id: int, page: Query[PageQuery]) -> Any:
    """Every version of the rule, newest first."""
    require_config_read(request)
    found = rule_version_list(rule=_rule_or_404(rule_id), cursor=page.cursor, limit=page.limit)
    return {"items": [_version_out(v) for v in found.items], "next_cursor": found.next_cursor}


@router.get(
    "/{rule_id}/versions/{version}",
    response={200: RuleVersionOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Get one version of a rule",
)
def rules_versions_read(request: HttpRequest, rule_id: int, version: int) -> Any:
    require_config_read(request)
    found = rule_version_get(rule=_rule_or_404(rule_id), version=version)
    if found is None:
        raise Http404(f"Rule {rule_id} has no version {version}.")
    return _version_out(found)


# --- the dry run --------------------------------------------------------------------


class RuleTestIn(BaseModel):
    """What to run the rule against: `payload` (default: the event type's
    `sample_payload`) or a stored event's `event_id`, not both."""

    model_config = ConfigDict(extra="forbid")

    payload: dict[str, Any] | None = Field(
        default=None, description="A payload of the rule's event type; checked against its schema."
    )
    event_id: UUID | None = Field(
        default=None, description="A stored event of the rule's event type, to run again."
    )
    to: list[Recipient] | None = Field(
        default=None,
        max_length=1000,
        description="The event's recipients: subscriber ids or inline profiles (shown as given, "
        "not saved). With `event_id`: replaces the stored event's.",
    )
    topic: str | None = Field(
        default=None,
        max_length=200,
        description="The event's topic. With `event_id`: replaces the stored event's.",
    )
    actor: Recipient | None = Field(
        default=None, description="The event's actor. With `event_id`: replaces the stored event's."
    )
    limit: int = Field(
        default=DEFAULT_LIMIT,
        ge=1,
        le=MAX_LIMIT,
        description="At most this many recipients and skips are listed; the counts are complete.",
    )


class RenderedMessageOut(Schema):
    channel: str
    template: str
    template_version: int
    locale: str = Field(description="The variant rendered.")
    content: dict[str, str] = Field(description="The rendered fields; empty when rendering failed.")
    error: str | None = Field(
        description="Why rendering failed; such a message would be stored as failed, not sent."
    )
    send_after: datetime | None = Field(
        description="Not before when (null: at once), from the rule's delay and send window."
    )


class DryRunRecipientOut(Schema):
    external_id: str
    name: str
    saved: bool = Field(
        description="False for an inline profile of a subscriber who does not exist yet."
    )
    messages: list[RenderedMessageOut]
    digest_key: str | None = Field(
        description="For a digest rule: the batch the event would join instead of a message "
        "(rendered when the batch's window closes)."
    )


class DryRunSkipOut(Schema):
    subscriber: str = Field(description='The external id, or "*" when it concerns everyone.')
    channel: str | None
    reason: str


class DryRunCountsOut(Schema):
    recipients: int = Field(
        description="Subscribers who would get a message, or whose digest would get the event."
    )
    messages: int = Field(description="Messages that would be made, failed renders included.")
    render_errors: int
    digested: int = Field(description="Recipients whose digest batch would get the event.")
    skipped: int


class RuleTestOut(Schema):
    rule_id: int
    rule_version: int = Field(description="The rule's current version, the one that ran.")
    enabled: bool = Field(description="A disabled rule runs here all the same; events skip it.")
    event_type: str
    critical: bool = Field(description="Critical event types ignore opt-outs.")
    source: str = Field(description="payload, sample (the event type's) or event (a stored one).")
    event_id: UUID | None
    matched: bool
    error: str | None = Field(
        description="The condition's or broadcast filter's evaluation error, prefixed with which."
    )
    recipients: list[DryRunRecipientOut]
    skipped: list[DryRunSkipOut]
    counts: DryRunCountsOut
    truncated: bool = Field(description="More recipients or skips than `limit`.")


@router.post(
    "/{rule_id}/test",
    response={200: RuleTestOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Dry-run a rule",
)
def rules_test(request: HttpRequest, rule_id: int, body: RuleTestIn) -> Any:
    """Run the rule (its current version, even when disabled) against a payload,
    the event type's sample payload or a stored event, and return what it would
    do: whether it matches, each recipient's rendered message per channel, and
    who is skipped and why. Nothing is sent or stored, inline profiles included."""
    require_config_write(request)
    rule = _rule_or_404(rule_id)
    try:
        result = rule_dry_run(
            rule=rule,
            payload=body.payload,
            event_id=body.event_id,
            to=None
            if body.to is None
            else [r if isinstance(r, str) else r.model_dump(exclude_none=True) for r in body.to],
            topic=body.topic,
            actor=body.actor
            if body.actor is None or isinstance(body.actor, str)
            else body.actor.model_dump(exclude_none=True),
            limit=body.limit,
        )
    except InvalidInput as invalid:
        return validation_problem(invalid.errors)
    except DryRunNotFound as missing:
        raise Http404(str(missing)) from None
    return asdict(result)
