"""Sentry: initialised with the three integrations, no PII, the tenant as a tag."""

import pytest
import sentry_sdk
from django_tenants.utils import tenant_context

from tenants.models import Tenant
from tests.conftest import CapturingTransport


def test_sentry_options(sentry_events: CapturingTransport) -> None:
    client = sentry_sdk.get_client()
    assert client.should_send_default_pii() is False
    names = set(client.integrations)
    assert {"django", "celery", "redis"} <= names


@pytest.mark.django_db
def test_events_carry_the_tenant_schema(
    sentry_events: CapturingTransport, tenant_a: Tenant
) -> None:
    with tenant_context(tenant_a):
        sentry_sdk.capture_exception(ValueError("boom"))
    sentry_sdk.capture_message("in public")
    sentry_sdk.flush()
    tags = [event.get("tags", {}).get("tenant") for event in sentry_events.events]
    assert tags == ["alpha", "public"]
