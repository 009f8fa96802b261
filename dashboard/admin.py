"""Admin registrations for both dashboards (see dashboard.sites)."""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django_tenants.utils import tenant_context
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import action, display
from unfold.widgets import (
    UnfoldAdminIntegerFieldWidget,
    UnfoldAdminSelectWidget,
    UnfoldAdminTextareaWidget,
    UnfoldAdminTextInputWidget,
    UnfoldBooleanSwitchWidget,
)

from dashboard import design_views
from dashboard.content_access import (
    ACCESS_MINUTES,
    ReasonForm,
    content_access_current,
    content_access_grant,
    may_open_content,
    tenant_content_read,
)
from dashboard.models import ContentAccess, ContentAccessView, TenantStatsHour
from dashboard.sites import staff_admin_site, tenant_admin_site
from herald.limits import month_bounds
from herald.problems import FieldError
from rules_engine.event_types import payload_schema_check
from rules_engine.models import EventType, Layout, Rule, Subscriber, Template
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
from tenants.services import ProvisioningError, api_key_revoke, tenant_create, tenant_set_active


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


class TenantCreateForm(forms.Form):
    slug = forms.SlugField(
        max_length=63,
        widget=UnfoldAdminTextInputWidget(),
        help_text="The tenant's hostname is <slug>.<base domain>; it can not change later.",
    )
    name = forms.CharField(max_length=200, widget=UnfoldAdminTextInputWidget())
    admin_email = forms.EmailField(
        label="First admin's email",
        widget=UnfoldAdminTextInputWidget(),
        help_text="Their username; a password is generated and shown once.",
    )
    plan = forms.ModelChoiceField(
        queryset=Plan.objects.all(),
        required=False,
        widget=UnfoldAdminSelectWidget(),
        help_text="Empty: the default plan.",
    )


