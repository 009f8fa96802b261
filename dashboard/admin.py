"""Admin registrations for both dashboards (see dashboard.sites)."""

from typing import Any

from django.contrib import messages
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import action
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm

from dashboard.sites import staff_admin_site, tenant_admin_site
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
