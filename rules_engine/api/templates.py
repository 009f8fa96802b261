"""/api/v1/templates and /api/v1/layouts: what a message says, per channel and locale.

A template's variants, fallback locale, strictness and layout are versioned:
an edit that changes them makes a new version and the old ones stay readable
under ``/templates/{key}/versions``. Layouts (the brand wrapper of emails) are
not versioned: a message stores what it rendered. Writes need the ``admin``
scope; reads accept ``messages:read`` too.
"""

from datetime import datetime
from typing import Any

from django.http import Http404, HttpRequest
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict

from channels_delivery.catalogue import Channel
from herald.api import ProblemOut, ValidationProblemOut
from herald.problems import problem_response, validation_problem
from rules_engine.api.event_types import (
    in_use_response,
    not_nullable,
    require_config_read,
    require_config_write,
)
from rules_engine.api.subscribers import PageQuery
from rules_engine.models import Layout, Template, TemplateVersion
from rules_engine.selectors.templates import (
    layout_get,
    layout_list,
    template_get,
    template_list,
    template_version_get,
    template_version_list,
    template_versions_current,
)
from rules_engine.services.subscribers import InvalidInput
from rules_engine.services.templates import (
    DESCRIPTION_MAX_LENGTH,
    NAME_MAX_LENGTH,
    InUse,
    TemplateExists,
    layout_delete,
    layout_save,
    template_create,
    template_delete,
    template_update,
)

router = Router(tags=["templates"])
layouts_router = Router(tags=["layouts"])

VARIANTS_DESCRIPTION = (
    "Jinja2 sources by locale, then by field: "
    '{"en": {"subject": "Hi {{ subscriber.name }}", "html": "…"}, "de": {…}}. '
    "The fields a variant needs depend on the channel."
)


class TemplateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(
        description="1 to 100 characters of a-z, 0-9 and . _ -, starting with a letter or digit"
    )
    channel: Channel = Field(description="Fixed once the template exists.")
    name: str = Field(default="", max_length=NAME_MAX_LENGTH)
    description: str = Field(default="", max_length=DESCRIPTION_MAX_LENGTH)
    variants: dict[str, dict[str, str]] = Field(description=VARIANTS_DESCRIPTION)
    fallback_locale: str | None = Field(
        default=None,
        description="The variant for a subscriber whose locale has none; may be left out "
        "when there is only one variant.",
    )
    strict: bool = Field(
        default=False, description="A variable the context lacks is an error, not ''."
    )
    layout: str | None = Field(default=None, description="A layout's key (email only).")


