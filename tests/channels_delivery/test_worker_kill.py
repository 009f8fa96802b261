"""A delivery worker killed with SIGKILL in the middle of a send (DESIGN.md,
"Reliability rules"): the message is still delivered, sent at most once more
with the same webhook-id, and one that kills its worker every time is given up.

Everything is real: a prefork Celery worker process consuming the delivery
queues of the test Redis, the test PostgreSQL (rows are written from a
connection of their own and committed, so the worker sees them), and a webhook
endpoint on a local HTTP sink that holds a request without answering, so the
worker is caught in the middle of sending.

What the delivery code guarantees, and these tests hold it to:

- The claim (queued -> sending, attempt_count + 1) commits before the provider
  is called; the DeliveryAttempt row, and the move on from ``sending``, are
  written by the same process after the provider answers. A process killed
  while sending therefore leaves the message ``sending`` with the attempt
  counted and *no* DeliveryAttempt row: the killed attempt shows only in
  ``attempt_count`` (and in the receiver's log).
- acks_late + reject_on_worker_lost: when the pool child dies, the worker puts
  the task back and its next child runs it at once, but the message is
  ``sending`` and the claim refuses it, so nothing is sent twice while the
  first attempt might still be under way. When the whole worker dies the task
  stays unacknowledged in Redis until the visibility timeout (an hour): the
  rows are the outbox, and the sweeper is what brings the message back.
- The sweeper queues a message that was ``sending`` longer than
  HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS again (driven here with a ``now``
  past that) and publishes it; the next claim sends it with the same webhook-id
  (the message's id), so a receiver that honours it processes it once.
- Every claim counts an attempt, so once retry.max_attempts() claims died the
  sweeper fails the message (SENDING_GAVE_UP) instead of queueing it again.
"""

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import psutil
import pytest
from celery.signals import after_task_publish
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import tenant_context
from standardwebhooks.webhooks import Webhook

from channels_delivery.catalogue import Channel
from channels_delivery.models import DeliveryAttempt, Message, MessageStatus, WebhookEndpoint
from channels_delivery.retry import max_attempts
from channels_delivery.services.dispatch import (
    SENDING_GAVE_UP,
    SLOW_LANE_QUEUE,
    messages_enqueue,
    messages_sweep,
)
from channels_delivery.services.webhooks import endpoint_create, endpoint_secret
from channels_delivery.tasks import messages_deliver
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.channels_delivery.sinks import HttpSink, SinkRequest
from tests.threads import in_own_connection
from tests.workers import celery_worker, routing_reset

pytestmark = [pytest.mark.worker, pytest.mark.django_db, pytest.mark.timeout(60)]

T = TypeVar("T")

BODY = '{"type": "order.shipped", "order": "K-9"}'
# Both delivery lanes, as the production workers serve them between them.
QUEUES = f"{settings.CELERY_TASK_ROUTES['channels_delivery.*']['queue']},{SLOW_LANE_QUEUE}"
WORKER_ENV = {"HERALD_ALLOW_LOOPBACK_URLS": "true"}  # the sink listens on 127.0.0.1
WAIT_SECONDS = 20.0  # for anything the worker does; it needs well under a second
POLL_SECONDS = 0.02
# A held request is answered only when the sink closes: the worker is killed
# long before, and long before the provider's own timeout.
HOLD_SECONDS = 300.0


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The endpoint is saved in this process, which checks its URL too."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@pytest.fixture(autouse=True)
def _routed_as_configured() -> None:
    routing_reset()  # channels_delivery.* to the delivery queue, as configured


