"""Integrations: validated through their provider, secrets encrypted at rest and
write-only, key rotation, send order, and tenant isolation."""

import logging
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django import forms
from django.core.management import CommandError, call_command
from django.db import connection
from django_tenants.utils import tenant_context

from channels_delivery.crypto import SecretsUnreadable, secrets_rotate
from channels_delivery.models import Integration
from channels_delivery.providers.base import ConfigInvalid
from channels_delivery.services.integrations import (
    integration_config,
    integration_create,
    integration_secret_fields_set,
    integration_update,
    integrations_for,
)
from tenants.models import Tenant

PASSWORD = "hunter2-smtp-secret-value"
KEY_OLD = Fernet.generate_key().decode()
KEY_NEW = Fernet.generate_key().decode()


def smtp_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "host": "smtp.acme.example",
        "port": 587,
        "security": "starttls",
        "username": "mailer",
        "password": PASSWORD,
        "from_email": "no-reply@acme.example",
    }
    fields.update(overrides)
    return fields


def create_smtp(name: str = "Primary SMTP", **kwargs: Any) -> Integration:
    return integration_create(
        channel="email", provider="smtp", name=name, config=smtp_fields(), **kwargs
    )


def raw_secrets_column(integration: Integration) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT secrets FROM channels_delivery_integration WHERE id = %s", [integration.pk]
        )
        return str(cursor.fetchone()[0])


@pytest.fixture
def old_key_only(settings: Any) -> Any:
    settings.HERALD_ENCRYPTION_KEYS = [KEY_OLD]
    return settings


# --- create, read, update --------------------------------------------------------


def test_create_keeps_secrets_out_of_config_and_encrypted_at_rest(in_tenant_a: Tenant) -> None:
    integration = create_smtp()
    integration.refresh_from_db()

    assert "password" not in integration.config
    assert integration.config["host"] == "smtp.acme.example"
    stored = raw_secrets_column(integration)
    assert stored
    assert PASSWORD not in stored
    assert "password" not in stored
    assert integration_config(integration=integration)["password"] == PASSWORD
    assert integration_secret_fields_set(integration=integration) == ["password"]


def test_update_without_a_secret_keeps_the_stored_one(in_tenant_a: Tenant) -> None:
    integration = create_smtp()
    without = {key: value for key, value in smtp_fields().items() if key != "password"}

    integration_update(integration=integration, config={**without, "port": 2525})
    integration.refresh_from_db()
    assert integration.config["port"] == 2525
    assert integration_config(integration=integration)["password"] == PASSWORD

    integration_update(integration=integration, config=smtp_fields(password=""))
    integration.refresh_from_db()
    assert integration_config(integration=integration)["password"] == PASSWORD

    integration_update(integration=integration, config=smtp_fields(password="new-secret"))
    integration.refresh_from_db()
    assert integration_config(integration=integration)["password"] == "new-secret"


def test_update_can_clear_a_secret_explicitly(in_tenant_a: Tenant) -> None:
    integration = create_smtp()
    integration_update(integration=integration, config=smtp_fields(username="", password=None))
    integration.refresh_from_db()
    assert integration.secrets == ""
    assert integration_config(integration=integration)["username"] == ""
    assert "password" not in integration_config(integration=integration)


def test_update_validates_the_merged_config(in_tenant_a: Tenant) -> None:
    integration = create_smtp()
    with pytest.raises(ConfigInvalid) as invalid:
        integration_update(integration=integration, config=smtp_fields(port="twenty-five"))
    assert set(invalid.value.errors) == {"port"}
    integration.refresh_from_db()
    assert integration.config["port"] == 587