class TemplatePatchIn(Schema):
    """Fields to change; those left out stay. `layout: null` removes the layout.
    The key and channel are fixed."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None, max_length=NAME_MAX_LENGTH, json_schema_extra=not_nullable
    )
    description: str | None = Field(
        default=None, max_length=DESCRIPTION_MAX_LENGTH, json_schema_extra=not_nullable
    )
    variants: dict[str, dict[str, str]] | None = Field(
        default=None, description=VARIANTS_DESCRIPTION, json_schema_extra=not_nullable
    )
    fallback_locale: str | None = Field(
        default=None, description="null: the only variant, when there is one."
    )
    strict: bool | None = Field(default=None, json_schema_extra=not_nullable)
    layout: str | None = None


class TemplateVersionOut(Schema):
    version: int
    variants: dict[str, dict[str, str]]
    fallback_locale: str
    strict: bool
    layout: str | None = Field(description="The layout's key; null when none (or deleted).")
    created_at: datetime
    created_by: str = Field(description="api:<key prefix> or admin:<username>")


class TemplateOut(Schema):
    key: str
    name: str
    channel: str
    description: str
    current_version: int
    created_at: datetime
    updated_at: datetime
    version: TemplateVersionOut = Field(description="The current version.")


class TemplatePageOut(Schema):
    items: list[TemplateOut]
    next_cursor: str | None


class TemplateVersionPageOut(Schema):
    items: list[TemplateVersionOut]
    next_cursor: str | None


class TemplateListQuery(PageQuery):
    channel: Channel | None = Field(default=None, description="Only this channel's templates.")


def _version_out(version: TemplateVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "variants": version.variants,
        "fallback_locale": version.fallback_locale,
        "strict": version.strict,
        "layout": version.layout.key if version.layout is not None else None,
        "created_at": version.created_at,
        "created_by": version.created_by,
    }


def _template_out(template: Template, version: TemplateVersion) -> dict[str, Any]:
    return {
        "key": template.key,
        "name": template.name,
        "channel": template.channel,
        "description": template.description,
        "current_version": template.current_version,
        "created_at": template.created_at,
        "updated_at": template.updated_at,
        "version": _version_out(version),
    }


def _template_or_404(key: str) -> Template:
    template = template_get(key=key)
    if template is None:
        raise Http404(f"No template {key!r} in this tenant.")
    return template


@router.post(
    "",
    response={201: TemplateOut, 409: ProblemOut, 422: ValidationProblemOut},
    summary="Create a template",
)
def templates_create(request: HttpRequest, body: TemplateIn) -> Any:
    """Create a template (version 1). Every variant must have the channel's
    required fields and no others, and every field must compile; errors name
    the locale and field, e.g. `/variants/de/subject`."""
    created_by = require_config_write(request)
    try:
        saved = template_create(
            key=body.key,
            channel=body.channel,
            name=body.name,
            description=body.description,
            variants=body.variants,
            fallback_locale=body.fallback_locale,
            strict=body.strict,
            layout=body.layout,
            created_by=created_by,
        )
    except InvalidInput as invalid:
        return validation_problem(invalid.errors)
    except TemplateExists as exists:
        return problem_response(
            status=409, slug="conflict", title="Conflict", detail=str(exists), key=exists.key
        )
    return Status(201, _template_out(saved.template, saved.version))


@router.get(
    "",
    response={200: TemplatePageOut, 400: ProblemOut, 422: ValidationProblemOut},
    summary="List templates",
)
def templates_list(request: HttpRequest, query: Query[TemplateListQuery]) -> Any:
    """Templates by key, each with its current version, a page at a time;
    `channel` filters."""
    require_config_read(request)
    found = template_list(channel=query.channel, cursor=query.cursor, limit=query.limit)
    current = template_versions_current(template.key for template in found.items)
    return {
        # A template deleted between the two queries is left out.
        "items": [_template_out(t, current[t.key]) for t in found.items if t.key in current],
        "next_cursor": found.next_cursor,
    }


@router.get("/{key}", response={200: TemplateOut, 404: ProblemOut}, summary="Get a template")
def templates_read(request: HttpRequest, key: str) -> Any:
    """The template with its current version."""
    require_config_read(request)
    template = _template_or_404(key)
    current = template_versions_current([key]).get(key)
    if current is None:  # deleted since the first query
        raise Http404(f"No template {key!r} in this tenant.")
    return _template_out(template, current)


@router.patch(
    "/{key}",
    response={200: TemplateOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Change a template",
)
def templates_update(request: HttpRequest, key: str, body: TemplatePatchIn) -> Any:
    """Change some fields. A change to the variants, fallback locale, strict or
    layout makes a new version; name and description change in place."""
    created_by = require_config_write(request)
    template = _template_or_404(key)
    try:
        saved = template_update(
            template=template, created_by=created_by, **body.model_dump(exclude_unset=True)
        )
    except InvalidInput as invalid:
        return validation_problem(invalid.errors)
    return _template_out(saved.template, saved.version)


@router.delete(
    "/{key}",
    response={204: None, 404: ProblemOut, 409: ProblemOut},
    summary="Delete a template",
)
def templates_delete(request: HttpRequest, key: str) -> Any:
    """Delete the template and its versions; refused (409 in-use) while the
    current version of a rule sends with it."""
    require_config_write(request)
    try:
        template_delete(template=_template_or_404(key))
    except InUse as in_use:
        return in_use_response(str(in_use), used_by=in_use.users)
    return Status(204, None)


@router.get(
    "/{key}/versions",
    response={200: TemplateVersionPageOut, 400: ProblemOut, 404: ProblemOut},
    summary="List a template's versions",
)
def templates_versions_list(request: HttpRequest, key: str, page: Query[PageQuery]) -> Any:
    """Every version of the template, newest first."""
    require_config_read(request)
    found = template_version_list(
        template=_template_or_404(key), cursor=page.cursor, limit=page.limit
    )
    return {"items": [_version_out(v) for v in found.items], "next_cursor": found.next_cursor}


@router.get(
    "/{key}/versions/{version}",
    response={200: TemplateVersionOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Get one version of a template",
)
def templates_versions_read(request: HttpRequest, key: str, version: int) -> Any:
    require_config_read(request)
    found = template_version_get(template=_template_or_404(key), version=version)
    if found is None:
        raise Http404(f"Template {key!r} has no version {version}.")
    return _version_out(found)


# --- layouts -------------------------------------------------------------------


class LayoutIn(Schema):
    """A full layout: fields left out are cleared."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=NAME_MAX_LENGTH)
    html: str = Field(description="An HTML template containing {{ content }}.")
    text: str = Field(default="", description="A plain-text template; may contain {{ content }}.")


