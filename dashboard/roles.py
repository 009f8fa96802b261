"""Tenant users' roles: admin, editor and viewer, one Group each in every tenant schema.

A role's permissions are derived here from app labels and model names, never
edited in the dashboard: ``roles_ensure()`` rewrites the three groups after
every tenant migration (dashboard.signals), so a model added to a design app
later is covered without anyone touching the role list. Only the exceptions
(records written by the pipeline, credentials) are listed by name.

The staff dashboard's users (the public schema) have no roles; they keep
Django's own users and groups.
"""

import enum

from django.apps import apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission, User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, models, transaction
from django_tenants.utils import get_public_schema_name

from tenants.db import tenant_connection


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    EDITOR = "editor", "Editor"
    VIEWER = "viewer", "Viewer"


ROLE_DESCRIPTIONS = {
    Role.ADMIN: "everything, including users and API keys",
    Role.EDITOR: "designs notifications (event types, rules, templates, subscribers, "
    "integrations, endpoints); reads the logs",
    Role.VIEWER: "reads everything but users; changes nothing",
}


class Area(enum.Enum):
    """What a model is to the people using the dashboard."""

    ACCOUNTS = "accounts"  # who may sign in, and as what
    CREDENTIALS = "credentials"  # API keys and the secrets of the inbox and web push
    DESIGN = "design"  # what tenants build: event types, rules, templates, integrations…
    RECORDS = "records"  # written by the pipeline, read by people: logs, history, rollups


class Access(enum.Enum):
    FULL = "full"  # every permission of the model, its own custom ones included
    VIEW = "view"


ACCOUNT_APPS = frozenset({"auth"})
# Every model of these apps is DESIGN unless it is listed below.
DESIGN_APPS = frozenset({"rules_engine", "channels_delivery"})
RECORD_MODELS = frozenset(
    {
        "rules_engine.event",
        "rules_engine.digestbatch",
        "rules_engine.digestitem",
        "rules_engine.ruleversion",
        "rules_engine.templateversion",
        "channels_delivery.message",
        "channels_delivery.deliveryattempt",
        "channels_delivery.statuscallback",
        "channels_delivery.statsdelta",
        "channels_delivery.statshour",
    }
)
CREDENTIAL_MODELS = frozenset(
    {
        "tenants.apikey",
        "channels_delivery.inboxsettings",
        "channels_delivery.pushsettings",
    }
)

ROLE_ACCESS: dict[Role, dict[Area, Access]] = {
    Role.ADMIN: {
        Area.ACCOUNTS: Access.FULL,
        Area.CREDENTIALS: Access.FULL,
        Area.DESIGN: Access.FULL,
        Area.RECORDS: Access.FULL,
    },
    Role.EDITOR: {
        Area.CREDENTIALS: Access.VIEW,
        Area.DESIGN: Access.FULL,
        Area.RECORDS: Access.VIEW,
    },
    Role.VIEWER: {
        Area.CREDENTIALS: Access.VIEW,
        Area.DESIGN: Access.VIEW,
        Area.RECORDS: Access.VIEW,
    },
}


