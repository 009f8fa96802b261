"""Writes of templates (versioned) and layouts (not versioned).

A template's key, channel, name and description are plain fields (the channel
is fixed once created). Its variants, fallback locale, strictness and layout
live in immutable versions: an edit that changes any of them makes version
n+1 under a row lock on the template. Every source is compiled (Jinja2
sandbox) when saved, so a syntax error is refused with the locale and field.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from django.db import IntegrityError, transaction

from channels_delivery.catalogue import Channel
from herald.problems import FieldError, json_pointer
from rules_engine.models import Layout, Template, TemplateVersion
from rules_engine.selectors.rules import rules_using_template
from rules_engine.selectors.templates import templates_using_layout
from rules_engine.services.subscribers import InvalidInput, locale_normalise
from rules_engine.templating import (
    CHANNEL_FIELDS,
    CHANNEL_REQUIRED_ONE_OF,
    TemplateSyntaxProblem,
    validate_template,
)

# Template and layout keys alike.
TEMPLATE_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
KEY_RULE = "1 to 100 characters of a-z, 0-9 and . _ -, starting with a letter or digit"
NAME_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 2000
CREATED_BY_MAX_LENGTH = 200
MAX_VARIANTS = 100
LAYOUT_CONTENT_MARK = re.compile(r"{{-?\s*content\s*-?}}")
PLAIN_FIELDS = ("name", "description")
VERSIONED_FIELDS = ("variants", "fallback_locale", "strict", "layout")


class TemplateExists(ValueError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"A template {key!r} already exists.")


class InUse(ValueError):
    """Refused: something still depends on this; ``users`` names what
    (``rule:<id>``, ``template:<key>``)."""

    def __init__(self, message: str, *, users: list[str]) -> None:
        super().__init__(message)
        self.users = users


@dataclass(frozen=True, kw_only=True)
class TemplateDefinition:
    """A template version's content, validated and normalised."""

    variants: dict[str, dict[str, str]]
    fallback_locale: str
    strict: bool
    layout: Layout | None

    def stored(self) -> dict[str, Any]:
        return {
            "variants": self.variants,
            "fallback_locale": self.fallback_locale,
            "strict": self.strict,
            "layout_id": self.layout.pk if self.layout is not None else None,
        }


@dataclass(frozen=True, kw_only=True)
class TemplateSaved:
    template: Template
    version: TemplateVersion
    # False when an edit touched only plain fields (or changed nothing).
    new_version: bool


@dataclass(frozen=True, kw_only=True)
class LayoutSaved:
    layout: Layout
    created: bool


class TemplateChanges(TypedDict, total=False):
    """What ``template_update`` may change; a field left out stays as it is."""

    name: str
    description: str
    variants: Mapping[str, Mapping[str, str]]
    fallback_locale: str | None
    strict: bool
    layout: str | None  # a layout key; None removes it


def _key_errors(key: object) -> list[FieldError]:
    if isinstance(key, str) and TEMPLATE_KEY.fullmatch(key):
        return []
    return [FieldError(pointer="/key", detail=f"must be {KEY_RULE}")]


def _plain_errors(values: Mapping[str, Any]) -> list[FieldError]:
    errors = []
    for field, limit in (("name", NAME_MAX_LENGTH), ("description", DESCRIPTION_MAX_LENGTH)):
        if field not in values:
            continue
        value = values[field]
        if not isinstance(value, str):
            errors.append(FieldError(pointer=f"/{field}", detail="must be a string"))
        elif len(value) > limit:
            errors.append(
                FieldError(pointer=f"/{field}", detail=f"must be at most {limit} characters")
            )
    return errors


