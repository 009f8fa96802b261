"""A receiver that takes 10 s and one that answers 500 do not hold up the
healthy receivers' deliveries beyond BOUND (DESIGN.md, "Webhooks").

Real workers as production runs them: the delivery worker (two prefork
processes) and the slow lane's. The tenant has four webhook endpoints on a
local sink: ``slow`` answers after SLOW_ANSWER seconds (as long as the
provider's timeout, so the answer may come or the request time out: either way
it is slow), ``failing`` answers 500 to everything (each message is retried at
once, then after about 5 s, then waits minutes in its row), and two healthy
ones answer at once.

1. Before anybody knows ``slow`` is slow, a message to it holds one delivery
   process; messages to ``failing`` and to the healthy endpoints, published
   meanwhile, share the other, and every healthy one arrives within BOUND of
   being published.
2. ``slow`` is known to be slow now: more messages to it go to the slow lane,
   and with more failing ones beside them the healthy ones still arrive within
   BOUND. Nothing is lost: the slow ones are sent, the failing ones wait for
   their next retry.
"""

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.db import transaction

from channels_delivery.catalogue import Channel
from channels_delivery.models import DeliveryAttempt, Message, MessageStatus, WebhookEndpoint
from channels_delivery.services.dispatch import SLOW_LANE_QUEUE, messages_enqueue
from channels_delivery.services.webhooks import endpoint_create
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.channels_delivery.sinks import HttpSink
from tests.channels_delivery.test_worker_kill import in_tenant
from tests.reliability.flow import DELIVERY_QUEUE, WORKER_ENV, wait_for
from tests.workers import celery_worker

pytestmark = [pytest.mark.worker, pytest.mark.django_db, pytest.mark.timeout(90)]

# The most a healthy receiver's message may take from its publish (commit) to the
# receiver, while the slow and the failing receivers are being served: a quick
# delivery takes well under 0.1 s here, so this leaves room for a busy machine
# but not for waiting behind a slow receiver (SLOW_ANSWER) or a failing one.
BOUND = 3.0
SLOW_ANSWER = 10.0  # seconds the slow receiver sleeps before it answers
FAILING_REPLIES = 40  # 500s queued for the failing receiver: more than it is asked
HEALTHY_PER_ROUND = 3  # messages per healthy endpoint in each round
FAILING_PER_ROUND = 2
SLOW_LATER = 3  # messages to the slow receiver once it is known to be slow
WAIT_SECONDS = 20.0
ENDPOINTS = ("slow", "failing", "healthy-1", "healthy-2")


@dataclass(frozen=True, kw_only=True)
class Sent:
    message_id: str
    published_at: float  # monotonic, once committed and published


@pytest.fixture
def event_types(tenant_a: Tenant, sink: HttpSink) -> Iterator[dict[str, str]]:
    """Endpoint name -> the event type only that endpoint receives."""
    tag = uuid.uuid4().hex[:8]
    types = {name: f"rel.{name}-{tag}" for name in ENDPOINTS}

    def create() -> list[int]:
        return [
            endpoint_create(url=f"{sink.url}/{name}", event_types=[types[name]]).pk
            for name in ENDPOINTS
        ]

    made = in_tenant(tenant_a, create)
    yield types

    def delete() -> None:
        Event.objects.filter(event_type_key__in=types.values()).delete()
        Subscriber.objects.filter(external_id__startswith=f"rel-{tag}-").delete()
        WebhookEndpoint.objects.filter(pk__in=made).delete()

    in_tenant(tenant_a, delete)


def publish(tenant: Tenant, event_type: str) -> Sent:
    """One webhook message of ``event_type``, committed and published on its own,
    as a separate event's message is."""

    def create() -> str:
        with transaction.atomic():
            message = Message.objects.create(
                event=Event.objects.create(event_type_key=event_type, payload={}),
                subscriber=Subscriber.objects.create(
                    external_id=f"rel-{event_type.rsplit('-', 1)[1]}-{uuid.uuid4().hex}"
                ),
                channel=Channel.WEBHOOK,
                content={"body": '{"ok": true}'},
            )
            messages_enqueue(message_ids=[message.id])
        return str(message.id)

    message_id: str = in_tenant(tenant, create)
    return Sent(message_id=message_id, published_at=time.monotonic())