class UserInputError(ValueError):
    """Bad input to a user or role service; ``field`` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def model_area(*, app_label: str, model_name: str) -> Area | None:
    """The area of a model, or None for models no role reaches (sessions, tenants…)."""
    key = f"{app_label}.{model_name}"
    if app_label in ACCOUNT_APPS:
        return Area.ACCOUNTS
    if key in CREDENTIAL_MODELS:
        return Area.CREDENTIALS
    if key in RECORD_MODELS:
        return Area.RECORDS
    if app_label in DESIGN_APPS:
        return Area.DESIGN
    return None


def role_grants(*, role: Role, app_label: str, model_name: str, codename: str) -> bool:
    area = model_area(app_label=app_label, model_name=model_name)
    access = ROLE_ACCESS[role].get(area) if area is not None else None
    if access is Access.FULL:
        return True
    return access is Access.VIEW and codename == f"view_{model_name}"


def _require_tenant_schema() -> None:
    if tenant_connection.schema_name == get_public_schema_name():
        raise UserInputError(
            "schema", "roles live in tenant schemas; the public schema's staff have none"
        )


@transaction.atomic
def roles_ensure() -> dict[Role, Group]:
    """Create or update the three role groups of the current tenant schema.

    Idempotent. Every installed model's permissions are created first, so a role
    never misses those of a model whose post-migrate step has not run yet.
    """
    _require_tenant_schema()
    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=connection.alias)
    permissions = list(Permission.objects.select_related("content_type"))
    groups = {}
    for role in Role:
        group, _ = Group.objects.get_or_create(name=role.value)
        group.permissions.set(
            [
                permission
                for permission in permissions
                if role_grants(
                    role=role,
                    app_label=permission.content_type.app_label,
                    model_name=permission.content_type.model,
                    codename=permission.codename,
                )
            ]
        )
        groups[role] = group
    return groups


def user_role(user: User) -> Role | None:
    names = [group.name for group in user.groups.all() if group.name in Role.values]
    return Role(names[0]) if len(names) == 1 else None


def user_role_set(*, user: User, role: Role) -> None:
    """Give ``user`` exactly this role (and no other group)."""
    _require_tenant_schema()
    try:
        group = Group.objects.get(name=Role(role).value)
    except Group.DoesNotExist:
        group = roles_ensure()[Role(role)]
    user.groups.set([group])


def user_change_check(*, user: User, acting_user: User, role: Role | None, is_active: bool) -> None:
    """Refuse what would lock the acting admin out of their own dashboard, and an
    admin's change to the tenant's owner (a superuser, who could be locked out).

    ``role`` None leaves the role as it is.
    """
    if user.is_superuser and not acting_user.is_superuser:
        raise UserInputError("user", f"only a superuser can change {user.username}")
    if user.pk != acting_user.pk:
        return
    if role is not None and role != Role.ADMIN and user_role(user) == Role.ADMIN:
        raise UserInputError(
            "role", "you can not remove your own admin role; another admin has to do it"
        )
    if not is_active:
        raise UserInputError("is_active", "you can not deactivate yourself")


def username_clean(email: str) -> str:
    """Tenant users sign in with their email address, compared without case."""
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise UserInputError("email", f"{email!r} is not an email address") from None
    return email


@transaction.atomic
def tenant_user_create(
    *, email: str, password: str, role: Role, first_name: str = "", last_name: str = ""
) -> User:
    """A dashboard user of the current tenant: staff, with exactly one role."""
    _require_tenant_schema()
    username = username_clean(email)
    if role not in Role.values:
        raise UserInputError("role", f"{role!r} is not a role; choose from {Role.values}")
    if User.objects.filter(username__iexact=username).exists():
        raise UserInputError("email", f"a user with the email {username} already exists")
    user = User(
        username=username,
        email=username,
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        is_staff=True,
    )
    try:
        validate_password(password, user)
    except ValidationError as error:
        raise UserInputError("password", " ".join(error.messages)) from None
    user.set_password(password)
    user.save()
    user_role_set(user=user, role=Role(role))
    return user


@transaction.atomic
def tenant_user_update(
    *,
    user: User,
    acting_user: User,
    role: Role,
    is_active: bool,
    first_name: str,
    last_name: str,
) -> User:
    user_change_check(user=user, acting_user=acting_user, role=role, is_active=is_active)
    user.first_name = first_name.strip()
    user.last_name = last_name.strip()
    user.is_active = is_active
    user.is_staff = True
    user.save(update_fields=["first_name", "last_name", "is_active", "is_staff"])
    user_role_set(user=user, role=role)
    return user


def tenant_user_set_active(*, user: User, acting_user: User, is_active: bool) -> User:
    user_change_check(user=user, acting_user=acting_user, role=None, is_active=is_active)
    if user.is_active != is_active:
        user.is_active = is_active
        user.save(update_fields=["is_active"])
    return user
