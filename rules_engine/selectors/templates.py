"""Reads of templates, their versions, and layouts."""

from collections.abc import Iterable

from django.db.models import F

from herald.pagination import DEFAULT_LIMIT, Page, cursor_paginate
from rules_engine.models import Layout, Template, TemplateVersion


def template_versions_current(keys: Iterable[str]) -> dict[str, TemplateVersion]:
    """The current version of each template named, by key, with its template and
    layout loaded (one query). Keys with no template are left out."""
    wanted = set(keys)
    if not wanted:
        return {}
    versions = TemplateVersion.objects.filter(
        template__key__in=wanted, version=F("template__current_version")
    ).select_related("template", "layout")
    return {version.template.key: version for version in versions}


def template_get(*, key: str) -> Template | None:
    return Template.objects.filter(key=key).first()


def template_list(
    *, channel: str | None = None, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[Template]:
    """Templates by key; raises InvalidCursor for a cursor this list did not make."""
    templates = Template.objects.all()
    if channel is not None:
        templates = templates.filter(channel=channel)
    return cursor_paginate(templates, field="key", cursor=cursor, limit=limit, descending=False)


def template_version_get(*, template: Template, version: int) -> TemplateVersion | None:
    return (
        TemplateVersion.objects.select_related("layout")
        .filter(template=template, version=version)
        .first()
    )


def template_version_list(
    *, template: Template, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[TemplateVersion]:
    """The template's versions, newest first; raises InvalidCursor as template_list does."""
    return cursor_paginate(
        TemplateVersion.objects.select_related("layout").filter(template=template),
        field="version",
        cursor=cursor,
        limit=limit,
    )


def layout_get(*, key: str) -> Layout | None:
    return Layout.objects.filter(key=key).first()


def layout_list(*, cursor: str | None = None, limit: int = DEFAULT_LIMIT) -> Page[Layout]:
    """Layouts by key; raises InvalidCursor as template_list does."""
    return cursor_paginate(
        Layout.objects.all(), field="key", cursor=cursor, limit=limit, descending=False
    )


def templates_using_layout(*, layout: Layout) -> list[str]:
    """Keys of the templates whose current version wraps its emails in this layout."""
    return sorted(
        Template.objects.filter(
            versions__layout=layout, versions__version=F("current_version")
        ).values_list("key", flat=True)
    )