def wait_for(
    what: str,
    ready: Callable[[], T],
    *,
    timeout: float = WAIT_SECONDS,
    log: list[str] | None = None,
) -> T:
    """Poll ``ready`` until it returns something true, and return that; on failure
    show the end of the worker's ``log``, where the reason usually is."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = "".join(list(log or [])[-40:])
            pytest.fail(
                f"{what}: not within {timeout:g} s" + (f"\nworker log:\n{tail}" if tail else "")
            )
        time.sleep(POLL_SECONDS)


@dataclass(frozen=True, kw_only=True)
class Published:
    """A webhook message, committed and published for delivery."""

    message_id: uuid.UUID
    endpoint_id: int
    path: str
    secret: str


def in_tenant(tenant: Tenant, work: Callable[[], T]) -> T:
    """``work`` in the tenant's schema, committed (a connection of its own)."""

    def run() -> T:
        with tenant_context(tenant):
            return work()

    result: T = in_own_connection(run)
    return result


def webhook_message_published(tenant: Tenant, sink: HttpSink) -> Published:
    """What the pipeline does: the message row and its publish, after commit."""
    path = f"/hooks/{uuid.uuid4().hex[:12]}"

    def create() -> Published:
        endpoint = endpoint_create(url=f"{sink.url}{path}", event_types=["order.shipped"])
        with transaction.atomic():
            message = Message.objects.create(
                event=Event.objects.create(event_type_key="order.shipped", payload={}),
                subscriber=Subscriber.objects.create(external_id=f"kill-{uuid.uuid4().hex}"),
                channel=Channel.WEBHOOK,
                content={"body": BODY},
            )
            messages_enqueue(message_ids=[message.id])
        return Published(
            message_id=message.id,
            endpoint_id=endpoint.pk,
            path=path,
            secret=endpoint_secret(endpoint=endpoint),
        )

    return in_tenant(tenant, create)


def forget(tenant: Tenant, published: Published) -> None:
    """Remove what a test committed (its attempts and the event's rows go with it)."""

    def delete() -> None:
        Subscriber.objects.filter(messages__pk=published.message_id).delete()
        Event.objects.filter(messages__pk=published.message_id).delete()
        WebhookEndpoint.objects.filter(pk=published.endpoint_id).delete()

    in_tenant(tenant, delete)


@pytest.fixture
def publish(tenant_a: Tenant, sink: HttpSink) -> Iterator[Callable[[], Published]]:
    """Publishes webhook messages to the sink's endpoints; removes them afterwards."""
    made: list[Published] = []

    def make() -> Published:
        made.append(webhook_message_published(tenant_a, sink))
        return made[-1]

    yield make
    for published in made:
        forget(tenant_a, published)


def sweep_past_the_sending_timeout(tenant: Tenant) -> int:
    """The beat sweeper, run as if the sending timeout had passed since the claim."""
    later = timezone.now() + timedelta(seconds=settings.HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS + 1)
    return in_tenant(tenant, lambda: messages_sweep(now=later))


@contextmanager
def delivery_tasks(*, of: uuid.UUID | None = None) -> Iterator[list[str]]:
    """The ids of the delivery tasks this process publishes within the block (for
    message ``of`` only, if given)."""
    task_ids: list[str] = []

    def seen(sender: Any = None, headers: Any = None, body: Any = None, **_: Any) -> None:
        message_ids = body[0][0] if body else []  # body: (args, kwargs, embed)
        if sender == messages_deliver.name and (of is None or str(of) in message_ids):
            task_ids.append(headers["id"])

    after_task_publish.connect(seen, weak=False)
    try:
        yield task_ids
    finally:
        after_task_publish.disconnect(seen)


def ran_to_the_end(output: list[str], task_id: str, *, capped_too: bool = False) -> bool:
    """The worker logged that this task finished (it is not killed again); with
    ``capped_too``, also that it was failed at the redelivery cap."""
    ends = [f"messages_deliver[{task_id}] succeeded"]
    if capped_too:
        ends.append(f"messages_deliver[{task_id}] raised unexpected: RedeliveryLimitExceeded")
    return any(end in line for line in list(output) for end in ends)


def requests_to(sink: HttpSink, path: str) -> list[SinkRequest]:
    return [request for request in list(sink.requests) if request.path == path]