def _variant_errors(
    *, channel: str, locale: str, fields: object
) -> tuple[dict[str, str], list[FieldError]]:
    if not isinstance(fields, Mapping):
        return {}, [
            FieldError(
                pointer=json_pointer(["variants", locale]), detail="must be an object of fields"
            )
        ]
    specs = CHANNEL_FIELDS[channel]
    errors = [
        FieldError(
            pointer=json_pointer(["variants", locale, name]),
            detail=f"required for the {channel!r} channel",
        )
        for name, spec in specs.items()
        if spec.required and not fields.get(name)
    ]
    group = CHANNEL_REQUIRED_ONE_OF.get(channel, ())
    if group and not any(fields.get(name) for name in group):
        errors.append(
            FieldError(
                pointer=json_pointer(["variants", locale, group[0]]),
                detail=f"{channel!r} templates need at least one of: {', '.join(group)}",
            )
        )
    sources: dict[str, str] = {}
    for name, source in fields.items():
        pointer = json_pointer(["variants", locale, name])
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs))
            errors.append(
                FieldError(
                    pointer=pointer,
                    detail=f"{channel!r} templates have no field {name!r}; known: {known}",
                )
            )
        elif not isinstance(source, str):
            errors.append(FieldError(pointer=pointer, detail="must be a string (a template)"))
        else:
            try:
                validate_template(source, html=spec.html)
            except TemplateSyntaxProblem as problem:
                errors.append(FieldError(pointer=pointer, detail=problem.message))
            else:
                sources[name] = source
    return sources, errors


def template_definition_clean(
    *,
    channel: str,
    variants: object,
    fallback_locale: str | None = None,
    strict: bool = False,
    layout_key: str | None = None,
    lock_layout: bool = False,
) -> TemplateDefinition:
    """A template version's content, validated: every variant has the channel's
    required fields and no others, and every field compiles. Locales are
    normalised (``pt_br`` -> ``pt-BR``). Raises InvalidInput naming each field
    as ``/variants/<locale>/<field>``.

    Without ``fallback_locale``, a single variant is its own fallback. With
    ``lock_layout`` the layout's row stays locked until the transaction ends,
    so layout_delete can not remove it before the version is saved.
    """
    channel = str(channel)
    if channel not in CHANNEL_FIELDS:
        raise InvalidInput([FieldError(pointer="/channel", detail=f"{channel!r} is not a channel")])
    errors: list[FieldError] = []
    normalised: dict[str, dict[str, str]] = {}
    if not isinstance(variants, Mapping) or not variants:
        errors.append(
            FieldError(
                pointer="/variants",
                detail='must be an object with at least one locale, e.g. {"en": {…}}',
            )
        )
    elif len(variants) > MAX_VARIANTS:
        errors.append(FieldError(pointer="/variants", detail=f"at most {MAX_VARIANTS} locales"))
    else:
        for locale, fields in variants.items():
            canonical = locale_normalise(locale) if isinstance(locale, str) else None
            if canonical is None:
                errors.append(
                    FieldError(
                        pointer=json_pointer(["variants", locale]),
                        detail=f"{locale!r} is not a locale code, e.g. en, de or pt-BR",
                    )
                )
                continue
            if canonical in normalised:
                errors.append(
                    FieldError(
                        pointer=json_pointer(["variants", locale]),
                        detail=f"the same locale as {canonical!r}, given twice",
                    )
                )
                continue
            sources, variant_errors = _variant_errors(channel=channel, locale=locale, fields=fields)
            errors.extend(variant_errors)
            normalised[canonical] = sources
    fallback = _fallback(fallback_locale, normalised, errors)
    if not isinstance(strict, bool):
        errors.append(FieldError(pointer="/strict", detail="must be true or false"))
    layout = None
    if layout_key is not None:
        if channel != Channel.EMAIL:
            errors.append(
                FieldError(pointer="/layout", detail="only email templates have a layout")
            )
        else:
            layouts = Layout.objects.filter(key=layout_key)
            layout = (layouts.select_for_update() if lock_layout else layouts).first()
            if layout is None:
                errors.append(FieldError(pointer="/layout", detail=f"no layout {layout_key!r}"))
    if errors:
        raise InvalidInput(errors)
    return TemplateDefinition(
        variants=normalised, fallback_locale=fallback, strict=strict, layout=layout
    )


