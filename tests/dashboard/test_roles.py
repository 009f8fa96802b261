"""Tenant users' roles (admin, editor, viewer) on every page of the tenant dashboard.

The page tests iterate ``tenant_admin_site._registry``: a page registered later
is covered (and must be given an area in dashboard.roles) without editing this file.
"""

from collections.abc import Iterator
from typing import Any, TypeAlias

import pytest
from django.apps import apps
from django.contrib.admin import ModelAdmin
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.db import models
from django.http import HttpRequest
from django.test import Client, RequestFactory
from django.urls import NoReverseMatch, reverse
from django_tenants.utils import schema_context, tenant_context

from dashboard.roles import (
    CREDENTIAL_MODELS,
    RECORD_MODELS,
    Area,
    Role,
    UserInputError,
    model_area,
    roles_ensure,
    tenant_user_create,
    tenant_user_set_active,
    tenant_user_update,
    user_role,
)
from dashboard.sites import tenant_admin_site
from rules_engine.services.event_types import event_type_save
from rules_engine.services.rules import rule_create
from rules_engine.services.subscribers import SubscriberProfile, subscriber_upsert
from rules_engine.services.templates import layout_save, template_create
from rules_engine.services.topics import topic_create
from tenants.models import Tenant
from tests.conftest import TENANT_PASSWORD, ApiClient
from tests.factories import api_key_issue

pytestmark = pytest.mark.django_db

OWNER = "admin@alpha.example.com"  # made by tenant_create: a superuser with the admin role
USERS = "/admin/auth/user/"
Entry: TypeAlias = "tuple[type[models.Model], ModelAdmin[Any]]"
REGISTRY: list[Entry] = list(tenant_admin_site._registry.items())


def _model_id(entry: Entry) -> str:
    return entry[0]._meta.label_lower