def round_published(tenant: Tenant, types: dict[str, str]) -> tuple[list[Sent], list[Sent]]:
    """(healthy, failing) messages, published interleaved."""
    healthy: list[Sent] = []
    failing: list[Sent] = []
    for n in range(HEALTHY_PER_ROUND):
        if n < FAILING_PER_ROUND:
            failing.append(publish(tenant, types["failing"]))
        healthy.append(publish(tenant, types["healthy-1"]))
        healthy.append(publish(tenant, types["healthy-2"]))
    return healthy, failing


def lateness(sink: HttpSink, sent: list[Sent]) -> dict[str, float]:
    """Seconds from publish to arrival of each message that arrived."""
    published = {item.message_id: item.published_at for item in sent}
    return {
        request.headers["webhook-id"]: request.received - published[request.headers["webhook-id"]]
        for request in list(sink.requests)
        if request.headers.get("webhook-id") in published
    }


def all_within_bound(sink: HttpSink, sent: list[Sent], log: list[str]) -> None:
    def arrived_all() -> dict[str, float]:
        got = lateness(sink, sent)
        return got if len(got) == len(sent) else {}

    late = wait_for("every healthy message", arrived_all, timeout=WAIT_SECONDS, log=log)
    slowest = max(late.values())
    assert slowest < BOUND, f"a healthy message took {slowest:.2f} s (bound {BOUND} s)"


def messages_of(tenant: Tenant, sent: list[Sent]) -> list[Message]:
    ids = [item.message_id for item in sent]
    return in_tenant(tenant, lambda: list(Message.objects.filter(pk__in=ids)))


def test_slow_and_failing_receivers_do_not_hold_up_healthy_ones(
    tenant_a: Tenant, sink: HttpSink, event_types: dict[str, str]
) -> None:
    for _ in range(1 + SLOW_LATER):  # after these, a retry of a timed-out one gets 200 at once
        sink.reply(200, delay=SLOW_ANSWER, path="/slow")
    for _ in range(FAILING_REPLIES):
        sink.reply(500, "down", path="/failing")
    output: list[str] = []
    slow_log: list[str] = []
    with (
        celery_worker(queues=DELIVERY_QUEUE, env=WORKER_ENV, concurrency=2, output=output),
        celery_worker(queues=SLOW_LANE_QUEUE, env=WORKER_ENV, concurrency=3, output=slow_log),
    ):
        # 1. Not known to be slow yet: it holds one delivery process.
        first_slow = publish(tenant_a, event_types["slow"])
        wait_for(
            "the slow receiver's first request",
            lambda: any(r.path == "/slow" for r in list(sink.requests)),
            timeout=WAIT_SECONDS + SLOW_ANSWER,
            log=output,
        )
        healthy, failing = round_published(tenant_a, event_types)
        all_within_bound(sink, healthy, output)
        wait_for(
            "the slow receiver to be known as slow",
            lambda: in_tenant(
                tenant_a,
                lambda: WebhookEndpoint.objects.get(url=f"{sink.url}/slow").slow_until,
            ),
            timeout=SLOW_ANSWER + WAIT_SECONDS,
            log=output,
        )

        # 2. Known to be slow: its messages go to the slow lane.
        later_slow = [publish(tenant_a, event_types["slow"]) for _ in range(SLOW_LATER)]
        more_healthy, more_failing = round_published(tenant_a, event_types)
        all_within_bound(sink, more_healthy, output)

        slow = [first_slow, *later_slow]
        wait_for(
            "the slow receiver's messages, through the slow lane",
            lambda: {m.status for m in messages_of(tenant_a, slow)} == {MessageStatus.SENT},
            timeout=SLOW_ANSWER + WAIT_SECONDS,
            log=slow_log,
        )
    assert any("messages_deliver" in line and "succeeded" in line for line in slow_log)
    # The failing ones are not lost: each was tried, answered 500, and waits for a retry.
    failed_ones = messages_of(tenant_a, [*failing, *more_failing])
    assert {m.status for m in failed_ones} == {MessageStatus.QUEUED}
    assert all(m.next_attempt_at is not None for m in failed_ones)
    statuses = in_tenant(
        tenant_a,
        lambda: set(
            DeliveryAttempt.objects.filter(message__in=failed_ones).values_list(
                "response_status", flat=True
            )
        ),
    )
    assert statuses == {500}
    assert {m.status for m in messages_of(tenant_a, [*healthy, *more_healthy])} == {
        MessageStatus.SENT
    }
