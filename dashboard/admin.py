"""Admin registrations for both dashboards (see dashboard.sites)."""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe
from jsonschema.exceptions import SchemaError
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import action, display
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm
from unfold.widgets import (
    UnfoldAdminIntegerFieldWidget,
    UnfoldAdminSelectWidget,
    UnfoldAdminTextareaWidget,
    UnfoldAdminTextInputWidget,
    UnfoldBooleanSwitchWidget,
)

from dashboard.sites import staff_admin_site, tenant_admin_site
from herald.problems import FieldError
from rules_engine.event_types import payload_schema_check
from rules_engine.models import EventType, Layout, Rule, Template
from rules_engine.rule_options import VERSIONED_FIELDS
from rules_engine.selectors.rules import rule_versions_current, rules_using_template
from rules_engine.selectors.templates import template_versions_current, templates_using_layout
from rules_engine.services.event_types import (
    EVENT_TYPE_KEY,
    RESERVED_EVENT_KEY_MESSAGE,
    RESERVED_EVENT_KEYS,
    event_type_delete,
    event_type_save,
)
from rules_engine.services.rules import rule_create, rule_definition_clean, rule_delete, rule_update
from rules_engine.services.subscribers import InvalidInput
from rules_engine.services.templates import (
    KEY_RULE,
    TEMPLATE_KEY,
    layout_clean,
    layout_delete,
    layout_save,
    template_create,
    template_definition_clean,
    template_delete,
    template_update,
)
from tenants.models import ApiKey, Domain, Plan, Tenant
from tenants.services import api_key_revoke, tenant_set_active


