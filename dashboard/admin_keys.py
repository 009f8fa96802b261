"""The tenant dashboard's API keys: issued here (the token shown once) and
revoked here, through the same services as `herald api_key_create`."""

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from unfold.admin import ModelAdmin
from unfold.decorators import action, display
from unfold.widgets import UnfoldAdminSplitDateTimeWidget, UnfoldAdminTextInputWidget

from dashboard.sites import tenant_admin_site
from tenants.models import ApiKey, ApiScope, Tenant
from tenants.services import ProvisioningError, api_key_create, api_key_revoke


class ApiKeyIssueForm(forms.Form):
    name = forms.CharField(max_length=100, widget=UnfoldAdminTextInputWidget())
    scopes = forms.MultipleChoiceField(
        choices=ApiScope.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="What the key may do; give it no more than its caller needs.",
    )
    expires_at = forms.SplitDateTimeField(
        required=False,
        widget=UnfoldAdminSplitDateTimeWidget(),
        help_text="Optional: the key stops working then.",
    )


def _tenant(request: HttpRequest) -> Tenant:
    tenant = getattr(request, "tenant", None)
    if not isinstance(tenant, Tenant):
        raise PermissionDenied("API keys belong to a tenant's dashboard.")
    return tenant


class TenantApiKeyAdmin(ModelAdmin):
    list_display = ["name", "prefix", "scopes", "state", "created_at", "last_used_at"]
    search_fields = ["name", "prefix"]
    readonly_fields = [
        "name",
        "prefix",
        "scopes",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    fields = readonly_fields
    actions = ["revoke"]
    actions_detail = ["revoke_one"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        # The keys live in the public schema; only this tenant's are ever listed.
        return super().get_queryset(request).filter(tenant=_tenant(request))

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # a key is issued and revoked, never edited

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # revoked keys stay listed, for the record

    def has_revoke_permission(self, request: HttpRequest, object_id: object = None) -> bool:
        return bool(request.user.has_perm("tenants.add_apikey"))

    @display(
        description="State", label={"active": "success", "revoked": "danger", "expired": "warning"}
    )
    def state(self, obj: ApiKey) -> str:
        if obj.revoked_at is not None:
            return "revoked"
        if obj.expires_at is not None and obj.expires_at <= timezone.now():
            return "expired"
        return "active"

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ApiKeyIssueForm(request.POST or None)
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": "Issue an API key",
            "opts": self.model._meta,
            "form": form,
            "back_url": reverse("tenant_admin:tenants_apikey_changelist"),
        }
        if request.method == "POST" and form.is_valid():
            try:
                created = api_key_create(
                    tenant=_tenant(request),
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=form.cleaned_data["expires_at"],
                )
            except ProvisioningError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                self.log_addition(request, created.api_key, [{"added": {}}])
                context.update(title="API key issued", token=created.token, key=created.api_key)
        return TemplateResponse(request, "dashboard/api_key_issue.html", context)

    @action(description="Revoke selected keys", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        messages.success(
            request, f"Revoked {queryset.count()} key(s); they stop working within seconds."
        )

    @action(description="Revoke", url_path="revoke", permissions=["revoke"])
    def revoke_one(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_revoke_permission(request):
            raise PermissionDenied
        api_key = self.get_queryset(request).filter(pk=object_id).first()
        if api_key is None:
            raise PermissionDenied("No such key in this tenant.")
        if request.method != "POST":
            return TemplateResponse(
                request,
                "dashboard/api_key_revoke.html",
                {
                    **self.admin_site.each_context(request),
                    "title": f"Revoke {api_key.name}?",
                    "opts": self.model._meta,
                    "key": api_key,
                    "back_url": reverse("tenant_admin:tenants_apikey_change", args=[api_key.pk]),
                },
            )
        api_key_revoke(api_key=api_key)
        messages.success(request, f"Revoked {api_key.name}; it stops working within seconds.")
        return redirect("tenant_admin:tenants_apikey_changelist")


tenant_admin_site.register(ApiKey, TenantApiKeyAdmin)