def test_update_of_name_priority_and_enabled_only(in_tenant_a: Tenant) -> None:
    integration = create_smtp()
    integration_update(integration=integration, name="Renamed", priority=5, enabled=False)
    integration.refresh_from_db()
    assert (integration.name, integration.priority, integration.enabled) == ("Renamed", 5, False)
    assert integration_config(integration=integration)["password"] == PASSWORD


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"channel": "fax"}, "channel", "unknown channel 'fax'"),
        ({"provider": "pigeon"}, "provider", "no provider 'pigeon' for the email channel"),
        ({"name": "  "}, "name", "required"),
        ({"priority": "first"}, "priority", "must be an integer"),
        ({"config": smtp_fields(security="tls")}, "security", "one of none, starttls, ssl"),
    ],
)
def test_create_refuses_bad_input_naming_the_field(
    in_tenant_a: Tenant, kwargs: dict[str, Any], field: str, message: str
) -> None:
    arguments: dict[str, Any] = {
        "channel": "email",
        "provider": "smtp",
        "name": "SMTP",
        "config": smtp_fields(),
        **kwargs,
    }
    with pytest.raises(ConfigInvalid) as invalid:
        integration_create(**arguments)
    assert message in invalid.value.errors[field]
    assert not Integration.objects.exists()


def test_duplicate_name_on_a_channel_is_refused(in_tenant_a: Tenant) -> None:
    create_smtp()
    with pytest.raises(ConfigInvalid, match="exists on this channel"):
        create_smtp()
    assert Integration.objects.count() == 1


def test_integrations_for_is_enabled_only_in_priority_order(in_tenant_a: Tenant) -> None:
    fallback = create_smtp("Fallback", priority=10)
    primary = create_smtp("Primary", priority=1)
    create_smtp("Disabled", priority=0, enabled=False)
    integration_create(
        channel="email",
        provider="console",
        name="Dev",
        config={"from_email": "dev@acme.example"},
        priority=20,
    )

    assert [i.name for i in integrations_for(channel="email")] == [
        primary.name,
        fallback.name,
        "Dev",
    ]
    assert integrations_for(channel="sms") == []


def test_integrations_are_invisible_to_other_tenants(tenant_a: Tenant, tenant_b: Tenant) -> None:
    with tenant_context(tenant_a):
        create_smtp("Alpha SMTP")
        assert [i.name for i in integrations_for(channel="email")] == ["Alpha SMTP"]
    with tenant_context(tenant_b):
        assert integrations_for(channel="email") == []
        assert not Integration.objects.filter(name="Alpha SMTP").exists()
        create_smtp("Alpha SMTP")  # the same name is free in another tenant
        assert Integration.objects.count() == 1


# --- secrets stay secret -----------------------------------------------------------


