"""The events sweeper dispatches what the publisher lost, once per requeue period."""

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import tenant_context

from rules_engine.models import Event, EventStatus
from rules_engine.services.sweeper import events_sweep
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


def test_sweep_claims_stale_and_due_events_only(
    tenant_a: Tenant,
    published: list[tuple[str, list[str]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    now = timezone.now()
    old = now - timedelta(minutes=5)
    with tenant_context(tenant_a):
        stale = Event.objects.create(event_type_key="x", created_at=old)
        fresh = Event.objects.create(event_type_key="x", created_at=now)
        due = Event.objects.create(event_type_key="x", send_at=now - timedelta(seconds=1))
        later = Event.objects.create(event_type_key="x", send_at=now + timedelta(hours=1))
        done = Event.objects.create(event_type_key="x", created_at=old, status=EventStatus.NO_MATCH)
        lost = Event.objects.create(
            event_type_key="x",
            created_at=old - timedelta(hours=1),
            status=EventStatus.QUEUED,
            dispatched_at=now - timedelta(hours=1),
        )
        waiting = Event.objects.create(
            event_type_key="x",
            created_at=old,
            status=EventStatus.QUEUED,
            dispatched_at=now - timedelta(seconds=30),
        )
        with django_capture_on_commit_callbacks(execute=True):
            assert events_sweep(now=now) == 3
        swept = {event_id for _, chunk in published for event_id in chunk}
        assert swept == {str(lost.id), str(stale.id), str(due.id)}
        assert {schema for schema, _ in published} == {"alpha"}
        for event in (stale, due, lost):
            event.refresh_from_db()
            assert (event.status, event.dispatched_at) == (EventStatus.QUEUED, now)
        for event in (fresh, later, done, waiting):
            assert Event.objects.get(pk=event.pk).status == event.status

        # Claimed: the next sweep leaves them to the queue until the requeue period.
        published.clear()
        with django_capture_on_commit_callbacks(execute=True):
            assert events_sweep(now=now + timedelta(seconds=20)) == 0
        assert published == []


def test_sweep_publishes_only_after_the_claim_commits(
    tenant_a: Tenant,
    published: list[tuple[str, list[str]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    with tenant_context(tenant_a):
        Event.objects.create(event_type_key="x", created_at=timezone.now() - timedelta(hours=1))
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            assert events_sweep() == 1
        assert published == []
        for callback in callbacks:
            callback()
    assert len(published) == 1


def test_sweep_is_per_tenant(
    tenant_a: Tenant,
    tenant_b: Tenant,
    published: list[tuple[str, list[str]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    old = timezone.now() - timedelta(minutes=5)
    with tenant_context(tenant_a):
        Event.objects.create(event_type_key="x", created_at=old)
    with tenant_context(tenant_b), django_capture_on_commit_callbacks(execute=True):
        assert events_sweep() == 0
    assert published == []


def test_broker_down_at_commit_still_accepts_the_event(
    api_a: Any, tenant_a: Tenant, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr("rules_engine.tasks.event_process_many.apply_async", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_a.post("/api/v1/events", {"event": "x"}, content_type="application/json")
    assert response.status_code == 202
    with tenant_context(tenant_a):
        event = Event.objects.get()
        assert event.status == EventStatus.ACCEPTED  # the sweeper's to take
        with django_capture_on_commit_callbacks(execute=True):
            assert events_sweep(now=timezone.now() + timedelta(minutes=2)) == 1