def the_sending_child(
    worker: subprocess.Popen[str], sink: HttpSink, *, log: list[str]
) -> psutil.Process:
    """The worker's pool process with a connection open to the sink: the one sending."""
    port = int(sink.url.rsplit(":", 1)[1])

    def connected(process: psutil.Process) -> bool:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            return False
        return any(c.raddr and c.raddr.port == port for c in connections)

    def holders() -> list[psutil.Process]:
        children = psutil.Process(worker.pid).children(recursive=True)
        return [child for child in children if connected(child)]

    holding = wait_for("a pool process connected to the sink", holders, log=log)
    assert len(holding) == 1, f"{len(holding)} pool processes are sending to the sink at once"
    return holding[0]


def gone(process: psutil.Process) -> bool:
    """Dead: reaped, or a zombie nobody reaped yet."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def message_now(tenant: Tenant, message_id: uuid.UUID) -> Message:
    # The test's own transaction reads what other connections committed.
    with tenant_context(tenant):
        return Message.objects.get(pk=message_id)


def attempts_of(tenant: Tenant, message_id: uuid.UUID) -> list[DeliveryAttempt]:
    with tenant_context(tenant):
        return list(DeliveryAttempt.objects.filter(message_id=message_id).order_by("pk"))


def held_and_unanswered(tenant: Tenant, sink: HttpSink, published: Published, count: int) -> None:
    """After ``count`` killed sends: the message is still claimed, each claim
    counted, no attempt recorded, and the sink got ``count`` requests."""
    message = message_now(tenant, published.message_id)
    assert (message.status, message.attempt_count) == (MessageStatus.SENDING, count)
    assert attempts_of(tenant, published.message_id) == []
    assert len(requests_to(sink, published.path)) == count


def kill_the_sending_child(
    worker: subprocess.Popen[str],
    sink: HttpSink,
    published: Published,
    *,
    count: int,
    log: list[str],
) -> None:
    """Once the sink holds request ``count``, SIGKILL the pool process sending it."""
    wait_for(f"request {count}", lambda: len(requests_to(sink, published.path)) >= count, log=log)
    child = the_sending_child(worker, sink, log=log)
    os.kill(child.pid, signal.SIGKILL)
    wait_for("the killed pool process to be gone", lambda: gone(child))
    assert worker.poll() is None  # the worker itself lives on


def delivered_once_more(
    tenant: Tenant,
    sink: HttpSink,
    published: Published,
    output: list[str],
) -> None:
    """Sweep the stranded message back and check it is sent by the running
    worker: one more request, the same webhook-id, one attempt recorded."""
    with delivery_tasks(of=published.message_id) as swept:
        assert sweep_past_the_sending_timeout(tenant) >= 1
    assert len(swept) == 1
    wait_for(
        "the swept message's task to finish",
        lambda: ran_to_the_end(output, swept[0]),
        log=output,
    )
    message = message_now(tenant, published.message_id)
    assert (message.status, message.attempt_count, message.error) == (MessageStatus.SENT, 2, "")
    first, second = requests_to(sink, published.path)
    # The same delivery both times, as a receiver deduplicating on webhook-id sees it.
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(message.id)
    assert first.body == second.body
    for request in (first, second):
        assert Webhook(published.secret).verify(request.body, dict(request.headers))
    # The killed attempt left no row; the one that got through did.
    (attempt,) = attempts_of(tenant, published.message_id)
    assert (attempt.provider, attempt.outcome, attempt.response_status) == (
        "webhook",
        "accepted",
        200,
    )
    assert attempt.provider_message_id == f"endpoint:{published.endpoint_id}"


def test_a_pool_child_killed_while_sending_is_replaced_and_the_message_sent_once_more(
    tenant_a: Tenant, sink: HttpSink, publish: Callable[[], Published]
) -> None:
    sink.reply(delay=HOLD_SECONDS)  # the first request is never answered; later ones 200
    output: list[str] = []
    with celery_worker(queues=QUEUES, env=WORKER_ENV, output=output) as worker:
        with delivery_tasks() as published_tasks:
            published = publish()
        (task_id,) = published_tasks
        kill_the_sending_child(worker, sink, published, count=1, log=output)
        # Celery notices the dead pool process (on its pool maintenance tick, every
        # 5 s) and hands the task back to the broker; the next pool process runs it,
        # finds the message claimed, and leaves it alone.
        wait_for("the task to run again", lambda: ran_to_the_end(output, task_id), log=output)
        held_and_unanswered(tenant_a, sink, published, count=1)

        delivered_once_more(tenant_a, sink, published, output)


def test_a_whole_worker_killed_while_sending_leaves_the_message_to_the_sweeper(
    tenant_a: Tenant, sink: HttpSink, publish: Callable[[], Published]
) -> None:
    sink.reply(delay=HOLD_SECONDS)
    killed_log: list[str] = []
    with celery_worker(
        queues=QUEUES, env=WORKER_ENV, output=killed_log, own_process_group=True
    ) as worker:
        published = publish()
        wait_for("the first request", lambda: requests_to(sink, published.path), log=killed_log)
        processes = [psutil.Process(worker.pid), the_sending_child(worker, sink, log=killed_log)]
        os.killpg(worker.pid, signal.SIGKILL)  # the main process and its pool at once
        worker.wait(timeout=WAIT_SECONDS)
        wait_for("every worker process to be gone", lambda: all(map(gone, processes)))
    # Its task is unacknowledged in Redis until the visibility timeout: only the
    # sweeper brings the message back, to a worker started afresh.
    held_and_unanswered(tenant_a, sink, published, count=1)
    output: list[str] = []
    with celery_worker(queues=QUEUES, env=WORKER_ENV, output=output):
        delivered_once_more(tenant_a, sink, published, output)


def test_a_message_that_kills_its_worker_every_time_is_given_up_after_max_attempts(
    tenant_a: Tenant, sink: HttpSink, publish: Callable[[], Published]
) -> None:
    """A pool process for each attempt: Celery replaces a dead one (and hands its
    task back to the broker) only on its 5-second pool maintenance tick, which
    would make one process wait that long after every kill."""
    for _ in range(max_attempts()):
        sink.reply(delay=HOLD_SECONDS)  # every send is held until its sender dies
    output: list[str] = []
    with celery_worker(
        queues=QUEUES, env=WORKER_ENV, output=output, concurrency=max_attempts()
    ) as worker:
        with delivery_tasks() as task_ids:
            published = publish()
        for attempt in range(1, max_attempts() + 1):
            if attempt > 1:
                with delivery_tasks(of=published.message_id) as swept:
                    assert sweep_past_the_sending_timeout(tenant_a) >= 1
                task_ids.extend(swept)
            kill_the_sending_child(worker, sink, published, count=attempt, log=output)
            held_and_unanswered(tenant_a, sink, published, count=attempt)

        with delivery_tasks(of=published.message_id) as after_the_last:
            sweep_past_the_sending_timeout(tenant_a)
        assert after_the_last == []  # failed, not published again
        message = message_now(tenant_a, published.message_id)
        assert (message.status, message.error, message.attempt_count) == (
            MessageStatus.FAILED,
            SENDING_GAVE_UP,
            max_attempts(),
        )
        assert message.failed_at is not None
        # Every task killed was handed back by the broker and ran again; none of
        # those runs sent anything, the message being claimed (or failed) by then.
        # A task that was in a killed child more than once (a busy machine lets a
        # child take the next task before it dies) may end at the redelivery cap
        # instead: that is the cap doing its job, and it sends nothing either.
        assert len(task_ids) == max_attempts()
        for task_id in task_ids:
            wait_for(
                "every task to run again",
                lambda: ran_to_the_end(output, task_id, capped_too=True),  # noqa: B023
                log=output,
                timeout=3 * WAIT_SECONDS,  # pool processes come back on 5 s ticks
            )
    requests = requests_to(sink, published.path)
    assert len(requests) == max_attempts()
    assert {request.headers["webhook-id"] for request in requests} == {str(message.id)}
    assert attempts_of(tenant_a, published.message_id) == []