@pytest.fixture(autouse=True)
def _quick_password_hashing(settings: Any) -> None:
    """Each test signs in several people; PBKDF2 would take most of this file's time.
    The owner's PBKDF2 hash still verifies (the hasher stays in the list)."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]


def login(slug: str, username: str, password: str = TENANT_PASSWORD) -> Client:
    client = Client(HTTP_HOST=f"{slug}.localhost")
    response = client.post("/admin/login/", {"username": username, "password": password})
    assert response.status_code == 302, f"{username} could not sign in on {slug}"
    return client


@pytest.fixture
def people(tenant_a: Tenant) -> dict[Role, User]:
    with tenant_context(tenant_a):
        return {
            role: tenant_user_create(
                email=f"{role.value}.person@alpha.example.com", password=TENANT_PASSWORD, role=role
            )
            for role in Role
        }


@pytest.fixture
def rows(tenant_a: Tenant, api_a: ApiClient, published: list[Any]) -> None:
    """At least one row for every page that can have one without a delivery run."""
    with tenant_context(tenant_a):
        event_type_save(key="order.shipped", sample_payload={"total": 3})
        layout_save(key="brand", html="<html>{{ content }}</html>")
        template_create(
            key="shipped-email",
            channel="email",
            variants={"en": {"subject": "Shipped", "html": "<p>Shipped</p>"}},
            created_by="t",
        )
        rule_create(
            name="Shipped",
            event_type_key="order.shipped",
            condition="",
            actions=[{"channel": "email", "template": "shipped-email"}],
            recipients={"kind": "event"},
            created_by="t",
        )
        subscriber_upsert(profile=SubscriberProfile(external_id="u1", email="u1@example.com"))
        topic_create(key="vip", name="VIP")
    api_key_issue(tenant=tenant_a)
    response = api_a.post(
        "/api/v1/events",
        {"event": "order.shipped", "payload": {"total": 3}, "to": ["u1"]},
        content_type="application/json",
    )
    assert response.status_code in (200, 201, 202), response.content


def area_of(model: type[models.Model]) -> Area | None:
    app_label, _, model_name = model._meta.label_lower.partition(".")
    return model_area(app_label=app_label, model_name=model_name)


def request_as(user: User, tenant: Tenant) -> HttpRequest:
    request = RequestFactory().get("/admin/", HTTP_HOST=f"{tenant.slug}.localhost")
    request.user = user
    request.tenant = tenant  # type: ignore[attr-defined]
    return request


def permissions_of(model_admin: "ModelAdmin[Any]", user: User, tenant: Tenant) -> dict[str, bool]:
    with tenant_context(tenant):
        user = User.objects.get(pk=user.pk)  # no cached permissions
        request = request_as(user, tenant)
        return {
            "view": model_admin.has_view_permission(request),
            "add": model_admin.has_add_permission(request),
            "change": model_admin.has_change_permission(request),
            "delete": model_admin.has_delete_permission(request),
        }


def owner(tenant: Tenant) -> User:
    with tenant_context(tenant):
        return User.objects.get(username=OWNER)


def first_row(model_admin: "ModelAdmin[Any]", tenant: Tenant) -> Any:
    with tenant_context(tenant):
        return model_admin.get_queryset(request_as(owner(tenant), tenant)).first()


def url(model: type[models.Model], view: str, *args: Any) -> str:
    return reverse(
        f"tenant_admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args
    )


def view_only(method: Any) -> bool:
    """An action a viewer may see and run: it declares that it only needs to view."""
    allowed = getattr(method, "allowed_permissions", None) or ()
    return bool(allowed) and all(
        permission == "view" or permission.split(".")[-1].startswith("view_")
        for permission in allowed
    )


def unfold_actions(model_admin: Any, request: HttpRequest, object_id: Any) -> list[Any]:
    found = []
    if hasattr(model_admin, "get_actions_list"):
        found += model_admin.get_actions_list(request)
        found += model_admin.get_actions_row(request)
        found += model_admin.get_actions_detail(request, object_id)
        found += model_admin.get_actions_submit_line(request, object_id)
    return found


# --- the roles themselves ----------------------------------------------------------------


def test_every_tenant_schema_has_the_three_roles(tenant_a: Tenant, tenant_b: Tenant) -> None:
    for tenant in (tenant_a, tenant_b):
        with tenant_context(tenant):
            assert set(Group.objects.values_list("name", flat=True)) >= set(Role.values)
            assert user_role(User.objects.get(username=f"admin@{tenant.slug}.example.com")) == (
                Role.ADMIN
            )
    # Platform staff have no roles.
    assert not Group.objects.filter(name__in=Role.values).exists()


def test_roles_are_refused_in_the_public_schema(db: None) -> None:
    with pytest.raises(UserInputError, match="tenant schemas"):
        roles_ensure()


def _codenames(role: Role) -> set[tuple[str, str]]:
    permissions = Group.objects.get(name=role.value).permissions
    return set(permissions.values_list("content_type__app_label", "codename"))


def test_what_each_role_may_do(in_tenant_a: Tenant) -> None:
    admin, editor, viewer = (
        {f"{app}.{codename}" for app, codename in _codenames(role)} for role in Role
    )
    assert {"auth.add_user", "auth.change_user", "tenants.add_apikey", "tenants.change_apikey"} <= (
        admin
    )
    assert {"rules_engine.change_rule", "rules_engine.delete_template"} <= admin
    assert {
        "rules_engine.add_rule",
        "rules_engine.change_template",
        "rules_engine.delete_layout",
        "rules_engine.change_subscriber",
        "rules_engine.add_topic",
        "channels_delivery.change_integration",
        "channels_delivery.add_webhookendpoint",
        "rules_engine.view_event",
        "channels_delivery.view_message",
        "channels_delivery.view_deliveryattempt",
    } <= editor
    assert not {p for p in editor if p.startswith("auth.")}
    assert not editor & {
        "rules_engine.change_event",
        "channels_delivery.change_message",
        "channels_delivery.delete_deliveryattempt",
        "tenants.add_apikey",
        "tenants.change_apikey",
    }
    assert viewer, "the viewer can see nothing"
    assert all(p.split(".")[1].startswith("view_") for p in viewer)
    assert not {p for p in viewer if p.startswith("auth.")}
    assert {"rules_engine.view_rule", "channels_delivery.view_message"} <= viewer


def test_listed_exceptions_name_real_models() -> None:
    for label in RECORD_MODELS | CREDENTIAL_MODELS:
        apps.get_model(label)  # raises LookupError for a typo or a removed model


def test_roles_ensure_repairs_and_is_idempotent(in_tenant_a: Tenant) -> None:
    editor = Group.objects.get(name=Role.EDITOR.value)
    viewer = Group.objects.get(name=Role.VIEWER.value)
    editor.permissions.remove(Permission.objects.get(codename="change_rule"))
    viewer.permissions.add(Permission.objects.get(codename="delete_rule"))
    Group.objects.filter(name=Role.ADMIN.value).delete()

    roles_ensure()
    first = {role: _codenames(role) for role in Role}
    roles_ensure()

    assert {role: _codenames(role) for role in Role} == first
    assert ("rules_engine", "change_rule") in first[Role.EDITOR]
    assert ("rules_engine", "delete_rule") not in first[Role.VIEWER]
    assert ("auth", "change_user") in first[Role.ADMIN]
    assert Group.objects.filter(name__in=Role.values).count() == len(Role)


def test_migrate_gives_existing_schemas_their_roles(tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        Group.objects.filter(name=Role.VIEWER.value).delete()
        Group.objects.get(name=Role.EDITOR.value).permissions.clear()
    call_command("migrate_schemas", schema_name="alpha", interactive=False, verbosity=0)
    with tenant_context(tenant_a):
        assert Group.objects.get(name=Role.VIEWER.value).permissions.exists()
        assert ("rules_engine", "change_rule") in _codenames(Role.EDITOR)


# --- every page, by role -----------------------------------------------------------------


@pytest.mark.parametrize("entry", REGISTRY, ids=_model_id)
def test_every_page_belongs_to_an_area(entry: Entry) -> None:
    model = entry[0]
    unreached = f"{model._meta.label} is on the tenant dashboard, but no role reaches it"
    assert area_of(model) is not None, f"{unreached}: give it an area in dashboard.roles"


@pytest.mark.parametrize("entry", REGISTRY, ids=_model_id)
def test_viewer_reads_and_changes_nothing(
    entry: Entry,
    tenant_a: Tenant,
    people: dict[Role, User],
    rows: None,
) -> None:
    model, model_admin = entry
    client = login("alpha", people[Role.VIEWER].username)
    row = first_row(model_admin, tenant_a)
    object_id = str(row.pk) if row is not None else "0"
    area = area_of(model)

    listing = client.get(url(model, "changelist"))
    if area is Area.ACCOUNTS:
        assert listing.status_code == 403
        assert client.get(url(model, "change", object_id)).status_code == 403
    else:
        assert listing.status_code == 200
        assert listing.context["has_add_permission"] is False
        assert f'href="{url(model, "add")}"' not in listing.content.decode()
        request = listing.wsgi_request
        with tenant_context(tenant_a):
            actions = model_admin.get_actions(request)
            visible = unfold_actions(model_admin, request, object_id)
        changing = [name for name, found in actions.items() if found and not view_only(found[0])]
        assert not changing, f"a viewer is offered {changing}"
        undeclared = [a.action_name for a in visible if not view_only(a.method)]
        assert not undeclared, f"a viewer is offered {undeclared}"
        if row is not None:
            page = client.get(url(model, "change", object_id))
            assert page.status_code == 200
            assert page.context["has_change_permission"] is False
            assert page.context["has_delete_permission"] is False
            assert 'name="_save"' not in page.content.decode()

    assert client.get(url(model, "add")).status_code == 403
    assert client.post(url(model, "add"), {}).status_code == 403
    assert client.post(url(model, "change", object_id), {"_save": "Save"}).status_code == 403
    assert client.get(url(model, "delete", object_id)).status_code == 403
    assert client.post(url(model, "delete", object_id), {"post": "yes"}).status_code == 403
    # The actions the viewer is not offered refuse it when called by their URL.
    with tenant_context(tenant_a):
        every = unfold_actions(model_admin, request_as(owner(tenant_a), tenant_a), object_id)
    for unfold_action in every:
        if view_only(unfold_action.method):
            continue
        for args in ((), (object_id,)):
            try:
                path = reverse(f"tenant_admin:{unfold_action.action_name}", args=args)
            except NoReverseMatch:
                continue
            assert client.post(path).status_code == 403, path
    if row is not None:
        with tenant_context(tenant_a):
            assert (
                model_admin.get_queryset(request_as(owner(tenant_a), tenant_a))
                .filter(pk=row.pk)
                .exists()
            )


@pytest.mark.parametrize("entry", REGISTRY, ids=_model_id)
def test_editor_designs_but_only_reads_logs_and_keys(
    entry: Entry,
    tenant_a: Tenant,
    people: dict[Role, User],
) -> None:
    model, model_admin = entry
    area = area_of(model)
    editor = permissions_of(model_admin, people[Role.EDITOR], tenant_a)
    superuser = permissions_of(model_admin, owner(tenant_a), tenant_a)
    client = login("alpha", people[Role.EDITOR].username)
    if area is Area.ACCOUNTS:
        assert editor == dict.fromkeys(editor, False)
        assert client.get(url(model, "changelist")).status_code == 403
    elif area is Area.DESIGN:
        assert editor == superuser
        assert client.get(url(model, "changelist")).status_code == 200
    else:
        assert editor == {"view": superuser["view"], "add": False, "change": False, "delete": False}
        assert client.get(url(model, "changelist")).status_code == 200


@pytest.mark.parametrize("entry", REGISTRY, ids=_model_id)
def test_admin_role_may_do_what_the_owner_may(
    entry: Entry,
    tenant_a: Tenant,
    people: dict[Role, User],
) -> None:
    model, model_admin = entry
    admin = people[Role.ADMIN]
    assert not admin.is_superuser
    assert permissions_of(model_admin, admin, tenant_a) == permissions_of(
        model_admin, owner(tenant_a), tenant_a
    )
    client = login("alpha", admin.username)
    assert client.get(url(model, "changelist")).status_code == 200
    if permissions_of(model_admin, admin, tenant_a)["add"]:
        assert client.get(url(model, "add")).status_code == 200


def test_editor_saves_a_design_model(tenant_a: Tenant, people: dict[Role, User]) -> None:
    client = login("alpha", people[Role.EDITOR].username)
    response = client.post(
        "/admin/rules_engine/layout/add/",
        {"key": "by-editor", "name": "By editor", "html": "<b>{{ content }}</b>", "text": ""},
    )
    assert response.status_code == 302, response.content
    viewer = login("alpha", people[Role.VIEWER].username)
    assert (
        viewer.post(
            "/admin/rules_engine/layout/add/",
            {"key": "by-viewer", "name": "By viewer", "html": "<b>{{ content }}</b>", "text": ""},
        ).status_code
        == 403
    )
    with tenant_context(tenant_a):
        from rules_engine.models import Layout

        assert set(Layout.objects.values_list("key", flat=True)) == {"by-editor"}


# --- the Users page ----------------------------------------------------------------------


def user_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "username": "New.Person@Alpha.example.com",
        "role": Role.EDITOR.value,
        "password1": TENANT_PASSWORD,
        "password2": TENANT_PASSWORD,
        "_save": "Save",
    }
    data.update(overrides)
    return data


def change_form(user: User, **overrides: Any) -> dict[str, Any]:
    data = {
        "first_name": user.first_name,
        "last_name": user.last_name,
        "role": (user_role(user) or Role.VIEWER).value,
        "is_active": "on" if user.is_active else "",
        "_save": "Save",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value != ""}


@pytest.fixture
def admin_client(people: dict[Role, User]) -> Client:
    return login("alpha", people[Role.ADMIN].username)


def test_admin_creates_a_user_with_a_role(tenant_a: Tenant, admin_client: Client) -> None:
    page = admin_client.get(f"{USERS}add/")
    assert page.status_code == 200
    fields = set(page.context["adminform"].form.fields)
    assert fields == {"username", "role", "password1", "password2"}

    response = admin_client.post(f"{USERS}add/", user_form())
    assert response.status_code == 302, response.context["adminform"].form.errors
    with tenant_context(tenant_a):
        user = User.objects.get(username="new.person@alpha.example.com")
        assert user.email == user.username
        assert user.is_staff
        assert user.is_active
        assert not user.is_superuser
        assert user_role(user) == Role.EDITOR
        assert [g.name for g in user.groups.all()] == [Role.EDITOR.value]

    editor = login("alpha", "new.person@alpha.example.com")
    assert editor.get("/admin/rules_engine/rule/").status_code == 200
    assert editor.get(USERS).status_code == 403


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"username": "not-an-email"}, "username"),
        ({"username": "EDITOR.Person@alpha.example.com"}, "username"),  # taken, in another case
        ({"role": ""}, "role"),
        ({"role": "owner"}, "role"),
        ({"password2": "something-else-entirely-7"}, "password2"),
        ({"password1": "123", "password2": "123"}, "password2"),
    ],
)
def test_bad_new_users_are_refused_at_their_field(
    tenant_a: Tenant, admin_client: Client, overrides: dict[str, str], field: str
) -> None:
    response = admin_client.post(f"{USERS}add/", user_form(**overrides))
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    with tenant_context(tenant_a):
        assert User.objects.count() == 4  # the owner and the three people


def test_admin_changes_a_role_and_deactivates(
    tenant_a: Tenant, admin_client: Client, people: dict[Role, User]
) -> None:
    editor = people[Role.EDITOR]
    page = admin_client.get(f"{USERS}{editor.pk}/change/")
    fields = set(page.context["adminform"].form.fields)
    assert {"role", "is_active"} <= fields
    assert not fields & {"groups", "user_permissions", "is_superuser", "is_staff"}
    assert "is_superuser" not in page.content.decode()

    response = admin_client.post(
        f"{USERS}{editor.pk}/change/", change_form(editor, role=Role.VIEWER.value)
    )
    assert response.status_code == 302
    with tenant_context(tenant_a):
        assert user_role(User.objects.get(pk=editor.pk)) == Role.VIEWER

    response = admin_client.post(f"{USERS}{editor.pk}/change/", change_form(editor, is_active=""))
    assert response.status_code == 302
    with tenant_context(tenant_a):
        assert not User.objects.get(pk=editor.pk).is_active
    refused = Client(HTTP_HOST="alpha.localhost").post(
        "/admin/login/", {"username": editor.username, "password": TENANT_PASSWORD}
    )
    assert refused.status_code == 200


def test_admin_can_not_demote_or_deactivate_themself(
    tenant_a: Tenant, admin_client: Client, people: dict[Role, User]
) -> None:
    admin = people[Role.ADMIN]
    page = f"{USERS}{admin.pk}/change/"
    response = admin_client.post(page, change_form(admin, role=Role.EDITOR.value))
    assert response.status_code == 200
    assert "you can not remove your own admin role" in str(
        response.context["adminform"].form.errors["role"]
    )
    response = admin_client.post(page, change_form(admin, is_active=""))
    assert response.status_code == 200
    assert "you can not deactivate yourself" in str(
        response.context["adminform"].form.errors["is_active"]
    )
    # Nor through the list's action, while the others in the selection are deactivated.
    response = admin_client.post(
        USERS,
        {"action": "deactivate", "_selected_action": [admin.pk, people[Role.VIEWER].pk]},
        follow=True,
    )
    assert "you can not deactivate yourself" in response.content.decode()
    with tenant_context(tenant_a):
        admin.refresh_from_db()
        assert admin.is_active
        assert user_role(admin) == Role.ADMIN
        assert not User.objects.get(pk=people[Role.VIEWER].pk).is_active


def test_services_refuse_self_demotion(in_tenant_a: Tenant, people: dict[Role, User]) -> None:
    admin = people[Role.ADMIN]
    with pytest.raises(UserInputError, match="own admin role") as error:
        tenant_user_update(
            user=admin,
            acting_user=admin,
            role=Role.VIEWER,
            is_active=True,
            first_name="",
            last_name="",
        )
    assert error.value.field == "role"
    with pytest.raises(UserInputError, match="deactivate yourself"):
        tenant_user_set_active(user=admin, acting_user=admin, is_active=False)
    # Another admin may.
    other = people[Role.EDITOR]
    tenant_user_update(
        user=admin, acting_user=other, role=Role.VIEWER, is_active=True, first_name="", last_name=""
    )
    assert user_role(admin) == Role.VIEWER
    # Nobody but a superuser changes the owner.
    the_owner = User.objects.get(username=OWNER)
    with pytest.raises(UserInputError, match="only a superuser") as error:
        tenant_user_set_active(user=the_owner, acting_user=other, is_active=False)
    assert error.value.field == "user"
    the_owner.refresh_from_db()
    assert the_owner.is_active


def test_users_are_not_deleted_and_the_owner_is_changed_only_by_a_superuser(
    tenant_a: Tenant, admin_client: Client, people: dict[Role, User]
) -> None:
    viewer = people[Role.VIEWER]
    assert admin_client.get(f"{USERS}{viewer.pk}/delete/").status_code == 403
    the_owner = owner(tenant_a)
    page = admin_client.get(f"{USERS}{the_owner.pk}/change/")
    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    response = admin_client.post(
        f"{USERS}{the_owner.pk}/change/", change_form(the_owner, role=Role.VIEWER.value)
    )
    assert response.status_code == 403
    assert admin_client.post(f"{USERS}{the_owner.pk}/password/", {}).status_code == 403
    with tenant_context(tenant_a):
        assert user_role(User.objects.get(pk=the_owner.pk)) == Role.ADMIN
    # The owner sees who is a superuser; it is not editable here.
    owner_client = login("alpha", OWNER)
    page = owner_client.get(f"{USERS}{viewer.pk}/change/")
    assert "is_superuser" not in page.context["adminform"].form.fields
    assert "Superuser status" in page.content.decode()


def test_roles_page_is_read_only(admin_client: Client, tenant_a: Tenant) -> None:
    listing = admin_client.get("/admin/auth/group/")
    assert listing.status_code == 200
    assert {group.name for group in listing.context["cl"].result_list} == set(Role.values)
    with tenant_context(tenant_a):
        editor = Group.objects.get(name=Role.EDITOR.value)
    assert admin_client.get(f"/admin/auth/group/{editor.pk}/change/").status_code == 200
    assert (
        admin_client.post(f"/admin/auth/group/{editor.pk}/change/", {"name": "hacked"}).status_code
        == 403
    )
    assert admin_client.get("/admin/auth/group/add/").status_code == 403


def test_staff_users_page_is_unchanged(client: Client, db: None) -> None:
    User.objects.create_superuser(username="ops", password=TENANT_PASSWORD)
    assert client.login(username="ops", password=TENANT_PASSWORD)
    page = client.get("/admin/auth/user/add/", HTTP_HOST="localhost")
    assert page.status_code == 200
    assert "role" not in page.context["adminform"].form.fields
    ops = User.objects.get(username="ops")
    page = client.get(f"/admin/auth/user/{ops.pk}/change/", HTTP_HOST="localhost")
    assert {"groups", "user_permissions", "is_superuser"} <= set(
        page.context["adminform"].form.fields
    )


# --- across tenants and the staff admin -------------------------------------------------


@pytest.fixture
def beta_only(tenant_b: Tenant) -> Iterator[User]:
    with tenant_context(tenant_b):
        yield tenant_user_create(
            email="only@beta.example.com", password=TENANT_PASSWORD, role=Role.ADMIN
        )


def test_a_tenant_user_can_not_sign_in_elsewhere(people: dict[Role, User], beta_only: User) -> None:
    for username in (OWNER, people[Role.ADMIN].username):
        for host in ("beta.localhost", "localhost"):
            response = Client(HTTP_HOST=host).post(
                "/admin/login/", {"username": username, "password": TENANT_PASSWORD}
            )
            assert response.status_code == 200, f"{username} signed in on {host}"
            assert "_auth_user_id" not in response.wsgi_request.session
    login("beta", "only@beta.example.com")
    refused = Client(HTTP_HOST="alpha.localhost").post(
        "/admin/login/", {"username": "only@beta.example.com", "password": TENANT_PASSWORD}
    )
    assert refused.status_code == 200


def test_a_session_of_one_tenant_is_nothing_on_another_host(
    tenant_b: Tenant, people: dict[Role, User], beta_only: User
) -> None:
    client = login("alpha", people[Role.ADMIN].username)
    assert client.get("/admin/rules_engine/rule/").status_code == 200
    # The same cookie sent to beta's host and the staff host (a test client sends
    # it everywhere): each schema has its own sessions.
    for host in ("beta.localhost", "localhost"):
        for path in ("/admin/", USERS, "/admin/rules_engine/rule/"):
            response = client.get(path, HTTP_HOST=host)
            assert response.status_code == 302, f"{host}{path}"
            assert "/admin/login/" in response["Location"]


def test_staff_can_not_sign_in_on_a_tenant_host(db: None, tenant_a: Tenant) -> None:
    User.objects.create_superuser(username="ops", password=TENANT_PASSWORD)
    response = Client(HTTP_HOST="alpha.localhost").post(
        "/admin/login/", {"username": "ops", "password": TENANT_PASSWORD}
    )
    assert response.status_code == 200
    with schema_context("alpha"):
        assert not User.objects.filter(username="ops").exists()
