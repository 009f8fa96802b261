"""A retry hours ahead waits in PostgreSQL, not in the broker, and runs exactly
once (DESIGN.md, "Long waits live in PostgreSQL, not in the broker").

The receiver answers the first delivery 503 with ``Retry-After: 7200``. A real
worker makes that attempt: the message goes back to ``queued`` with
``next_attempt_at`` two hours on, and no task for it is left in the broker
(a countdown that long would be redelivered past Redis' visibility timeout, or
lost with the broker).

From there the clock is the test's: the sweeper and the delivery service both
take ``now``, so the sweeps run at chosen times, and what a sweep publishes is
delivered here with the same clock (a worker would claim on the wall clock, two
hours early). Before the retry is due a sweep publishes nothing; once due, two
sweepers at once publish it once between them and the receiver gets it once,
with the same ``webhook-id``; sweeping again (twice at once) sends nothing more.
"""

import base64
import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import partial

import pytest
import redis
from django.conf import settings
from django.db import connection
from django_tenants.utils import tenant_context

from channels_delivery.models import DeliveryAttempt, Message, MessageStatus
from channels_delivery.services.delivery import messages_deliver_many
from channels_delivery.services.dispatch import messages_sweep
from tenants.models import Tenant
from tests.channels_delivery.test_worker_kill import in_tenant
from tests.reliability.flow import (
    DELIVERY_QUEUE,
    PIPELINE_QUEUE,
    WORKER_ENV,
    Flow,
    events_post,
    flow_messages,
    tasks_settled,
    wait_for,
)
from tests.workers import celery_worker

pytestmark = [pytest.mark.worker, pytest.mark.django_db, pytest.mark.timeout(60)]

RETRY_AFTER_SECONDS = 7200
WAIT_SECONDS = 20.0
DELIVER = "channels_delivery.messages_deliver"
JOIN_SECONDS = 30.0


def concurrently(tenant: Tenant, work: Callable[[], int], *, count: int = 2) -> list[int]:
    """``work`` in ``count`` threads of their own connections, released together."""
    start = threading.Barrier(count)
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with tenant_context(tenant):
                start.wait(timeout=JOIN_SECONDS)
                results.append(work())
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
    if errors:
        raise errors[0]
    assert len(results) == count, "a sweeper did not finish"
    return results


def broker_holds(message_id: uuid.UUID) -> bool:
    """Whether any task in the broker's delivery queue, or delivered to a worker
    and not yet acknowledged (ETA tasks wait there), names this message."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    raw = [*client.lrange(DELIVERY_QUEUE, 0, -1), *client.hvals("unacked")]
    for entry in raw:
        payload = json.loads(entry)
        message = payload[0] if isinstance(payload, list) else payload
        body = message.get("body", "")
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        if str(message_id) in body:
            return True
    return False


def test_a_retry_two_hours_ahead_waits_in_the_row_and_is_sent_once_when_due(
    flows: Callable[[str], Flow], monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = flows("future")
    flow.sink.reply(503, "busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    output: list[str] = []
    queues = f"{PIPELINE_QUEUE},{DELIVERY_QUEUE}"
    with celery_worker(queues=queues, env=WORKER_ENV, output=output):
        events_post(flow, 1)
        (message,) = wait_for(
            "the first attempt's retry to be scheduled",
            lambda: [m for m in flow_messages(flow) if m.next_attempt_at is not None],
            timeout=WAIT_SECONDS,
            log=output,
        )
        wait_for(
            "the worker to finish",
            lambda: tasks_settled(output, DELIVER),
            timeout=WAIT_SECONDS,
            log=output,
        )
        assert (message.status, message.attempt_count) == (MessageStatus.QUEUED, 1)
        (attempt,) = in_tenant(
            flow.tenant, lambda: list(DeliveryAttempt.objects.filter(message_id=message.id))
        )
        assert (attempt.outcome, attempt.response_status) == ("retryable", 503)
        # Retry-After (from the claim, a moment before the request started): the
        # schedule's first wait, about nothing, is shorter.
        assert message.next_attempt_at is not None
        asked = attempt.started_at + timedelta(seconds=RETRY_AFTER_SECONDS)
        assert abs(message.next_attempt_at - asked) < timedelta(seconds=1)
        assert not broker_holds(message.id)
        received = [line for line in output if f"Task {DELIVER}[" in line and " received" in line]
        assert len(received) == 1
    assert len(flow.requests()) == 1

    due = message.next_attempt_at
    published: list[str] = []
    lock = threading.Lock()

    def record(schema_name: str, chunk: list[str], *args: object, **kwargs: object) -> None:
        with lock:
            published.extend(chunk)

    monkeypatch.setattr("channels_delivery.services.dispatch.publish_to_delivery", record)

    # Not due yet: an hour before, and a second before.
    for now in (due - timedelta(hours=1), due - timedelta(seconds=1)):
        in_tenant(flow.tenant, partial(messages_sweep, now=now))
    assert str(message.id) not in published

    # Due: two sweepers at once publish it once between them.
    at = due + timedelta(seconds=1)
    concurrently(flow.tenant, lambda: messages_sweep(now=at))
    assert published.count(str(message.id)) == 1
    reports = in_tenant(
        flow.tenant, lambda: messages_deliver_many(message_ids=[message.id], now=at)
    )
    assert [(r.attempted, r.status) for r in reports] == [(True, MessageStatus.SENT)]
    # The same task delivered twice (at least once, as brokers do) sends nothing more.
    again = in_tenant(flow.tenant, lambda: messages_deliver_many(message_ids=[message.id], now=at))
    assert [(r.attempted, r.status) for r in again] == [(False, MessageStatus.SENT)]

    # Swept again later, twice at once: nothing is published.
    later = due + timedelta(hours=1)
    concurrently(flow.tenant, lambda: messages_sweep(now=later))
    assert published.count(str(message.id)) == 1

    sent = in_tenant(flow.tenant, lambda: Message.objects.get(pk=message.id))
    assert (sent.status, sent.attempt_count, sent.sent_at) == (MessageStatus.SENT, 2, at)
    assert [request.headers["webhook-id"] for request in flow.requests()] == [str(message.id)] * 2