class UserAdmin(BaseUserAdmin, ModelAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm


class GroupAdmin(BaseGroupAdmin, ModelAdmin):
    pass


for site in (staff_admin_site, tenant_admin_site):
    site.register(User, UserAdmin)
    site.register(Group, GroupAdmin)


class DomainInline(TabularInline):
    model = Domain
    extra = 0


class PlanAdmin(ModelAdmin):
    list_display = [
        "name",
        "events_per_month",
        "api_requests_per_second",
        "max_subscribers",
        "retention_days",
    ]


class TenantAdmin(ModelAdmin):
    list_display = ["slug", "name", "plan", "is_active", "created_at"]
    list_filter = ["is_active", "plan"]
    search_fields = ["slug", "name"]
    readonly_fields = ["slug", "schema_name", "created_at"]
    fields = ["name", "slug", "schema_name", "plan", "is_active", "created_at"]
    inlines = [DomainInline]
    actions = ["suspend", "resume"]

    # Tenants are created by `herald tenant_create` (schema, domain and admin
    # user together) and never deleted from a list page.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return super().get_queryset(request).exclude(schema_name="public")

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if "is_active" in form.changed_data:
            # Through the service, so this process forgets the tenant's keys at once.
            tenant_set_active(tenant=obj, is_active=obj.is_active)

    @action(description="Suspend: refuse the tenant's API keys and dashboard")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            tenant_set_active(tenant=tenant, is_active=False)
        messages.success(request, f"Suspended {queryset.count()} tenant(s).")

    @action(description="Resume")
    def resume(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            tenant_set_active(tenant=tenant, is_active=True)
        messages.success(request, f"Resumed {queryset.count()} tenant(s).")


class ApiKeyAdmin(ModelAdmin):
    list_display = [
        "name",
        "tenant",
        "prefix",
        "scopes",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["tenant"]
    search_fields = ["name", "prefix", "tenant__slug"]
    # Nothing about a key is editable: it is issued, used and revoked.
    readonly_fields = list_display
    exclude = ["key_hash"]
    actions = ["revoke"]

    # Keys are issued with `herald api_key_create`, which shows the token once.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        messages.success(request, f"Revoked {queryset.count()} key(s).")


staff_admin_site.register(Plan, PlanAdmin)
staff_admin_site.register(Tenant, TenantAdmin)
staff_admin_site.register(ApiKey, ApiKeyAdmin)


# --- the tenant's rules engine: event types, rules, templates, layouts -----------
#
# Every form validates with the services' own validators, so the dashboard
# refuses what the API refuses with the same message at the field, and every
# save goes through a service: an edit of what a rule or template does makes a
# new version, exactly as it does through the API.


def _admin_author(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _add_field_errors(form: forms.BaseForm, errors: Sequence[FieldError]) -> None:
    """Show each error at the form field its JSON pointer starts with; the rest
    of the pointer (``/variants/de/subject`` -> ``de/subject``) leads the message."""
    for error in errors:
        top, _, rest = error.pointer.lstrip("/").partition("/")
        field = top if top in form.fields else None
        message = (
            f"{rest.replace('~1', '/').replace('~0', '~')}: {error.detail}"
            if rest
            else error.detail
        )
        if field is None and top:
            message = f"{top}: {message}"
        form.add_error(field, message)


def _history(versions: Iterable[tuple[int, datetime, str, str]]) -> str:
    """Versions, newest first, as a list: number, when, who, and a summary."""
    return format_html_join(
        mark_safe("<br>"),
        "v{} · {} · {} · {}",
        (
            (number, f"{created_at:%Y-%m-%d %H:%M}", created_by or "-", summary)
            for number, created_at, created_by, summary in versions
        ),
    )


def _json_widget() -> UnfoldAdminTextareaWidget:
    return UnfoldAdminTextareaWidget(attrs={"rows": 6, "class": "font-mono"})


class EventTypeAdminForm(forms.ModelForm):
    class Meta:
        model = EventType
        fields = [
            "key",
            "name",
            "description",
            "category",
            "payload_schema",
            "sample_payload",
            "is_critical",
        ]

    def clean_key(self) -> str:
        key: str = self.cleaned_data["key"]
        if not EVENT_TYPE_KEY.fullmatch(key):
            raise forms.ValidationError(
                "Use 1 to 200 letters, digits and . _ : -, starting with a letter or digit."
            )
        if key in RESERVED_EVENT_KEYS:
            raise forms.ValidationError(RESERVED_EVENT_KEY_MESSAGE.format(key=key))
        return key

    def clean_payload_schema(self) -> Any:
        schema = self.cleaned_data.get("payload_schema")
        if schema is not None:
            try:
                payload_schema_check(schema)
            except SchemaError as error:
                raise forms.ValidationError(error.message) from None
        return schema

    def clean_sample_payload(self) -> Any:
        sample = self.cleaned_data.get("sample_payload")
        if sample is None:
            return {}
        if not isinstance(sample, dict):
            raise forms.ValidationError("must be a JSON object")
        return sample


class EventTypeAdmin(ModelAdmin):
    form = EventTypeAdminForm
    list_display = ["key", "name", "category", "is_critical", "schema_version", "updated_at"]
    list_filter = ["category", "is_critical"]
    search_fields = ["key", "name", "description"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        # Events and rules name the type by its key.
        return ["key", "schema_version"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: EventType, form: Any, change: bool) -> None:
        saved = event_type_save(
            key=obj.key,
            name=obj.name,
            description=obj.description,
            category=obj.category,
            payload_schema=obj.payload_schema,
            sample_payload=obj.sample_payload,
            is_critical=obj.is_critical,
        )
        obj.pk = saved.pk
        obj.schema_version = saved.schema_version

    def delete_model(self, request: HttpRequest, obj: EventType) -> None:
        event_type_delete(event_type=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[EventType]) -> None:
        for event_type in queryset:
            event_type_delete(event_type=event_type)


class RuleAdminForm(forms.ModelForm):
    """The rule's plain fields, and its current version's fields to edit."""

    condition = forms.CharField(
        required=False,
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 3, "class": "font-mono"}),
        help_text="CEL over event, subscriber and tenant, e.g. event.payload.total > 100. "
        "Empty: every event of the type.",
    )
    actions = forms.JSONField(
        widget=_json_widget(),
        help_text='One per channel: [{"channel": "email", "template": "order-shipped"}]',
    )
    recipients = forms.JSONField(
        widget=_json_widget(),
        initial={"kind": "event"},
        help_text='{"kind": "event"}, {"kind": "topic", "topic": "<key>"} or '
        '{"kind": "broadcast", "filter": "<CEL over subscriber>"}',
    )
    delay_seconds = forms.IntegerField(
        required=False,
        widget=UnfoldAdminIntegerFieldWidget,
        help_text="Wait this long before sending (up to 30 days).",
    )
    digest = forms.JSONField(
        required=False,
        widget=_json_widget(),
        help_text='{"key": "<CEL giving a string, or empty>", "window_seconds": 3600}',
    )
    throttle = forms.JSONField(
        required=False,
        widget=_json_widget(),
        help_text='{"limit": 3, "window_seconds": 86400}',
    )
    send_window = forms.JSONField(
        required=False,
        widget=_json_widget(),
        help_text='{"start": "08:00", "end": "21:00"} in the subscriber\'s time zone',
    )

    class Meta:
        model = Rule
        fields = ["name", "event_type", "enabled", "order"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            current = rule_versions_current([self.instance]).get(self.instance.pk)
            if current is not None:
                for field in VERSIONED_FIELDS:
                    self.initial[field] = getattr(current, field)
            if "event_type" in self.fields:
                self.fields["event_type"].disabled = True
                self.fields["event_type"].help_text = "Fixed once the rule exists."

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        fields = {field: cleaned.get(field) for field in VERSIONED_FIELDS}
        fields["condition"] = fields["condition"] or ""
        if any(field in self.errors for field in VERSIONED_FIELDS):
            return cleaned
        try:
            self.definition = rule_definition_clean(fields=fields)
        except InvalidInput as invalid:
            _add_field_errors(self, invalid.errors)
        return cleaned


class RuleAdmin(ModelAdmin):
    form = RuleAdminForm
    list_display = ["name", "event_type", "enabled", "order", "current_version", "updated_at"]
    list_filter = ["enabled", "event_type"]
    search_fields = ["name", "event_type__key"]
    list_select_related = ["event_type"]
    readonly_fields = ["current_version", "history"]
    fieldsets = [
        (None, {"fields": ["name", "event_type", "enabled", "order"]}),
        ("When", {"fields": ["condition"]}),
        ("What and to whom", {"fields": ["actions", "recipients"]}),
        ("Timing", {"fields": ["delay_seconds", "digest", "throttle", "send_window"]}),
        ("Versions", {"fields": ["current_version", "history"]}),
    ]

    @display(description="History")
    def history(self, obj: Rule) -> str:
        if obj.pk is None:
            return "-"
        return _history(
            (v.version, v.created_at, v.created_by, v.condition or "(always)")
            for v in obj.versions.order_by("-version")
        )

    def save_model(self, request: HttpRequest, obj: Rule, form: Any, change: bool) -> None:
        definition = form.definition.stored()
        if change:
            saved = rule_update(
                rule=obj,
                name=obj.name,
                enabled=obj.enabled,
                order=obj.order,
                created_by=_admin_author(request),
                **definition,
            )
        else:
            saved = rule_create(
                name=obj.name,
                event_type_key=obj.event_type.key,
                enabled=obj.enabled,
                order=obj.order,
                created_by=_admin_author(request),
                **definition,
            )
        obj.pk = saved.rule.pk
        obj.current_version = saved.rule.current_version

    def delete_model(self, request: HttpRequest, obj: Rule) -> None:
        rule_delete(rule=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Rule]) -> None:
        for rule in queryset:
            rule_delete(rule=rule)


class TemplateAdminForm(forms.ModelForm):
    """The template's plain fields, and its current version's fields to edit."""

    variants = forms.JSONField(
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 14, "class": "font-mono"}),
        help_text='Jinja2 sources by locale, then field: {"en": {"subject": "…", "html": "…"}}',
    )
    fallback_locale = forms.CharField(
        required=False,
        max_length=35,
        widget=UnfoldAdminTextInputWidget,
        help_text="The variant for subscribers whose locale has none (may be left empty with "
        "one variant).",
    )
    strict = forms.BooleanField(
        required=False,
        widget=UnfoldBooleanSwitchWidget,
        help_text="A variable missing from the context is an error instead of ''.",
    )
    layout = forms.ModelChoiceField(
        queryset=Layout.objects.all(),
        required=False,
        to_field_name="key",
        widget=UnfoldAdminSelectWidget,
        help_text="Email only: the brand wrapper.",
    )

    class Meta:
        model = Template
        fields = ["key", "name", "channel", "description"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            current = template_versions_current([self.instance.key]).get(self.instance.key)
            if current is not None:
                self.initial.update(
                    variants=current.variants,
                    fallback_locale=current.fallback_locale,
                    strict=current.strict,
                    layout=current.layout.key if current.layout is not None else None,
                )

    def clean_key(self) -> str:
        key: str = self.cleaned_data["key"]
        if not TEMPLATE_KEY.fullmatch(key):
            raise forms.ValidationError(f"Use {KEY_RULE}.")
        return key

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        channel = cleaned.get("channel") or self.instance.channel
        if not channel or any(f in self.errors for f in ("variants", "layout", "channel")):
            return cleaned
        layout = cleaned.get("layout")
        try:
            template_definition_clean(
                channel=channel,
                variants=cleaned.get("variants"),
                fallback_locale=cleaned.get("fallback_locale") or None,
                strict=bool(cleaned.get("strict")),
                layout_key=layout.key if layout is not None else None,
            )
        except InvalidInput as invalid:
            _add_field_errors(self, invalid.errors)
        return cleaned


class TemplateAdmin(ModelAdmin):
    form = TemplateAdminForm
    list_display = ["key", "name", "channel", "current_version", "updated_at"]
    list_filter = ["channel"]
    search_fields = ["key", "name", "description"]
    fieldsets = [
        (None, {"fields": ["key", "name", "channel", "description"]}),
        ("Content", {"fields": ["variants", "fallback_locale", "strict", "layout"]}),
        ("Versions", {"fields": ["current_version", "history"]}),
    ]

    @display(description="History")
    def history(self, obj: Template) -> str:
        if obj.pk is None:
            return "-"
        return _history(
            (v.version, v.created_at, v.created_by, ", ".join(sorted(v.variants)))
            for v in obj.versions.order_by("-version")
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        # Rules name a template by key, and its fields depend on the channel.
        fixed = ["key", "channel"] if obj is not None else []
        return [*fixed, "current_version", "history"]

    def save_model(self, request: HttpRequest, obj: Template, form: Any, change: bool) -> None:
        data = form.cleaned_data
        layout = data.get("layout")
        content = {
            "variants": data["variants"],
            "fallback_locale": data.get("fallback_locale") or None,
            "strict": bool(data.get("strict")),
            "layout": layout.key if layout is not None else None,
        }
        if change:
            saved = template_update(
                template=obj,
                name=obj.name,
                description=obj.description,
                created_by=_admin_author(request),
                **content,
            )
        else:
            saved = template_create(
                key=obj.key,
                channel=obj.channel,
                name=obj.name,
                description=obj.description,
                created_by=_admin_author(request),
                **content,
            )
        obj.pk = saved.template.pk
        obj.current_version = saved.template.current_version

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """A template a rule's current version sends with is protected, as the API refuses it."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for template in objs:
            protected.extend(
                f"Rule {rule.name!r} (id {rule.pk}) sends with template {template.key!r}"
                for rule in rules_using_template(template_key=template.key)
            )
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Template) -> None:
        template_delete(template=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        for template in queryset:
            template_delete(template=template)


class LayoutAdminForm(forms.ModelForm):
    class Meta:
        model = Layout
        fields = ["key", "name", "html", "text"]

    def clean_key(self) -> str:
        key: str = self.cleaned_data["key"]
        if not TEMPLATE_KEY.fullmatch(key):
            raise forms.ValidationError(f"Use {KEY_RULE}.")
        return key

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if "html" in self.errors or "text" in self.errors:
            return cleaned
        try:
            layout_clean(html=cleaned.get("html", ""), text=cleaned.get("text", ""))
        except InvalidInput as invalid:
            _add_field_errors(self, invalid.errors)
        return cleaned


class LayoutAdmin(ModelAdmin):
    form = LayoutAdminForm
    list_display = ["key", "name", "updated_at"]
    search_fields = ["key", "name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        return ["key"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Layout, form: Any, change: bool) -> None:
        saved = layout_save(key=obj.key, name=obj.name, html=obj.html, text=obj.text)
        obj.pk = saved.layout.pk

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """A layout a template's current version uses is protected, as the API refuses it."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for layout in objs:
            protected.extend(
                f"Template {key!r} uses layout {layout.key!r}"
                for key in templates_using_layout(layout=layout)
            )
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Layout) -> None:
        layout_delete(layout=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Layout]) -> None:
        for layout in queryset:
            layout_delete(layout=layout)


tenant_admin_site.register(EventType, EventTypeAdmin)
tenant_admin_site.register(Rule, RuleAdmin)
tenant_admin_site.register(Template, TemplateAdmin)
tenant_admin_site.register(Layout, LayoutAdmin)