class TenantAdmin(ModelAdmin):
    list_display = ["slug", "name", "plan", "events_this_month", "is_active", "created_at"]
    list_filter = ["is_active", "plan"]
    search_fields = ["slug", "name"]
    readonly_fields = ["slug", "schema_name", "created_at", "usage"]
    fields = ["name", "slug", "schema_name", "plan", "is_active", "created_at", "usage"]
    inlines = [DomainInline]
    actions = ["suspend", "resume"]
    actions_detail = ["open_content"]

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path(
                "<int:object_id>/content/",
                view(self.content_view),
                name="tenants_tenant_content",
            ),
            path(
                "<int:object_id>/content/open/",
                view(self.content_open_view),
                name="tenants_tenant_content_open",
            ),
            *super().get_urls(),
        ]

    @action(description="Open content (audited)", url_path="open-content")
    def open_content(self, request: HttpRequest, object_id: int) -> HttpResponse:
        return redirect("staff_admin:tenants_tenant_content_open", object_id=object_id)

    def _tenant_or_404(self, object_id: int) -> Tenant:
        tenant = self.get_queryset_plain().filter(pk=object_id).first()
        if tenant is None:
            raise Http404("No such tenant.")
        return tenant

    def get_queryset_plain(self) -> QuerySet[Tenant]:
        return Tenant.objects.exclude(schema_name="public")

    def content_open_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Ask for the reason, then grant (services in dashboard.content_access)."""
        tenant = self._tenant_or_404(object_id)
        if not may_open_content(request.user):
            raise PermissionDenied("You do not have the permission to open tenant content.")
        form = ReasonForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            content_access_grant(
                user=request.user, tenant=tenant, reason=form.cleaned_data["reason"]
            )
            return redirect("staff_admin:tenants_tenant_content", object_id=tenant.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Open the content of {tenant.name}",
            "tenant": tenant,
            "form": form,
            "minutes": ACCESS_MINUTES,
            "back_url": reverse("staff_admin:tenants_tenant_change", args=[tenant.pk]),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "dashboard/content_open.html", context)

    def content_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        tenant = self._tenant_or_404(object_id)
        access = content_access_current(user=request.user, tenant=tenant)
        if access is None:
            if not may_open_content(request.user):
                raise PermissionDenied("You do not have the permission to open tenant content.")
            return redirect("staff_admin:tenants_tenant_content_open", object_id=tenant.pk)
        content = tenant_content_read(access=access, path=request.get_full_path())
        context = {
            **self.admin_site.each_context(request),
            "title": f"Content of {tenant.name}",
            "tenant": tenant,
            "access": access,
            "content": content,
            "back_url": reverse("staff_admin:tenants_tenant_change", args=[tenant.pk]),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "dashboard/content.html", context)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Create a tenant (schema, hostname and first admin together, through the
        service `herald tenant_create` uses); the admin's password is shown once."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TenantCreateForm(request.POST or None)
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": "Create a tenant",
            "opts": self.model._meta,
            "form": form,
            "back_url": reverse("staff_admin:tenants_tenant_changelist"),
        }
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                created = tenant_create(
                    slug=data["slug"],
                    name=data["name"],
                    admin_email=data["admin_email"],
                    plan=data["plan"],
                )
            except ProvisioningError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                self.log_addition(request, created.tenant, [{"added": {}}])
                context.update(title=f"Created {created.tenant.name}", created=created)
        return TemplateResponse(request, "dashboard/tenant_create.html", context)

    # Tenants are never deleted from a list page: suspend one instead.

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        # Usage from the public rollup, in the list's own query: no schema is visited.
        month_start, _ = month_bounds(timezone.now())
        events = (
            TenantStatsHour.objects.filter(
                tenant=OuterRef("pk"), metric="events", hour__gte=month_start
            )
            .values("tenant")
            .annotate(total=Sum("value"))
            .values("total")
        )
        return (
            super()
            .get_queryset(request)
            .exclude(schema_name="public")
            .select_related("plan")
            .annotate(month_events=Coalesce(Subquery(events), 0))
        )

    @display(description="Events this month", label=True)
    def events_this_month(self, obj: Tenant) -> tuple[str, str] | str:
        used = getattr(obj, "month_events", 0)
        quota = obj.plan.events_per_month if obj.plan else None
        if not quota:
            return f"{used:,}"
        share = used / quota
        tone = "danger" if share >= 1 else "warning" if share >= 0.8 else "success"
        return tone, f"{used:,} / {quota:,} ({share:.0%})"

    @display(description="Usage against the plan")
    def usage(self, obj: Tenant) -> str:
        """Events from the rollup; subscribers counted in the tenant's schema
        (figures only: this page never reads content)."""
        if obj.pk is None:
            return "-"
        month_start, _ = month_bounds(timezone.now())
        used = (
            TenantStatsHour.objects.filter(
                tenant=obj, metric="events", hour__gte=month_start
            ).aggregate(total=Sum("value"))["total"]
            or 0
        )
        with tenant_context(obj):
            subscribers = Subscriber.objects.count()
        plan = obj.plan
        rows = [
            ("Events this month", used, plan.events_per_month if plan else None),
            ("Subscribers", subscribers, plan.max_subscribers if plan else None),
        ]
        return format_html_join(
            mark_safe("<br>"),
            "{}: {}",
            (
                (name, f"{value:,} of {limit:,} ({value / limit:.0%})" if limit else f"{value:,}")
                for name, value, limit in rows
            ),
        )

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


class ContentAccessViewInline(TabularInline):
    model = ContentAccessView
    extra = 0
    fields = ["viewed_at", "path"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ContentAccessAdmin(ModelAdmin):
    """The audit trail of staff opening tenant content: read only, kept."""

    list_display = ["granted_at", "staff_user", "tenant", "reason", "expires_at"]
    list_filter = ["tenant", "staff_user"]
    search_fields = ["reason", "staff_user__username", "tenant__slug"]
    readonly_fields = ["staff_user", "tenant", "reason", "granted_at", "expires_at"]
    inlines = [ContentAccessViewInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


staff_admin_site.register(Plan, PlanAdmin)
staff_admin_site.register(Tenant, TenantAdmin)
staff_admin_site.register(ApiKey, ApiKeyAdmin)
staff_admin_site.register(ContentAccess, ContentAccessAdmin)


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


class _OptionalJSONField(forms.JSONField):
    """An option left unset shows as an empty box, not as ``null``."""

    def prepare_value(self, value: Any) -> Any:
        return "" if value is None else super().prepare_value(value)


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

    def clean(self) -> dict[str, Any]:
        """The sample must be an event the schema accepts: rules are tested and
        templates previewed against it."""
        cleaned: dict[str, Any] = super().clean() or {}
        schema, sample = cleaned.get("payload_schema"), cleaned.get("sample_payload")
        if schema and sample is not None and not self.has_error("payload_schema"):
            problems = sorted(
                Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(sample),
                key=lambda e: list(e.path),
            )
            for problem in problems[:5]:
                where = "/".join(str(part) for part in problem.absolute_path)
                self.add_error(
                    "sample_payload",
                    f"{where}: {problem.message}" if where else problem.message,
                )
        return cleaned


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
    digest = _OptionalJSONField(
        required=False,
        widget=_json_widget(),
        help_text='{"key": "<CEL giving a string, or empty>", "window_seconds": 3600}',
    )
    throttle = _OptionalJSONField(
        required=False,
        widget=_json_widget(),
        help_text='{"limit": 3, "window_seconds": 86400}',
    )
    send_window = _OptionalJSONField(
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


# What a reader sees in place of each versioned form field (RuleAdmin.get_fieldsets).
_RULE_SHOWN = {field: f"shown_{field}" for field in VERSIONED_FIELDS}


class RuleAdmin(ModelAdmin):
    form = RuleAdminForm
    list_display = ["name", "event_type", "enabled", "order", "current_version", "updated_at"]
    list_filter = ["enabled", "event_type"]
    search_fields = ["name", "event_type__key"]
    list_select_related = ["event_type"]
    readonly_fields = ["current_version", "history"]
    actions_detail = ["test_run"]
    actions_row = ["test_run"]
    fieldsets = [
        (None, {"fields": ["name", "event_type", "enabled", "order"]}),
        ("When", {"fields": ["condition"]}),
        ("What and to whom", {"fields": ["actions", "recipients"]}),
        ("Timing", {"fields": ["delay_seconds", "digest", "throttle", "send_window"]}),
        ("Versions", {"fields": ["current_version", "history"]}),
    ]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """A reader (no change permission) sees the current version through the
        ``shown_*`` displays: Django shows read-only fields from the admin or the
        model, and the form's versioned fields are neither (``actions`` would even
        resolve to ModelAdmin.actions)."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        return [
            (title, {**options, "fields": [_RULE_SHOWN.get(f, f) for f in options["fields"]]})
            for title, options in fieldsets
        ]

    def _current(self, obj: Rule) -> Any:
        cached = getattr(obj, "_current_version_row", None)
        if cached is None:
            cached = rule_versions_current([obj]).get(obj.pk)
            obj._current_version_row = cached  # type: ignore[attr-defined]
        return cached

    @display(description="Condition")
    def shown_condition(self, obj: Rule) -> str:
        version = self._current(obj)
        if version is None:
            return "-"
        return (
            format_html('<code class="font-mono">{}</code>', version.condition)
            if version.condition
            else "(none: every event of the type)"
        )

    @display(description="Actions")
    def shown_actions(self, obj: Rule) -> str:
        version = self._current(obj)
        if version is None:
            return "-"
        return format_html_join(
            mark_safe("<br>"),
            "{} with template {}",
            ((action["channel"], action["template"]) for action in version.actions),
        )

    @display(description="Recipients")
    def shown_recipients(self, obj: Rule) -> str:
        version = self._current(obj)
        if version is None:
            return "-"
        selector = version.recipients
        kind = selector.get("kind")
        if kind == "topic":
            return f"The members of topic {selector.get('topic')}"
        if kind == "broadcast":
            return f"Every subscriber matching {selector.get('filter') or '(no filter)'}"
        return "The subscribers the event names"

    @display(description="Delay")
    def shown_delay_seconds(self, obj: Rule) -> str:
        version = self._current(obj)
        return f"{version.delay_seconds} s" if version and version.delay_seconds else "-"

    @display(description="Digest")
    def shown_digest(self, obj: Rule) -> str:
        version = self._current(obj)
        if version is None or not version.digest:
            return "-"
        key = version.digest.get("key") or "(one batch per subscriber)"
        return f"Batches by {key}, sent {version.digest['window_seconds']} s after the first event"

    @display(description="Throttle")
    def shown_throttle(self, obj: Rule) -> str:
        version = self._current(obj)
        if version is None or not version.throttle:
            return "-"
        throttle = version.throttle
        return f"At most {throttle['limit']} per subscriber in {throttle['window_seconds']} s"

    @display(description="Send window")
    def shown_send_window(self, obj: Rule) -> str:
        version = self._current(obj)
        if version is None or not version.send_window:
            return "-"
        window = version.send_window
        return f"{window['start']} to {window['end']} in the subscriber's time zone"

    @display(description="History")
    def history(self, obj: Rule) -> str:
        if obj.pk is None:
            return "-"
        return _history(
            (v.version, v.created_at, v.created_by, v.condition or "(always)")
            for v in obj.versions.order_by("-version")
        )

    @action(
        description="Test against sample event",
        url_path="test",
        icon="science",
        permissions=["view"],
    )
    def test_run(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return design_views.rule_test_view(self, request, object_id)

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


# What a reader sees in place of each content field (TemplateAdmin.get_fieldsets).
_TEMPLATE_SHOWN = {
    field: f"shown_{field}" for field in ("variants", "fallback_locale", "strict", "layout")
}


class TemplateAdmin(ModelAdmin):
    form = TemplateAdminForm
    list_display = ["key", "name", "channel", "current_version", "updated_at"]
    list_filter = ["channel"]
    search_fields = ["key", "name", "description"]
    actions_detail = ["preview", "send_test"]
    actions_row = ["preview"]
    fieldsets = [
        (None, {"fields": ["key", "name", "channel", "description"]}),
        ("Content", {"fields": ["variants", "fallback_locale", "strict", "layout"]}),
        ("Versions", {"fields": ["current_version", "history"]}),
    ]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        """A reader sees the current version through the ``shown_*`` displays (the
        form's content fields are not the model's, so Django could not show them)."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        return [
            (title, {**options, "fields": [_TEMPLATE_SHOWN.get(f, f) for f in options["fields"]]})
            for title, options in fieldsets
        ]

    def _current(self, obj: Template) -> Any:
        cached = getattr(obj, "_current_version_row", None)
        if cached is None:
            cached = template_versions_current([obj.key]).get(obj.key)
            obj._current_version_row = cached  # type: ignore[attr-defined]
        return cached

    @display(description="Variants")
    def shown_variants(self, obj: Template) -> str:
        version = self._current(obj)
        if version is None:
            return "-"
        return format_html_join(
            "",
            '<div class="mb-3"><div class="font-semibold">{} · {}</div>'
            '<pre class="bg-base-50 border border-base-200 font-mono p-2 rounded-default '
            'text-sm dark:bg-base-800 dark:border-base-700" '
            'style="white-space: pre-wrap; overflow-wrap: anywhere;">{}</pre></div>',
            (
                (locale, field, source)
                for locale, fields in sorted(version.variants.items())
                for field, source in fields.items()
            ),
        )

    @display(description="Fallback locale")
    def shown_fallback_locale(self, obj: Template) -> str:
        version = self._current(obj)
        return version.fallback_locale if version is not None else "-"

    @display(description="Strict", boolean=True)
    def shown_strict(self, obj: Template) -> bool | None:
        version = self._current(obj)
        return version.strict if version is not None else None

    @display(description="Layout")
    def shown_layout(self, obj: Template) -> str:
        version = self._current(obj)
        return version.layout.key if version is not None and version.layout else "-"

    @display(description="History")
    def history(self, obj: Template) -> str:
        if obj.pk is None:
            return "-"
        return _history(
            (v.version, v.created_at, v.created_by, ", ".join(sorted(v.variants)))
            for v in obj.versions.order_by("-version")
        )

    @action(description="Preview", url_path="preview", icon="preview", permissions=["view"])
    def preview(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return design_views.template_preview_view(self, request, object_id)

    # A test send is a real message through the tenant's integrations: editors and admins.
    @action(description="Send test", url_path="send-test", icon="send", permissions=["change"])
    def send_test(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return design_views.template_send_test_view(self, request, object_id)

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


# The other pages, one module per area; importing registers them.
from dashboard import admin_delivery, admin_keys, admin_users  # noqa: E402, F401
