"""Sentry: initialised with the three integrations, no PII, the tenant as a tag."""

from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from django_tenants.utils import tenant_context
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from herald.sentry import sentry_init
from tenants.models import Tenant


class CapturingTransport(Transport):
    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            if item.type == "event" and item.payload.json is not None:
                self.events.append(item.payload.json)


@pytest.fixture
def captured() -> Iterator[CapturingTransport]:
    transport = CapturingTransport()
    sentry_init(dsn="http://public@127.0.0.1:9/1", environment="test", transport=transport)
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # no DSN: disabled again


def test_sentry_options(captured: CapturingTransport) -> None:
    client = sentry_sdk.get_client()
    assert client.should_send_default_pii() is False
    names = set(client.integrations)
    assert {"django", "celery", "redis"} <= names


@pytest.mark.django_db
def test_events_carry_the_tenant_schema(captured: CapturingTransport, tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        sentry_sdk.capture_exception(ValueError("boom"))
    sentry_sdk.capture_message("in public")
    sentry_sdk.flush()
    tags = [event.get("tags", {}).get("tenant") for event in captured.events]
    assert tags == ["alpha", "public"]
