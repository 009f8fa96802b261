"""The design tools of the tenant dashboard: a rule's dry run, a template's
live preview and its test send.

RuleAdmin and TemplateAdmin route their detail actions here (``<id>/test/``,
``<id>/preview/``, ``<id>/send-test/``); unfold's ``action`` decorator has
checked the permission by then (view for the dry run and the preview, change
for a send). The work is the services': ``rule_dry_run`` and
``rules_engine.services.test_send``. Tenant-authored HTML is shown only inside
sandboxed iframes (``srcdoc``), never in the admin page itself.
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from unfold.widgets import (
    UnfoldAdminSelectWidget,
    UnfoldAdminTextareaWidget,
    UnfoldAdminTextInputWidget,
    UnfoldBooleanSwitchWidget,
)

from herald.problems import FieldError
from rules_engine.models import EventType, Rule, Template
from rules_engine.selectors.rules import rule_versions_current
from rules_engine.selectors.templates import template_versions_current
from rules_engine.services.dry_run import DryRunNotFound, DryRunResult, rule_dry_run
from rules_engine.services.subscribers import InvalidInput
from rules_engine.services.templates import template_definition_clean
from rules_engine.services.test_send import (
    SentTest,
    TemplatePreview,
    template_preview,
    template_sample,
    template_test_send,
)
from rules_engine.templating import CHANNEL_FIELDS

TEMPLATES = "dashboard/design"
# Unfold's stylesheet has no font-mono: code boxes get it inline.
MONOSPACE = "font-family: ui-monospace, SFMono-Regular, Menlo, monospace"


class _IndentedJSON(json.JSONEncoder):
    """JSON in a textarea, one key a line: what a person edits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["indent"] = 2
        kwargs["ensure_ascii"] = False
        super().__init__(*args, **kwargs)


def _json_field(*, rows: int, label: str, help_text: str, required: bool = True) -> Any:
    return forms.JSONField(
        label=label,
        required=required,
        encoder=_IndentedJSON,
        help_text=help_text,
        widget=UnfoldAdminTextareaWidget(attrs={"rows": rows, "style": MONOSPACE}),
    )


class PayloadField(forms.JSONField):
    """An event's payload: a JSON object, where ``{}`` (or nothing) is a valid,
    empty payload rather than a missing field."""

    empty_values = [None, ""]

    def clean(self, value: Any) -> Any:
        payload = super().clean(value)
        if payload is None:
            return {}
        if not isinstance(payload, dict):
            raise forms.ValidationError('a payload is a JSON object, like {"order": "A-1"}')
        return payload


def _payload_field(*, rows: int, help_text: str) -> PayloadField:
    return PayloadField(
        label="Payload",
        required=False,
        encoder=_IndentedJSON,
        help_text=help_text,
        widget=UnfoldAdminTextareaWidget(attrs={"rows": rows, "style": MONOSPACE}),
    )


def _text_field(*, label: str, help_text: str = "", required: bool = False) -> forms.CharField:
    return forms.CharField(
        label=label, required=required, help_text=help_text, widget=UnfoldAdminTextInputWidget
    )


def _event_type_field() -> forms.ChoiceField:
    return forms.ChoiceField(
        label="Event type",
        choices=[(key, key) for key in EventType.objects.values_list("key", flat=True)],
        widget=UnfoldAdminSelectWidget,
        help_text="The payload below is this event type's (its sample payload to start with).",
    )


def _add_errors(form: forms.BaseForm, errors: Sequence[FieldError]) -> None:
    """Each error at the form field its JSON pointer starts with; the rest of the
    pointer (``/payload/total`` -> ``total``) leads the message."""
    for error in errors:
        top, _, rest = error.pointer.lstrip("/").partition("/")
        rest = rest.replace("~1", "/").replace("~0", "~")
        message = f"{rest}: {error.detail}" if rest else error.detail
        if top in form.fields:
            form.add_error(top, message)
        else:
            form.add_error(None, f"{top}: {message}" if top else message)


