"""A slow webhook receiver can not starve the others, with real workers.

Two prefork workers as production runs them: one on the ``delivery`` queue
(two processes) and the slow lane's on ``delivery_slow``. Endpoint ``slow``
takes SLOW_ANSWER seconds to answer; endpoint ``quick`` answers at once.

1. Before anybody knows it is slow, a message to ``slow`` holds one delivery
   process for SLOW_ANSWER; messages to ``quick`` published meanwhile go
   through the other process, each within BOUND seconds.
2. That answer marked ``slow`` as slow. Now several messages to it at once
   would take both delivery processes; instead each is handed to the slow lane,
   and messages to ``quick`` published with them still arrive within BOUND.
   The slow ones are delivered too, by the slow lane.
"""

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message, MessageStatus, WebhookEndpoint
from channels_delivery.services.dispatch import SLOW_LANE_QUEUE, messages_enqueue
from channels_delivery.services.webhooks import endpoint_create
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.channels_delivery.sinks import HttpSink
from tests.channels_delivery.test_worker_kill import in_tenant, wait_for
from tests.workers import celery_worker, routing_reset

pytestmark = [pytest.mark.worker, pytest.mark.django_db, pytest.mark.timeout(90)]

SLOW_ANSWER = 6.0  # seconds the slow receiver takes
BOUND = 3.0  # the most a quick receiver's message may wait meanwhile
SLOW_AFTER = 1.0  # HERALD_WEBHOOK_SLOW_SECONDS for the workers
QUICK_MESSAGES = 6
ENV = {"HERALD_ALLOW_LOOPBACK_URLS": "true", "HERALD_WEBHOOK_SLOW_SECONDS": str(SLOW_AFTER)}
FAST_QUEUE = settings.CELERY_TASK_ROUTES["channels_delivery.*"]["queue"]


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@pytest.fixture(autouse=True)
def _routed_as_configured() -> None:
    routing_reset()


@pytest.fixture
def endpoints(tenant_a: Tenant, sink: HttpSink) -> Iterator[dict[str, int]]:
    def create() -> dict[str, int]:
        return {
            "slow": endpoint_create(url=f"{sink.url}/slow", event_types=["report.ready"]).pk,
            "quick": endpoint_create(url=f"{sink.url}/quick", event_types=["order.shipped"]).pk,
        }

    made = in_tenant(tenant_a, create)
    yield made

    def delete() -> None:
        Event.objects.filter(event_type_key__in=["report.ready", "order.shipped"]).delete()
        Subscriber.objects.filter(external_id__startswith="lane-").delete()
        WebhookEndpoint.objects.filter(pk__in=made.values()).delete()

    in_tenant(tenant_a, delete)


def publish(tenant: Tenant, event_type: str, count: int) -> list[uuid.UUID]:
    """``count`` webhook messages of ``event_type``, committed and each published
    as its own delivery task, as separate events' messages are."""

    def create() -> list[uuid.UUID]:
        ids = []
        for _ in range(count):
            with transaction.atomic():
                message = Message.objects.create(
                    event=Event.objects.create(event_type_key=event_type, payload={}),
                    subscriber=Subscriber.objects.create(external_id=f"lane-{uuid.uuid4().hex}"),
                    channel=Channel.WEBHOOK,
                    content={"body": '{"ok": true}'},
                )
                messages_enqueue(message_ids=[message.id])
            ids.append(message.id)
        return ids

    return in_tenant(tenant, create)


def arrived(sink: HttpSink, path: str, ids: list[uuid.UUID]) -> dict[str, float]:
    """When each of these messages reached ``path`` (monotonic)."""
    wanted = {str(message_id) for message_id in ids}
    return {
        request.headers["webhook-id"]: request.received
        for request in list(sink.requests)
        if request.path == path and request.headers.get("webhook-id") in wanted
    }


def all_arrived(sink: HttpSink, path: str, ids: list[uuid.UUID]) -> dict[str, float]:
    """``arrived`` once every one has; empty (false) until then."""
    got = arrived(sink, path, ids)
    return got if len(got) == len(ids) else {}


def statuses(tenant: Tenant, ids: list[uuid.UUID]) -> set[str]:
    return set(
        in_tenant(
            tenant,
            lambda: list(Message.objects.filter(pk__in=ids).values_list("status", flat=True)),
        )
    )


def test_a_slow_receiver_does_not_hold_up_the_others(
    tenant_a: Tenant, sink: HttpSink, endpoints: dict[str, int]
) -> None:
    for _ in range(4):
        sink.reply(200, delay=SLOW_ANSWER, path="/slow")
    fast_log: list[str] = []
    slow_log: list[str] = []
    with (
        celery_worker(queues=FAST_QUEUE, env=ENV, concurrency=2, output=fast_log),
        celery_worker(queues=SLOW_LANE_QUEUE, env=ENV, concurrency=3, output=slow_log),
    ):
        # 1. Not known to be slow yet: it holds one delivery process.
        first_slow = publish(tenant_a, "report.ready", 1)
        wait_for("the slow receiver's first request", lambda: arrived(sink, "/slow", first_slow))
        published_at = time.monotonic()
        quick = publish(tenant_a, "order.shipped", QUICK_MESSAGES)
        times = wait_for(
            "the quick messages",
            lambda: all_arrived(sink, "/quick", quick),
            log=fast_log,
        )
        assert max(times.values()) - published_at < BOUND
        wait_for(
            "the first slow message to be sent",
            lambda: statuses(tenant_a, first_slow) == {MessageStatus.SENT},
            log=fast_log,
        )
        endpoint = in_tenant(tenant_a, lambda: WebhookEndpoint.objects.get(pk=endpoints["slow"]))
        assert endpoint.slow_until is not None

        # 2. Known to be slow: its messages go to the slow lane.
        more_slow = publish(tenant_a, "report.ready", 3)
        published_at = time.monotonic()
        quick = publish(tenant_a, "order.shipped", QUICK_MESSAGES)
        times = wait_for(
            "the quick messages beside the slow lane",
            lambda: all_arrived(sink, "/quick", quick),
            log=fast_log,
        )
        assert max(times.values()) - published_at < BOUND
        wait_for(
            "the slow messages, through the slow lane",
            lambda: statuses(tenant_a, more_slow) == {MessageStatus.SENT},
            timeout=SLOW_ANSWER * 3,
            log=slow_log,
        )
    assert any("messages_deliver" in line and "succeeded" in line for line in slow_log)
