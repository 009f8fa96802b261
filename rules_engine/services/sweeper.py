"""The events outbox sweeper: nothing committed is silently dropped.

The dispatcher hands events to the pipeline as they commit
(rules_engine.services.dispatch). This periodic sweep, per tenant, catches what
it could not: accepted events past a grace period (the dispatcher was down or
missed the notification), scheduled events whose time has come, and queued
events whose publish is old enough to presume lost. Claims skip locked rows,
so sweepers and dispatchers on several machines share the work.
"""

from datetime import datetime

from django.db.models import QuerySet
from django.utils import timezone

from rules_engine.models import Event
from rules_engine.services.dispatch import events_dispatch, events_stale


def events_sweepable(*, now: datetime) -> QuerySet[Event]:
    """What events_sweep claims at ``now`` (beat asks this first, tenants.sweeps)."""
    return Event.objects.filter(events_stale(now=now))


def events_sweep(*, now: datetime | None = None) -> int:
    """Dispatch this tenant's stale events; returns how many."""
    now = now or timezone.now()
    return events_dispatch(which=events_stale(now=now), now=now)