def _page(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    obj: Any,
    page: str,
    /,
    **context: Any,
) -> TemplateResponse:
    opts = model_admin.model._meta
    return TemplateResponse(
        request,
        f"{TEMPLATES}/{page}",
        {
            **model_admin.admin_site.each_context(request),
            "opts": opts,
            "original": obj,
            "change_url": reverse(
                f"{model_admin.admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                args=[obj.pk],
            ),
            **context,
        },
    )


def _object_or_404(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    object_id: str,
) -> Any:
    obj = model_admin.get_object(request, unquote(object_id))
    if obj is None:
        raise Http404(f"No {model_admin.model._meta.verbose_name} {object_id} in this tenant.")
    return obj


# --- a rule against a sample event ------------------------------------------------------


class RuleTestForm(forms.Form):
    payload = _payload_field(
        rows=12, help_text="The event's payload; it starts as the event type's sample payload."
    )
    to = _text_field(
        label="Recipients (to)",
        help_text="For rules that send to the event's recipients: subscriber ids separated "
        'by commas, or a JSON list of ids and inline profiles ([{"id": "u1", "email": …}]).',
    )
    topic = _text_field(label="Topic", help_text="The event's topic key, if it has one.")

    def clean_to(self) -> list[Any] | None:
        text: str = self.cleaned_data.get("to", "").strip()
        if not text:
            return None
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise forms.ValidationError(f"not valid JSON: {error.msg}") from None
            if not isinstance(value, list):
                raise forms.ValidationError("must be a JSON list")
            return value
        return [part.strip() for part in text.split(",") if part.strip()]


def _ordered(channel: str, content: Mapping[str, str]) -> list[tuple[str, str]]:
    """A message's fields in the channel's order (subject before body), as stored
    JSON keeps no order."""
    order = list(CHANNEL_FIELDS.get(channel, {}))
    return sorted(
        content.items(),
        key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0]),
    )


def _message_cards(result: DryRunResult) -> list[dict[str, Any]]:
    return [
        {
            "title": f"{recipient.external_id} · {message.channel}",
            "message": message,
            "fields": _ordered(message.channel, message.content),
        }
        for recipient in result.recipients
        for message in recipient.messages
    ]


def _result_tables(result: DryRunResult) -> dict[str, Any]:
    """The dry run's lists as unfold tables (messages keep their own cards)."""
    recipients = {
        "headers": ["Subscriber", "Name", "Channel", "Template", "Locale", "Sends", "Result"],
        "rows": [
            [
                recipient.external_id + ("" if recipient.saved else " (new, from the event)"),
                recipient.name or "-",
                message.channel,
                f"{message.template} v{message.template_version}",
                message.locale or "-",
                f"{message.send_after:%Y-%m-%d %H:%M %Z}" if message.send_after else "at once",
                f"render error: {message.error}" if message.error else "rendered",
            ]
            for recipient in result.recipients
            for message in recipient.messages
        ]
        + [
            [
                recipient.external_id,
                recipient.name or "-",
                "(digest)",
                "-",
                "-",
                "when the digest window closes",
                f"joins digest batch {recipient.digest_key!r}",
            ]
            for recipient in result.recipients
            if recipient.digest_key is not None
        ],
    }
    skipped = {
        "headers": ["Subscriber", "Channel", "Reason"],
        "rows": [
            [entry.subscriber, entry.channel or "all", entry.reason] for entry in result.skipped
        ],
    }
    counts = {
        "headers": ["Recipients", "Messages", "Render errors", "Digested", "Skipped"],
        "rows": [
            [
                result.counts.recipients,
                result.counts.messages,
                result.counts.render_errors,
                result.counts.digested,
                result.counts.skipped,
            ]
        ],
    }
    return {
        "recipients_table": recipients,
        "skipped_table": skipped,
        "counts_table": counts,
        "message_cards": _message_cards(result),
    }