def _fallback(
    fallback_locale: str | None, variants: Mapping[str, object], errors: list[FieldError]
) -> str:
    if fallback_locale is None or fallback_locale == "":
        if len(variants) == 1:
            return next(iter(variants))
        if variants:
            errors.append(
                FieldError(
                    pointer="/fallback_locale",
                    detail="required with more than one variant: the locale to use when a "
                    "subscriber's locale has no variant",
                )
            )
        return ""
    canonical = locale_normalise(fallback_locale) if isinstance(fallback_locale, str) else None
    if canonical is None or (variants and canonical not in variants):
        known = ", ".join(sorted(variants))
        errors.append(
            FieldError(
                pointer="/fallback_locale",
                detail=f"{fallback_locale!r} is not one of the variants ({known})",
            )
        )
        return ""
    return canonical


def template_create(
    *,
    key: str,
    channel: str,
    variants: Mapping[str, Mapping[str, str]],
    fallback_locale: str | None = None,
    strict: bool = False,
    layout: str | None = None,
    name: str = "",
    description: str = "",
    created_by: str,
) -> TemplateSaved:
    """Create a template and its version 1. Raises InvalidInput naming every
    invalid field, TemplateExists for a taken key."""
    channel = str(channel)  # a Channel member reads as its value in messages
    errors = _key_errors(key) + _plain_errors({"name": name, "description": description})
    if channel not in CHANNEL_FIELDS:
        errors.append(FieldError(pointer="/channel", detail=f"{channel!r} is not a channel"))
        raise InvalidInput(errors)
    with transaction.atomic():
        try:
            definition = template_definition_clean(
                channel=channel,
                variants=variants,
                fallback_locale=fallback_locale,
                strict=strict,
                layout_key=layout,
                lock_layout=True,
            )
        except InvalidInput as invalid:
            raise InvalidInput([*errors, *invalid.errors]) from None
        if errors:
            raise InvalidInput(errors)
        try:
            with transaction.atomic():
                template = Template.objects.create(
                    key=key, name=name, channel=channel, description=description, current_version=1
                )
        except IntegrityError:
            raise TemplateExists(key) from None
        version = _version_create(
            template=template, number=1, definition=definition, created_by=created_by
        )
    return TemplateSaved(template=template, version=version, new_version=True)


def _version_create(
    *, template: Template, number: int, definition: TemplateDefinition, created_by: str
) -> TemplateVersion:
    return TemplateVersion.objects.create(
        template=template,
        version=number,
        created_by=created_by[:CREATED_BY_MAX_LENGTH],
        **definition.stored(),
    )


def _stored(version: TemplateVersion) -> dict[str, Any]:
    return {
        "variants": version.variants,
        "fallback_locale": version.fallback_locale,
        "strict": version.strict,
        "layout_id": version.layout_id,
    }