class LayoutOut(Schema):
    key: str
    name: str
    html: str
    text: str
    created_at: datetime
    updated_at: datetime


class LayoutUpsertOut(LayoutOut):
    created: bool


class LayoutPageOut(Schema):
    items: list[LayoutOut]
    next_cursor: str | None


def _layout_out(layout: Layout) -> dict[str, Any]:
    return {
        "key": layout.key,
        "name": layout.name,
        "html": layout.html,
        "text": layout.text,
        "created_at": layout.created_at,
        "updated_at": layout.updated_at,
    }


def _layout_or_404(key: str) -> Layout:
    layout = layout_get(key=key)
    if layout is None:
        raise Http404(f"No layout {key!r} in this tenant.")
    return layout


@layouts_router.get("", response={200: LayoutPageOut, 400: ProblemOut}, summary="List layouts")
def layouts_list(request: HttpRequest, page: Query[PageQuery]) -> Any:
    """Layouts by key, a page at a time."""
    require_config_read(request)
    found = layout_list(cursor=page.cursor, limit=page.limit)
    return {"items": [_layout_out(x) for x in found.items], "next_cursor": found.next_cursor}


@layouts_router.put(
    "/{key}",
    response={200: LayoutUpsertOut, 422: ValidationProblemOut},
    summary="Create or replace a layout",
)
def layouts_upsert(request: HttpRequest, key: str, body: LayoutIn) -> Any:
    """Create the layout or replace it; `created` tells which. Emails rendered
    from then on use the new content."""
    require_config_write(request)
    try:
        saved = layout_save(key=key, name=body.name, html=body.html, text=body.text)
    except InvalidInput as invalid:
        return validation_problem(invalid.errors)
    return {**_layout_out(saved.layout), "created": saved.created}


@layouts_router.get("/{key}", response={200: LayoutOut, 404: ProblemOut}, summary="Get a layout")
def layouts_read(request: HttpRequest, key: str) -> Any:
    require_config_read(request)
    return _layout_out(_layout_or_404(key))


@layouts_router.delete(
    "/{key}",
    response={204: None, 404: ProblemOut, 409: ProblemOut},
    summary="Delete a layout",
)
def layouts_delete(request: HttpRequest, key: str) -> Any:
    """Delete the layout; refused (409 in-use) while a template's current
    version uses it."""
    require_config_write(request)
    try:
        layout_delete(layout=_layout_or_404(key))
    except InUse as in_use:
        return in_use_response(str(in_use), used_by=in_use.users)
    return Status(204, None)