def rule_test_view(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    object_id: str,
) -> HttpResponse:
    """GET runs the rule against its event type's sample payload; POST against the
    payload, recipients and topic in the form. Nothing is stored or sent."""
    rule: Rule = _object_or_404(model_admin, request, object_id)
    result: DryRunResult | None = None
    if request.method == "POST":
        form = RuleTestForm(request.POST)
        run = form.is_valid()
        payload = form.cleaned_data.get("payload") if run else None
        to = form.cleaned_data.get("to") if run else None
        topic = (form.cleaned_data.get("topic") or None) if run else None
    else:
        sample = rule.event_type.sample_payload
        form = RuleTestForm(initial={"payload": sample if sample is not None else {}})
        run, payload, to, topic = True, None, None, None
    if run:
        try:
            result = rule_dry_run(rule=rule, payload=payload, to=to, topic=topic)
        except InvalidInput as invalid:
            _add_errors(form, invalid.errors)
        except DryRunNotFound as missing:
            raise Http404(str(missing)) from None
    version = rule_versions_current([rule]).get(rule.pk)
    return _page(
        model_admin,
        request,
        rule,
        "rule_test.html",
        title=f"Test “{rule.name}” against a sample event",
        form=form,
        result=result,
        version=version,
        **(_result_tables(result) if result is not None else {}),
    )


# --- a template's preview and test send -------------------------------------------------