def template_update(
    *, template: Template, created_by: str, **changes: Unpack[TemplateChanges]
) -> TemplateSaved:
    """Change some of a template's fields; raises InvalidInput naming every invalid field.

    A new version is made only when the variants, fallback locale, strictness
    or layout change; name and description are edited in place.
    """
    unknown = set(changes) - set(PLAIN_FIELDS) - set(VERSIONED_FIELDS)
    if unknown:
        raise TypeError(f"template_update() got unknown fields: {', '.join(sorted(unknown))}")
    plain = {field: value for field, value in changes.items() if field in PLAIN_FIELDS}
    errors = _plain_errors(plain)
    with transaction.atomic():
        locked = Template.objects.select_for_update().get(pk=template.pk)
        current = TemplateVersion.objects.select_related("layout").get(
            template=locked, version=locked.current_version
        )
        version, new_version = current, False
        definition = None
        if any(field in changes for field in VERSIONED_FIELDS):
            current_layout = current.layout.key if current.layout is not None else None
            try:
                definition = template_definition_clean(
                    channel=locked.channel,
                    variants=changes.get("variants", current.variants),
                    fallback_locale=changes.get("fallback_locale", current.fallback_locale),
                    strict=changes.get("strict", current.strict),
                    layout_key=changes.get("layout", current_layout),
                    lock_layout=True,
                )
            except InvalidInput as invalid:
                errors.extend(invalid.errors)
        if errors:
            raise InvalidInput(errors)
        for field, value in plain.items():
            setattr(locked, field, value)
        if definition is not None and definition.stored() != _stored(current):
            version = _version_create(
                template=locked,
                number=locked.current_version + 1,
                definition=definition,
                created_by=created_by,
            )
            locked.current_version = version.version
            new_version = True
        if plain or new_version:
            locked.save()
    return TemplateSaved(template=locked, version=version, new_version=new_version)


def template_delete(*, template: Template) -> None:
    """Delete the template and its versions. Raises InUse while the current
    version of a rule sends with it (messages keep their content either way)."""
    with transaction.atomic():
        # Locked first: a rule saved meanwhile waits, then finds the template gone.
        locked = Template.objects.select_for_update().filter(pk=template.pk).first()
        if locked is None:
            return
        users = rules_using_template(template_key=locked.key)
        if users:
            names = ", ".join(f"{rule.name!r} (id {rule.pk})" for rule in users)
            raise InUse(
                f"Template {locked.key!r} is used by the current version of rule(s) {names}; "
                "change or delete those rules first.",
                users=[f"rule:{rule.pk}" for rule in users],
            )
        locked.delete()


def layout_clean(*, html: object, text: object) -> None:
    """Raises InvalidInput unless ``html`` is a template with ``{{ content }}``
    and ``text`` (optional) is a template."""
    errors = []
    if not isinstance(html, str) or not html:
        errors.append(FieldError(pointer="/html", detail="must be an HTML template"))
    else:
        try:
            validate_template(html, html=True)
        except TemplateSyntaxProblem as problem:
            errors.append(FieldError(pointer="/html", detail=problem.message))
        else:
            if not LAYOUT_CONTENT_MARK.search(html):
                errors.append(
                    FieldError(
                        pointer="/html",
                        detail="must contain {{ content }}, where the email's body goes",
                    )
                )
    if not isinstance(text, str):
        errors.append(FieldError(pointer="/text", detail="must be a string"))
    elif text:
        try:
            validate_template(text)
        except TemplateSyntaxProblem as problem:
            errors.append(FieldError(pointer="/text", detail=problem.message))
    if errors:
        raise InvalidInput(errors)


def layout_save(*, key: str, html: str, text: str = "", name: str = "") -> LayoutSaved:
    """Create or replace a layout; raises InvalidInput naming every invalid field.
    Templates using it render with the new content from now on."""
    errors = _key_errors(key) + _plain_errors({"name": name})
    try:
        layout_clean(html=html, text=text)
    except InvalidInput as invalid:
        errors.extend(invalid.errors)
    if errors:
        raise InvalidInput(errors)
    layout, created = Layout.objects.update_or_create(
        key=key, defaults={"name": name, "html": html, "text": text}
    )
    return LayoutSaved(layout=layout, created=created)


def layout_delete(*, layout: Layout) -> None:
    """Delete the layout. Raises InUse while a template's current version uses it;
    older versions that used it keep their content and lose the link."""
    with transaction.atomic():
        locked = Layout.objects.select_for_update().filter(pk=layout.pk).first()
        if locked is None:
            return
        users = templates_using_layout(layout=locked)
        if users:
            raise InUse(
                f"Layout {locked.key!r} is used by the current version of template(s) "
                f"{', '.join(users)}; change those templates first.",
                users=[f"template:{key}" for key in users],
            )
        locked.delete()
