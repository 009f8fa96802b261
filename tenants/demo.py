"""The demo installation `make run` sets up: idempotent, and honest about reuse.

Passwords and the demo API key can not be read back from the database (only
hashes are stored), so the demo keeps them in ``<HERALD_DATA_DIR>/demo.json``
(mode 600) to print them again on the next run. This is for a developer's
machine only; production tenants are created with `herald tenant_create`.
"""

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django_tenants.utils import schema_context

from dashboard.roles import Role, user_role_set
from tenants.authentication import token_hash
from tenants.models import ApiKey, ApiScope, Tenant
from tenants.services import (
    api_key_create,
    api_key_revoke,
    public_tenant_ensure,
    tenant_create,
)

DEMO_SLUG = "demo"
DEMO_ADMIN_EMAIL = "admin@demo.example.com"
STAFF_USERNAME = "staff"


@dataclass(frozen=True, kw_only=True)
class DemoInstallation:
    tenant: Tenant
    admin_username: str
    admin_password: str
    staff_username: str
    staff_password: str
    api_key: str
    notes: list[str]


def _credentials_path() -> Path:
    return Path(settings.HERALD_DATA_DIR) / "demo.json"


def _load_credentials() -> dict[str, str]:
    path = _credentials_path()
    if not path.exists():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _save_credentials(credentials: dict[str, str]) -> None:
    path = _credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(credentials, handle, indent=2)


def demo_ensure() -> DemoInstallation:
    notes: list[str] = []
    credentials = _load_credentials()
    public_tenant_ensure(
        domains=[settings.HERALD_BASE_DOMAIN, "localhost", "127.0.0.1"],
    )

    tenant = Tenant.objects.filter(slug=DEMO_SLUG).first()
    if tenant is None:
        password = credentials.get("admin_password") or secrets.token_urlsafe(12)
        created = tenant_create(
            slug=DEMO_SLUG,
            name="Demo",
            admin_email=DEMO_ADMIN_EMAIL,
            admin_password=password,
        )
        tenant = created.tenant
        credentials["admin_password"] = password
        notes.append(f"created tenant '{DEMO_SLUG}' and its admin {DEMO_ADMIN_EMAIL}")
    else:
        notes.append(f"reusing tenant '{DEMO_SLUG}'")
        with schema_context(tenant.schema_name):
            admin = User.objects.filter(username=DEMO_ADMIN_EMAIL).first()
            if admin is None or "admin_password" not in credentials:
                credentials["admin_password"] = secrets.token_urlsafe(12)
                admin = admin or User(username=DEMO_ADMIN_EMAIL, email=DEMO_ADMIN_EMAIL)
                admin.is_staff = admin.is_superuser = True
                admin.set_password(credentials["admin_password"])
                admin.save()
                user_role_set(user=admin, role=Role.ADMIN)
                notes.append(f"reset the password of {DEMO_ADMIN_EMAIL} (it was not on record)")

    staff = User.objects.filter(username=STAFF_USERNAME).first()
    if staff is None or "staff_password" not in credentials:
        credentials["staff_password"] = credentials.get("staff_password") or secrets.token_urlsafe(
            12
        )
        staff = staff or User(username=STAFF_USERNAME, email="staff@example.com")
        staff.is_staff = staff.is_superuser = True
        staff.set_password(credentials["staff_password"])
        staff.save()
        notes.append(f"set up platform staff user '{STAFF_USERNAME}'")
    else:
        notes.append(f"reusing platform staff user '{STAFF_USERNAME}'")

    token = credentials.get("api_key", "")
    live_key = (
        ApiKey.objects.filter(tenant=tenant, key_hash=token_hash(token), revoked_at=None).first()
        if token
        else None
    )
    if live_key is None:
        # A key we can no longer print is a key nobody should hold: revoke it.
        for stale in ApiKey.objects.filter(tenant=tenant, name="demo", revoked_at=None):
            api_key_revoke(api_key=stale)
        token = api_key_create(tenant=tenant, name="demo", scopes=[ApiScope.ADMIN]).token
        credentials["api_key"] = token
        notes.append("issued a new demo API key")
    else:
        notes.append(f"reusing demo API key {live_key.prefix}…")

    _save_credentials(credentials)
    return DemoInstallation(
        tenant=tenant,
        admin_username=DEMO_ADMIN_EMAIL,
        admin_password=credentials["admin_password"],
        staff_username=STAFF_USERNAME,
        staff_password=credentials["staff_password"],
        api_key=token,
        notes=notes,
    )
