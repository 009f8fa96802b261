"""The operator commands around the provisioning services, and the demo setup."""

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django_tenants.utils import schema_context, schema_exists

from tenants.demo import demo_ensure
from tenants.models import ApiKey, Tenant

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_tenant_create_command_prints_dashboard_and_password_once() -> None:
    output = run("tenant_create", "--slug", "acme", "--name", "Acme", "--admin-email", "a@acme.io")
    assert "http://acme.localhost/admin/" in output
    password = output.split("password: ")[1].split()[0]
    with schema_context("acme"):
        assert User.objects.get(username="a@acme.io").check_password(password)


def test_tenant_create_command_reports_bad_slug_and_creates_nothing() -> None:
    with pytest.raises(CommandError, match="reserved"):
        run("tenant_create", "--slug", "www", "--name", "W", "--admin-email", "w@example.com")
    with pytest.raises(CommandError, match="no plan named 'Gold'"):
        run(
            "tenant_create", "--slug", "gold", "--name", "G", "--admin-email", "g@example.com",
            "--plan", "Gold",
        )  # fmt: skip
    assert not schema_exists("gold")


def test_api_key_commands_issue_list_and_revoke(tenant_a: Tenant) -> None:
    output = run(
        "api_key_create", "--tenant", "alpha", "--name", "ci",
        "--scope", "events:write", "--scope", "messages:read",
    )  # fmt: skip
    token = output.split("token: ")[1].split()[0]
    api_key = ApiKey.objects.get(tenant=tenant_a, name="ci")
    assert sorted(api_key.scopes) == ["events:write", "messages:read"]

    listing = run("api_key_list", "--tenant", "alpha")
    assert api_key.prefix in listing
    assert token not in listing
    assert "active" in listing

    assert "Revoked" in run("api_key_revoke", "--tenant", "alpha", api_key.prefix)
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert "already revoked" in run("api_key_revoke", "--tenant", "alpha", str(api_key.pk))


def test_api_key_commands_refuse_unknown_tenant_and_key(tenant_a: Tenant) -> None:
    with pytest.raises(CommandError, match="no tenant with slug 'nope'"):
        run("api_key_create", "--tenant", "nope", "--name", "x")
    with pytest.raises(CommandError, match="no key"):
        run("api_key_revoke", "--tenant", "alpha", "hk_test_missing1")


def test_a_key_can_not_be_revoked_through_another_tenant(
    tenant_a: Tenant, tenant_b: Tenant
) -> None:
    run("api_key_create", "--tenant", "alpha", "--name", "mine")
    api_key = ApiKey.objects.get(tenant=tenant_a, name="mine")
    with pytest.raises(CommandError, match="no key"):
        run("api_key_revoke", "--tenant", "beta", str(api_key.pk))
    api_key.refresh_from_db()
    assert api_key.revoked_at is None


def test_demo_is_idempotent_and_says_so(tmp_path: Path, settings: Any) -> None:
    settings.HERALD_DATA_DIR = tmp_path
    first = demo_ensure()
    assert "created tenant 'demo'" in " ".join(first.notes)
    second = demo_ensure()
    assert second.notes == [
        "reusing tenant 'demo'",
        "reusing platform staff user 'staff'",
        f"reusing demo API key {first.api_key[:16]}…",
    ]
    assert (second.api_key, second.admin_password, second.staff_password) == (
        first.api_key,
        first.admin_password,
        first.staff_password,
    )
    assert Tenant.objects.filter(slug="demo").count() == 1
    assert ApiKey.objects.filter(tenant__slug="demo").count() == 1
    with schema_context("demo"):
        assert User.objects.get(username=first.admin_username).check_password(first.admin_password)
    assert User.objects.get(username="staff").check_password(first.staff_password)


def test_demo_issues_a_new_key_when_the_old_one_was_revoked(tmp_path: Path, settings: Any) -> None:
    settings.HERALD_DATA_DIR = tmp_path
    first = demo_ensure()
    ApiKey.objects.filter(tenant__slug="demo").update(revoked_at="2026-01-01T00:00:00Z")
    second = demo_ensure()
    assert "issued a new demo API key" in second.notes
    assert second.api_key != first.api_key


def test_platform_init_registers_staff_hostnames_idempotently() -> None:
    from tenants.models import Domain

    for _ in range(2):
        output = run("platform_init", "--domain", "ops.example.com")
    assert "localhost, ops.example.com" in output
    public = Tenant.objects.get(schema_name="public")
    assert set(Domain.objects.filter(tenant=public).values_list("domain", flat=True)) >= {
        "localhost",
        "ops.example.com",
    }


def test_api_key_revoke_accepts_the_prefix_as_listed(tenant_a: Tenant) -> None:
    run("api_key_create", "--tenant", "alpha", "--name", "listed")
    api_key = ApiKey.objects.get(tenant=tenant_a, name="listed")
    assert "Revoked" in run("api_key_revoke", "--tenant", "alpha", f"{api_key.prefix}…")


def test_demo_revokes_a_key_it_can_no_longer_print(tmp_path: Path, settings: Any) -> None:
    settings.HERALD_DATA_DIR = tmp_path
    first = demo_ensure()
    (tmp_path / "demo.json").unlink()
    demo_ensure()
    old = ApiKey.objects.get(tenant__slug="demo", prefix=first.api_key[:16])
    assert old.revoked_at is not None
    assert ApiKey.objects.filter(tenant__slug="demo", revoked_at=None).count() == 1
