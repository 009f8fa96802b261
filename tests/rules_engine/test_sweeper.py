"""The events outbox sweeper re-enqueues what the broker never got."""

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import tenant_context

from rules_engine.models import Event, EventStatus
from rules_engine.services.sweeper import events_sweep
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def enqueued(monkeypatch: Any) -> list[list[str]]:
    chunks: list[list[str]] = []
    monkeypatch.setattr("rules_engine.tasks.event_process_many.delay", chunks.append)
    return chunks


def test_sweep_enqueues_stale_and_due_events_only(
    tenant_a: Tenant, enqueued: list[list[str]], django_capture_on_commit_callbacks: Any
) -> None:
    now = timezone.now()
    with tenant_context(tenant_a):
        stale = Event.objects.create(event_type_key="x", created_at=now - timedelta(minutes=5))
        fresh = Event.objects.create(event_type_key="x", created_at=now)
        due = Event.objects.create(event_type_key="x", send_at=now - timedelta(seconds=1))
        later = Event.objects.create(event_type_key="x", send_at=now + timedelta(hours=1))
        done = Event.objects.create(
            event_type_key="x",
            created_at=now - timedelta(minutes=5),
            status=EventStatus.NO_MATCH,
        )
        with django_capture_on_commit_callbacks(execute=True):
            assert events_sweep(now=now) == 2
    swept = {event_id for chunk in enqueued for event_id in chunk}
    assert swept == {str(stale.id), str(due.id)}
    assert not swept & {str(fresh.id), str(later.id), str(done.id)}


def test_sweep_is_per_tenant(
    tenant_a: Tenant,
    tenant_b: Tenant,
    enqueued: list[list[str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    old = timezone.now() - timedelta(minutes=5)
    with tenant_context(tenant_a):
        Event.objects.create(event_type_key="x", created_at=old)
    with tenant_context(tenant_b), django_capture_on_commit_callbacks(execute=True):
        assert events_sweep() == 0
    assert enqueued == []


def test_broker_down_at_commit_still_accepts_the_event(
    api_a: Any, tenant_a: Tenant, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    def broker_down(*args: object) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr("rules_engine.tasks.event_process.delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_a.post("/api/v1/events", {"event": "x"}, content_type="application/json")
    assert response.status_code == 202
    with tenant_context(tenant_a):
        assert Event.objects.get().status == EventStatus.ACCEPTED  # the sweeper's to take
