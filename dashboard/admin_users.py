"""Users and their roles, on both dashboards.

Platform staff (the public schema) keep Django's users and groups. A tenant's
users are staff of that tenant's dashboard with exactly one role (dashboard.roles):
its Users page chooses the role instead of groups and permissions, and every
change goes through the role services, which refuse to let an admin demote or
deactivate themself. Roles are defined in code, so their page is read-only.
"""

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin
from unfold.decorators import action, display
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm
from unfold.widgets import UnfoldAdminRadioSelectWidget

# Connects the roles to every tenant schema's migrations; the admin is loaded
# in every process that migrates (django.contrib.admin autodiscovers it).
from dashboard import signals  # noqa: F401
from dashboard.roles import (
    ROLE_DESCRIPTIONS,
    Role,
    UserInputError,
    tenant_user_create,
    tenant_user_set_active,
    tenant_user_update,
    user_change_check,
    user_role,
    username_clean,
)
from dashboard.sites import staff_admin_site, tenant_admin_site


class UserAdmin(BaseUserAdmin, ModelAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm


class GroupAdmin(BaseGroupAdmin, ModelAdmin):
    pass


staff_admin_site.register(User, UserAdmin)
staff_admin_site.register(Group, GroupAdmin)


# --- a tenant's users ----------------------------------------------------------------


def _role_field() -> forms.ChoiceField:
    return forms.ChoiceField(
        label="Role",
        choices=[(role.value, f"{role.label}: {ROLE_DESCRIPTIONS[role]}") for role in Role],
        widget=UnfoldAdminRadioSelectWidget,
    )


class TenantUserCreationForm(UserCreationForm):
    """Email (the username), role and password; tenant users always sign in with one."""

    role = _role_field()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields.pop("usable_password", None)
        self.fields["username"].label = "Email"
        self.fields["username"].help_text = "They sign in with this address."

    def clean_username(self) -> str:
        try:
            username = username_clean(self.cleaned_data["username"])
        except UserInputError as error:
            raise forms.ValidationError(error.message) from None
        self.cleaned_data["username"] = username
        # Django's check: no other user with this username, in any case.
        cleaned: str = super().clean_username()
        return cleaned


class TenantUserChangeForm(UserChangeForm):
    role = _role_field()
    # Set per request by TenantUserAdmin.get_form: the checks depend on who acts.
    acting_user: User

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            current = user_role(self.instance)
            self.initial["role"] = current.value if current is not None else None

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        role = cleaned.get("role")
        try:
            user_change_check(
                user=self.instance,
                acting_user=self.acting_user,
                role=Role(role) if role else None,
                is_active=cleaned.get("is_active", self.instance.is_active),
            )
        except UserInputError as error:
            self.add_error(error.field if error.field in self.fields else None, error.message)
        return cleaned


class TenantUserAdmin(BaseUserAdmin, ModelAdmin):
    form = TenantUserChangeForm
    add_form = TenantUserCreationForm
    change_password_form = AdminPasswordChangeForm
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("username", "role", "password1", "password2")}),
    )
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Name", {"fields": ("first_name", "last_name")}),
        ("Access", {"fields": ("role", "is_active")}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    list_display = ("username", "full_name", "role", "is_active", "last_login")
    list_filter = ("is_active", "groups")
    search_fields = ("username", "first_name", "last_name")
    ordering = ("username",)
    actions = ["deactivate", "activate"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        return super().get_queryset(request).prefetch_related("groups")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or not request.user.is_superuser:
            return fieldsets
        # Only a superuser learns who else is one (and can not make more here).
        return [
            (name, {**options, "fields": (*options["fields"], "is_superuser")})
            if name == "Access"
            else (name, options)
            for name, options in fieldsets
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # The email is who signs in; a new address is a new user.
        return ("username", "is_superuser", "last_login", "date_joined")

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is None:
            return form
        return type(form.__name__, (form,), {"acting_user": request.user})

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The tenant's owner (a superuser) is changed only by a superuser.
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    # Users are deactivated, not deleted: their sign-ins and the dashboard's
    # history of what they changed stay.
    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @display(description="Name")
    def full_name(self, obj: User) -> str:
        return obj.get_full_name() or "-"

    @display(description="Role")
    def role(self, obj: User) -> str:
        current = user_role(obj)
        return current.label if current is not None else "-"

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        data = form.cleaned_data
        if change:
            tenant_user_update(
                user=obj,
                acting_user=request.user,  # type: ignore[arg-type]
                role=Role(data["role"]),
                is_active=obj.is_active,
                first_name=obj.first_name,
                last_name=obj.last_name,
            )
        else:
            created = tenant_user_create(
                email=data["username"], password=data["password1"], role=Role(data["role"])
            )
            obj.pk = created.pk

    def _set_active(self, request: HttpRequest, queryset: QuerySet[User], is_active: bool) -> None:
        changed = 0
        for user in queryset:
            try:
                tenant_user_set_active(
                    user=user,
                    acting_user=request.user,  # type: ignore[arg-type]
                    is_active=is_active,
                )
            except UserInputError as error:
                messages.error(request, f"{user.username}: {error.message}.")
                continue
            changed += 1
        verb = "Activated" if is_active else "Deactivated"
        messages.success(request, f"{verb} {changed} user(s).")

    @action(description="Deactivate: they can no longer sign in", permissions=["change"])
    def deactivate(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        self._set_active(request, queryset, False)

    @action(description="Activate", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        self._set_active(request, queryset, True)


class RoleAdmin(ModelAdmin):
    """The roles and what they allow; defined in code (dashboard.roles)."""

    list_display = ["name", "description", "members"]
    fields = ["name", "description", "permissions"]
    readonly_fields = fields
    ordering = ["name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Group]:
        return super().get_queryset(request).annotate(member_count=Count("user"))

    @display(description="Allows")
    def description(self, obj: Group) -> str:
        return ROLE_DESCRIPTIONS.get(Role(obj.name), "-") if obj.name in Role.values else "-"

    @display(description="Users")
    def members(self, obj: Group) -> int:
        return int(getattr(obj, "member_count", 0))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


tenant_admin_site.register(User, TenantUserAdmin)
tenant_admin_site.register(Group, RoleAdmin)