class TemplatePreviewForm(forms.Form):
    variants = _json_field(
        rows=14,
        label="Variants",
        help_text='Jinja2 sources by locale, then field: {"en": {"subject": "…"}}. '
        "Edits are previewed, not saved.",
    )
    fallback_locale = _text_field(label="Fallback locale")
    strict = forms.BooleanField(label="Strict", required=False, widget=UnfoldBooleanSwitchWidget)
    event_type = forms.ChoiceField()  # filled per request: the tenant's event types
    payload = _payload_field(rows=10, help_text="The event's payload.")
    subscriber = _text_field(
        label="Subscriber",
        help_text="Render for this subscriber's profile (their id); empty: a sample profile.",
    )
    locale = _text_field(label="Locale", help_text="Preview this variant; empty: the subscriber's.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["event_type"] = _event_type_field()


# The send form shares the preview's page; its fields get ids of their own there.
SEND_FORM_IDS = "id_send_%s"


class TemplateSendTestForm(forms.Form):
    event_type = forms.ChoiceField()
    payload = _payload_field(rows=10, help_text="The event's payload.")
    subscriber = _text_field(label="Subscriber", help_text="Send to this subscriber (their id)…")
    address = _text_field(
        label="Address",
        help_text="…or to this email address or phone number (E.164), for which a test "
        "subscriber named test: and the address is kept.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["event_type"] = _event_type_field()


def _field_problems(errors: Mapping[str, Any], channel: str) -> dict[str, list[str]]:
    """Errors of the variants field by template field (``en/subject: …`` -> subject)."""
    by_field: dict[str, list[str]] = {}
    for message in errors.get("variants", []):
        head, _, _ = str(message).partition(":")
        name = head.rsplit("/", 1)[-1]
        if name in CHANNEL_FIELDS.get(channel, {}):
            by_field.setdefault(name, []).append(str(message))
    return by_field


def _preview_fields(
    template: Template, preview: TemplatePreview | None, problems: Mapping[str, list[str]]
) -> list[dict[str, Any]]:
    """One entry per field of the channel: its rendered text, or its error."""
    specs = CHANNEL_FIELDS.get(template.channel, {})
    shown = []
    for name, spec in specs.items():
        errors = list(problems.get(name, []))
        if preview is not None and preview.error and preview.error_field == name:
            errors.append(preview.error)
        content = preview.content.get(name) if preview is not None else None
        if content is None and not errors:
            continue
        shown.append({"name": name, "html": spec.html, "content": content, "errors": errors})
    return shown


def _preview_initial(template: Template) -> dict[str, Any]:
    current = template_versions_current([template.key]).get(template.key)
    sample = template_sample(template=template)
    return {
        "variants": current.variants if current is not None else {},
        "fallback_locale": current.fallback_locale if current is not None else "",
        "strict": current.strict if current is not None else False,
        "event_type": sample.event_type,
        "payload": sample.payload,
    }


def _as_form_data(initial: Mapping[str, Any]) -> dict[str, str]:
    """Initial values as a browser would post them."""
    data = {
        name: json.dumps(value, cls=_IndentedJSON) if name in ("variants", "payload") else value
        for name, value in initial.items()
        if name != "strict"
    }
    if initial.get("strict"):
        data["strict"] = "on"
    return data


def _run_preview(template: Template, form: TemplatePreviewForm) -> TemplatePreview | None:
    if not form.is_valid():
        return None
    data = form.cleaned_data
    current = template_versions_current([template.key]).get(template.key)
    layout = current.layout if current is not None else None
    try:
        definition = template_definition_clean(
            channel=template.channel,
            variants=data["variants"],
            fallback_locale=data["fallback_locale"] or None,
            strict=bool(data["strict"]),
            layout_key=layout.key if layout is not None else None,
        )
        return template_preview(
            channel=template.channel,
            variants=definition.variants,
            fallback_locale=definition.fallback_locale,
            strict=definition.strict,
            layout=definition.layout,
            event_type_key=data["event_type"],
            payload=data["payload"],
            subscriber_external_id=data["subscriber"].strip(),
            locale=data["locale"].strip(),
        )
    except InvalidInput as invalid:
        _add_errors(form, invalid.errors)
        return None


def template_preview_view(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    object_id: str,
) -> HttpResponse:
    """GET previews the saved version against the sample payload; POST previews
    the form's content. A POST with ``partial`` (the page's own script, as the
    author types) answers with the result alone, to swap in."""
    template: Template = _object_or_404(model_admin, request, object_id)
    if request.method == "POST":
        form = TemplatePreviewForm(request.POST)
    else:  # bound, so the saved version is previewed at once
        form = TemplatePreviewForm(_as_form_data(_preview_initial(template)))
    preview = _run_preview(template, form)
    problems = _field_problems(form.errors, template.channel) if form.is_bound else {}
    other_errors = [
        (form.fields[name].label or name if name in form.fields else "", message)
        for name, messages in form.errors.items()
        for message in messages
        if not (name == "variants" and any(message in found for found in problems.values()))
    ]
    context = {
        "preview": preview,
        "fields": _preview_fields(template, preview, problems),
        "other_errors": other_errors,
    }
    if request.method == "POST" and request.POST.get("partial"):
        return TemplateResponse(request, f"{TEMPLATES}/_preview_result.html", context)
    can_send = model_admin.has_change_permission(request, template)
    send_form = None
    if can_send:
        initial = _preview_initial(template)
        send_form = TemplateSendTestForm(
            initial={"event_type": initial["event_type"], "payload": initial["payload"]},
            auto_id=SEND_FORM_IDS,  # on the preview's page: ids of its own
        )
    return _page(
        model_admin,
        request,
        template,
        "template_preview.html",
        title=f"Preview “{template.key}” ({template.get_channel_display()})",
        form=form,
        send_form=send_form,
        send_url=_action_url(model_admin, template, "send_test") if can_send else None,
        **context,
    )


def _action_url(
    model_admin: admin.ModelAdmin,
    obj: Any,
    action: str,
) -> str:
    opts = model_admin.model._meta
    return reverse(
        f"{model_admin.admin_site.name}:{opts.app_label}_{opts.model_name}_{action}",
        args=[obj.pk],
    )


def template_send_test_view(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    object_id: str,
) -> HttpResponse:
    """GET shows the form; POST sends the saved version for real, as a test."""
    template: Template = _object_or_404(model_admin, request, object_id)
    sent: SentTest | None = None
    if request.method == "POST":
        form = TemplateSendTestForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                sent = template_test_send(
                    template=template,
                    event_type_key=data["event_type"],
                    payload=data["payload"],
                    subscriber=data["subscriber"],
                    address=data["address"],
                    sent_by=request.user.get_username(),
                )
            except InvalidInput as invalid:
                _add_errors(form, invalid.errors)
    else:
        initial = _preview_initial(template)
        form = TemplateSendTestForm(
            initial={"event_type": initial["event_type"], "payload": initial["payload"]}
        )
    site = model_admin.admin_site.name
    return _page(
        model_admin,
        request,
        template,
        "template_send_test.html",
        title=f"Send a test of “{template.key}” ({template.get_channel_display()})",
        form=form,
        sent=sent,
        message_url=reverse(f"{site}:channels_delivery_message_change", args=[sent.message.pk])
        if sent is not None
        else None,
        preview_url=_action_url(model_admin, template, "preview"),
    )