def test_secrets_never_appear_in_repr_str_forms_or_logs(
    in_tenant_a: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    integration = create_smtp()
    integration_update(integration=integration, config=smtp_fields(password="rotated-pw-value"))
    integration_config(integration=integration)

    for shown in (repr(integration), str(integration)):
        assert PASSWORD not in shown
        assert "rotated-pw-value" not in shown
        assert integration.secrets not in shown
    assert PASSWORD not in caplog.text
    assert "rotated-pw-value" not in caplog.text
    assert integration.secrets not in caplog.text
    # No model form (the admin builds its forms this way) can show or set them.
    form_class = forms.modelform_factory(Integration, fields="__all__")
    assert "secrets" not in form_class().fields
    assert "secrets" not in form_class(instance=integration).as_div()


# --- encryption keys and rotation ------------------------------------------------------


def test_old_key_second_still_decrypts_and_rotation_moves_to_the_new_key(
    in_tenant_a: Tenant, old_key_only: Any
) -> None:
    integration = create_smtp()
    written_with_old = raw_secrets_column(integration)
    Fernet(KEY_OLD.encode()).decrypt(written_with_old.encode())

    old_key_only.HERALD_ENCRYPTION_KEYS = [KEY_NEW, KEY_OLD]
    integration.refresh_from_db()
    assert integration_config(integration=integration)["password"] == PASSWORD

    counts = secrets_rotate()
    assert (counts.rotated, counts.unreadable) == (1, 0)
    rotated = raw_secrets_column(integration)
    assert rotated != written_with_old
    Fernet(KEY_NEW.encode()).decrypt(rotated.encode())
    with pytest.raises(InvalidToken):
        Fernet(KEY_OLD.encode()).decrypt(rotated.encode())

    old_key_only.HERALD_ENCRYPTION_KEYS = [KEY_NEW]
    integration.refresh_from_db()
    assert integration_config(integration=integration)["password"] == PASSWORD


def test_secrets_under_a_removed_key_are_reported_not_garbled(
    in_tenant_a: Tenant, old_key_only: Any
) -> None:
    integration = create_smtp()
    old_key_only.HERALD_ENCRYPTION_KEYS = [KEY_NEW]
    integration.refresh_from_db()
    with pytest.raises(SecretsUnreadable, match="HERALD_ENCRYPTION_KEYS"):
        integration_config(integration=integration)
    counts = secrets_rotate()
    assert (counts.rotated, counts.unreadable) == (0, 1)
    assert raw_secrets_column(integration) == integration.secrets  # left as it was


def test_rotate_command_runs_in_every_tenant(
    tenant_a: Tenant, tenant_b: Tenant, old_key_only: Any
) -> None:
    with tenant_context(tenant_a):
        create_smtp("One")
        create_smtp("Two")
        integration_create(
            channel="email", provider="console", name="Dev", config={"from_email": "d@a.example"}
        )  # no secrets: nothing to rotate
    with tenant_context(tenant_b):
        create_smtp("Beta")
    old_key_only.HERALD_ENCRYPTION_KEYS = [KEY_NEW, KEY_OLD]

    out = StringIO()
    call_command("integrations_rotate_keys", stdout=out)

    lines = out.getvalue().splitlines()
    assert "alpha: 2 rotated" in lines
    assert "beta: 1 rotated" in lines
    assert lines[-1].startswith("total: ")
    old_key_only.HERALD_ENCRYPTION_KEYS = [KEY_NEW]
    with tenant_context(tenant_b):
        beta = Integration.objects.get(name="Beta")
        assert integration_config(integration=beta)["password"] == PASSWORD


def test_rotate_command_fails_when_secrets_are_unreadable(
    tenant_a: Tenant, old_key_only: Any
) -> None:
    with tenant_context(tenant_a):
        create_smtp()
    old_key_only.HERALD_ENCRYPTION_KEYS = [KEY_NEW]
    out = StringIO()
    with pytest.raises(CommandError, match="no configured key decrypts"):
        call_command("integrations_rotate_keys", stdout=out)
    assert "alpha: 0 rotated, 1 UNREADABLE" in out.getvalue()


def test_rotation_covers_every_stored_secret(in_tenant_a: Tenant, old_key_only: Any) -> None:
    """Integrations, webhook endpoints and the inbox secret: an old key can be
    removed once rotation reports nothing unreadable."""
    from channels_delivery.crypto import secrets_decrypt, secrets_encrypt
    from channels_delivery.inbox_auth import inbox_secret_get
    from channels_delivery.models import InboxSettings, WebhookEndpoint

    create_smtp()
    endpoint = WebhookEndpoint.objects.create(
        url="https://hooks.example.com/in",
        secrets=secrets_encrypt(values={"current": "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0"}),
    )
    inbox = inbox_secret_get()
    old_key_only.HERALD_ENCRYPTION_KEYS = [KEY_NEW, KEY_OLD]

    counts = secrets_rotate()
    assert (counts.rotated, counts.unreadable) == (3, 0)

    old_key_only.HERALD_ENCRYPTION_KEYS = [KEY_NEW]
    endpoint.refresh_from_db()
    assert secrets_decrypt(token=endpoint.secrets)["current"].startswith("whsec_")
    assert secrets_decrypt(token=InboxSettings.objects.get().secret)["secret"] == inbox.secret
