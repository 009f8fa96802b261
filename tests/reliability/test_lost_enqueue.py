"""A crash between commit and enqueue (DESIGN.md, "The rows are the outbox"):
the publish that ``on_commit`` makes is lost, and the sweepers deliver the rows.

Two ways a publish is lost, for events and for messages alike:

- ``raises``: the broker refuses it (the publisher logs it and carries on);
- ``dropped``: the process died after the commit and before the publish, so it
  never happened (simulated by a publish that does nothing).

Real processes: a Celery worker on the pipeline and delivery queues of the test
Redis, the test PostgreSQL, and a webhook endpoint on a local HTTP sink. The
sweepers run in this process with a controlled ``now``: within the grace period
they leave the rows to the publisher; past it they publish them, and each
event's message reaches the sink exactly once.
"""

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import pytest
from django.conf import settings
from django.utils import timezone

from channels_delivery.models import MessageStatus
from rules_engine.models import EventStatus
from rules_engine.services.dispatch import pipeline_publisher
from rules_engine.services.pipeline import event_process
from tests.channels_delivery.test_worker_kill import in_tenant
from tests.reliability.flow import (
    DELIVERY_QUEUE,
    PIPELINE_QUEUE,
    WORKER_ENV,
    Flow,
    events_post,
    events_swept,
    flow_events,
    flow_messages,
    messages_swept,
    past_the_grace,
    tasks_settled,
    wait_for,
)
from tests.workers import celery_worker

pytestmark = [pytest.mark.worker, pytest.mark.django_db, pytest.mark.timeout(60)]

EVENTS = 3
WAIT_SECONDS = 20.0  # for the worker's part; it needs well under a second
DELIVER = "channels_delivery.messages_deliver"
LOST_WAYS = ["raises", "dropped"]


@contextmanager
def publish_lost(monkeypatch: pytest.MonkeyPatch, target: str, how: str) -> Iterator[list[str]]:
    """Within the block every publish through ``target`` (a dotted name) is lost
    ``how``; yields the ids each publish carried, to show that one was tried."""
    tried: list[str] = []

    def lost(schema_name: str, chunk: list[str], *args: object, **kwargs: object) -> None:
        tried.extend(chunk)
        if how == "raises":
            raise ConnectionError("the broker refused the publish")

    with monkeypatch.context() as patched:
        patched.setattr(target, lost)
        yield tried


def message_ids(flow: Flow) -> set[str]:
    return {str(message.id) for message in flow_messages(flow)}


def delivered_once_each(flow: Flow, output: list[str]) -> None:
    """Every event's message is sent, and the sink got each exactly once: checked
    once the worker has no delivery task left in flight."""
    wait_for(
        "every message to be sent",
        lambda: (
            {message.status for message in flow_messages(flow)} == {MessageStatus.SENT}
            and len(flow_messages(flow)) == EVENTS
        ),
        timeout=WAIT_SECONDS,
        log=output,
    )
    wait_for(
        "the delivery tasks to finish",
        lambda: tasks_settled(output, DELIVER),
        timeout=WAIT_SECONDS,
        log=output,
    )
    messages = flow_messages(flow)
    assert sorted(flow.webhook_ids()) == sorted(str(message.id) for message in messages)
    assert {message.attempt_count for message in messages} == {1}


@pytest.mark.parametrize("how", LOST_WAYS)
def test_events_whose_publish_was_lost_are_swept_to_the_pipeline_and_delivered_once(
    flows: Callable[[str], Flow], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    flow = flows("lost-event")
    with publish_lost(monkeypatch, f"{pipeline_publisher.__module__}.pipeline_publisher.publish",
                      how) as tried:  # fmt: skip
        event_ids = events_post(flow, EVENTS)
    assert sorted(tried) == sorted(event_ids)  # each commit tried its publish
    assert flow_events(flow) == dict.fromkeys(event_ids, EventStatus.ACCEPTED)

    output: list[str] = []
    queues = f"{PIPELINE_QUEUE},{DELIVERY_QUEUE}"
    with celery_worker(queues=queues, env=WORKER_ENV, output=output, concurrency=2):
        # Within the grace period the sweeper leaves them to the publisher.
        assert not events_swept(flow.tenant, now=timezone.now()) & set(event_ids)
        grace = settings.HERALD_DISPATCH_GRACE_SECONDS
        assert set(event_ids) <= events_swept(flow.tenant, now=past_the_grace(grace_seconds=grace))
        delivered_once_each(flow, output)
        assert set(flow_events(flow).values()) == {EventStatus.PROCESSED}
        # Swept again later, nothing is published a second time.
        later = past_the_grace(grace_seconds=settings.HERALD_DISPATCH_REQUEUE_SECONDS)
        assert not events_swept(flow.tenant, now=later) & set(event_ids)
        assert not messages_swept(flow.tenant, now=later) & message_ids(flow)
    assert len(flow.requests()) == EVENTS


@pytest.mark.parametrize("how", LOST_WAYS)
def test_messages_whose_publish_was_lost_are_swept_to_delivery_and_delivered_once(
    flows: Callable[[str], Flow], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    flow = flows("lost-message")
    with publish_lost(monkeypatch, f"{pipeline_publisher.__module__}.pipeline_publisher.publish",
                      "dropped"):  # fmt: skip
        event_ids = events_post(flow, EVENTS)
    # The pipeline's part, here in this process, where the delivery publish is lost.
    with publish_lost(
        monkeypatch, "channels_delivery.services.dispatch.publish_to_delivery", how
    ) as tried:
        for event_id in event_ids:
            in_tenant(flow.tenant, partial(event_process, event_id=uuid.UUID(event_id)))
    messages = flow_messages(flow)
    assert sorted(tried) == sorted(str(message.id) for message in messages)
    assert len(messages) == EVENTS
    assert {message.status for message in messages} == {MessageStatus.QUEUED}

    output: list[str] = []
    with celery_worker(queues=DELIVERY_QUEUE, env=WORKER_ENV, output=output):
        mine = message_ids(flow)
        assert not messages_swept(flow.tenant, now=timezone.now()) & mine
        grace = settings.HERALD_DELIVERY_GRACE_SECONDS
        assert mine <= messages_swept(flow.tenant, now=past_the_grace(grace_seconds=grace))
        delivered_once_each(flow, output)
        later = past_the_grace(grace_seconds=settings.HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS)
        assert not messages_swept(flow.tenant, now=later) & mine
    assert len(flow.requests()) == EVENTS
