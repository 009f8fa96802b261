"""An integration's "Send test": a fixed message through that integration, sent
by the real delivery path to a local SMTP server."""

from collections.abc import Iterator
from typing import Any

import pytest
from django_tenants.utils import tenant_context

from channels_delivery.models import Integration, Message
from channels_delivery.services.delivery import message_deliver
from channels_delivery.services.integrations import integration_create
from tenants.models import Tenant
from tests.channels_delivery.conftest import Published
from tests.channels_delivery.test_email_provider import Sink, start_server
from tests.dashboard.test_rules_admin import admin_client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> Published:
    from channels_delivery.services import dispatch

    sent = Published()
    monkeypatch.setattr(dispatch, "publish_to_delivery", sent.record)
    return sent


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    controller, port = start_server(sink)
    yield sink, port
    controller.stop()


def smtp_integration(tenant: Tenant, port: int, *, priority: int = 5, **fields: Any) -> Integration:
    with tenant_context(tenant):
        return integration_create(
            channel="email",
            provider="smtp",
            name=f"smtp-{port}",
            priority=priority,
            config={
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "from_email": "Acme <no-reply@acme.example>",
                "timeout": 3,
            },
            **fields,
        )


def url(integration: Integration) -> str:
    return f"/admin/channels_delivery/integration/{integration.pk}/send-test/"


def test_a_test_goes_through_that_integration_to_the_address(
    tenant_a: Tenant, smtp: tuple[Sink, int], delivered: Published
) -> None:
    sink, port = smtp
    backup = smtp_integration(tenant_a, port, priority=9)
    with tenant_context(tenant_a):
        integration_create(
            channel="email",
            provider="smtp",
            name="primary-unreachable",
            priority=0,
            config={"host": "127.0.0.1", "port": 9, "security": "none",
                    "from_email": "a@acme.example", "timeout": 1},
        )  # fmt: skip
    client = admin_client("alpha")
    assert client.get(url(backup)).status_code == 200

    answer = client.post(url(backup), {"address": "ops@acme.example"})

    assert answer.status_code == 302
    with tenant_context(tenant_a):
        message = Message.objects.get(event__event_type_key="herald.integration_test")
        assert answer["Location"].endswith(f"/channels_delivery/message/{message.pk}/change/")
        assert message.integration_id == backup.pk
        assert message.subscriber is not None
        assert message.subscriber.email == "ops@acme.example"
        assert message.event.outcome["reason"].startswith("integration test from the dashboard")
        report = message_deliver(message_id=message.id)
    assert (report.status, report.outcome) == ("sent", "accepted")
    assert [envelope.rcpt_tos for envelope in sink.received] == [["ops@acme.example"]]
    assert b"Herald test: smtp-" in (sink.received[0].original_content or b"")


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        ({}, "give a subscriber&#x27;s id or an address"),
        ({"address": "not-an-address"}, "not-an-address"),
        ({"subscriber": "nobody-here"}, "nobody-here"),
    ],
)
def test_bad_input_is_named(
    tenant_a: Tenant, smtp: tuple[Sink, int], data: dict[str, str], shown: str
) -> None:
    integration = smtp_integration(tenant_a, smtp[1])
    answer = admin_client("alpha").post(url(integration), data)
    assert answer.status_code == 200
    assert shown in answer.content.decode()
    with tenant_context(tenant_a):
        assert not Message.objects.filter(event__event_type_key="herald.integration_test").exists()


def test_a_disabled_integration_is_not_tested(tenant_a: Tenant, smtp: tuple[Sink, int]) -> None:
    integration = smtp_integration(tenant_a, smtp[1], enabled=False)
    answer = admin_client("alpha").post(url(integration), {"address": "ops@acme.example"})
    assert "is disabled: enable it to test it" in answer.content.decode()


def test_another_tenants_integration_is_not_found(
    tenant_a: Tenant, tenant_b: Tenant, smtp: tuple[Sink, int]
) -> None:
    betas = smtp_integration(tenant_b, smtp[1])
    answer = admin_client("alpha").post(url(betas), {"address": "ops@acme.example"})
    assert answer.status_code in (302, 404)
    with tenant_context(tenant_b):
        assert not Message.objects.filter(event__event_type_key="herald.integration_test").exists()
