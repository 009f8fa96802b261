"""Handing messages to the delivery queue: after commit, by the pipeline and by the
sweeper, each tenant's own; and the thin delivery tasks."""

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.models import Message, MessageStatus
from channels_delivery.retry import max_attempts
from channels_delivery.services.delivery import message_deliver
from channels_delivery.services.dispatch import (
    SENDING_GAVE_UP,
    SENDING_TIMED_OUT,
    messages_enqueue,
    messages_sweep,
)
from channels_delivery.services.integrations import integration_create
from channels_delivery.tasks import messages_deliver, messages_sweep_all
from rules_engine.event_types import event_types_forget
from rules_engine.models import Event, Subscriber
from rules_engine.services.event_types import event_type_save
from rules_engine.services.pipeline import event_process
from rules_engine.services.rules import rule_create
from rules_engine.services.templates import template_create
from tenants.models import Tenant
from tests.channels_delivery.conftest import Published
from tests.channels_delivery.sinks import HttpSink

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


def a_message(**fields: Any) -> Message:
    subscriber, _ = Subscriber.objects.get_or_create(
        external_id="ann", defaults={"phone": "+447700900123"}
    )
    event = Event.objects.create(event_type_key="order.shipped", payload={})
    values: dict[str, Any] = {
        "event": event,
        "subscriber": subscriber,
        "channel": "sms",
        "content": {"text": "hello"},
    }
    values.update(fields)
    return Message.objects.create(**values)


def published_ids(delivered: Published) -> list[str]:
    return sorted(message_id for _, ids, _ in delivered for message_id in ids)


# --- after commit ---------------------------------------------------------------------


def test_enqueue_publishes_after_commit_in_chunks_with_the_schema(
    tenant_a: Tenant, django_capture_on_commit_callbacks: Any, delivered: Published
) -> None:
    ids = [uuid.uuid4() for _ in range(250)]
    with tenant_context(tenant_a):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            messages_enqueue(message_ids=ids)
        assert delivered == []  # nothing before the commit
        for callback in callbacks:
            callback()
    assert [(schema, len(chunk), countdown) for schema, chunk, countdown in delivered] == [
        ("alpha", 100, 0.0),
        ("alpha", 100, 0.0),
        ("alpha", 50, 0.0),
    ]
    assert published_ids(delivered) == sorted(str(i) for i in ids)


def test_messages_of_many_commits_inside_a_gathered_block_go_out_together(
    tenant_a: Tenant, django_capture_on_commit_callbacks: Any, delivered: Published
) -> None:
    from channels_delivery.services.dispatch import messages_enqueue_gathered

    events = [[uuid.uuid4() for _ in range(60)] for _ in range(3)]
    with tenant_context(tenant_a), messages_enqueue_gathered():
        for ids in events:  # one commit per event, as the pipeline task does
            with django_capture_on_commit_callbacks(execute=True):
                messages_enqueue(message_ids=ids)
        # Nested: the outer block publishes.
        with messages_enqueue_gathered(), django_capture_on_commit_callbacks(execute=True):
            messages_enqueue(message_ids=[uuid.uuid4()], slow_lane=True)
        assert delivered == []
        assert delivered.slow == []
    assert [len(chunk) for _, chunk, _ in delivered] == [100, 80]
    assert published_ids(delivered) == sorted(str(i) for ids in events for i in ids)
    assert len(delivered.slow) == 1


def test_a_failed_publish_is_logged_not_raised(
    tenant_a: Tenant,
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from channels_delivery.services import dispatch

    def broker_down(
        schema: str, ids: list[str], countdown: float = 0.0, slow_lane: bool = False
    ) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(dispatch, "publish_to_delivery", broker_down)
    with tenant_context(tenant_a), django_capture_on_commit_callbacks(execute=True):
        messages_enqueue(message_ids=[uuid.uuid4()])
    assert "the sweeper will publish them" in caplog.text


def test_the_pipeline_hands_due_messages_over_after_commit(
    tenant_a: Tenant, django_capture_on_commit_callbacks: Any, delivered: Published
) -> None:
    with tenant_context(tenant_a):
        event_type_save(key="order.shipped", category="orders")
        event_types_forget(schema_name=tenant_a.schema_name)
        Subscriber.objects.create(external_id="ann", email="ann@example.com", name="Ann")
        template_create(
            key="shipped-email",
            channel="email",
            variants={"en": {"subject": "Shipped", "text": "Hi {{ subscriber.name }}"}},
            fallback_locale="en",
            created_by="test",
        )
        base: dict[str, Any] = {
            "event_type_key": "order.shipped",
            "actions": [{"channel": "email", "template": "shipped-email"}],
            "recipients": {"kind": "event"},
            "created_by": "test",
        }
        rule_create(name="now", **base)
        rule_create(name="later", delay_seconds=600, **base)
        event = Event.objects.create(event_type_key="order.shipped", recipients=["ann"])
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            event_process(event_id=event.id)
        assert delivered == []  # nothing before the commit
        for callback in callbacks:
            callback()
        messages = list(Message.objects.filter(event=event))
        event_types_forget(schema_name=tenant_a.schema_name)
    assert len(messages) == 2
    (due,) = [message for message in messages if message.send_after is None]
    # The delayed one waits for the sweeper.
    assert delivered == [("alpha", [str(due.id)], 0.0)]


# --- the sweeper ------------------------------------------------------------------------


def test_the_sweeper_publishes_what_is_due_and_nothing_else(
    tenant_a: Tenant, django_capture_on_commit_callbacks: Any, delivered: Published
) -> None:
    now = timezone.now()
    with tenant_context(tenant_a):
        retry_due = a_message(next_attempt_at=now + timedelta(minutes=5))
        scheduled = a_message(send_after=now + timedelta(minutes=10))
        future = a_message(send_after=now + timedelta(hours=3))
        retry_later = a_message(next_attempt_at=now + timedelta(hours=2))
        fresh = a_message()  # just published by the pipeline: not yet
        sent = a_message(status=MessageStatus.SENT)
        later = now + timedelta(minutes=30)
        with django_capture_on_commit_callbacks(execute=True):
            assert messages_sweep(now=now) == 0
        assert delivered == []
        with django_capture_on_commit_callbacks(execute=True):
            assert messages_sweep(now=later) == 3
        # ``fresh`` counts as a lost publish once the grace period is over.
        assert published_ids(delivered) == sorted(str(m.id) for m in (retry_due, scheduled, fresh))
        assert {schema for schema, _, _ in delivered} == {"alpha"}
        # Published once: the next sweep leaves them to that task for a grace period.
        delivered.clear()
        with django_capture_on_commit_callbacks(execute=True):
            assert messages_sweep(now=later + timedelta(seconds=10)) == 0
        assert delivered == []
        untouched = {m.pk: m.status for m in Message.objects.filter(pk__in=[future.pk, sent.pk])}
        assert untouched == {future.pk: "queued", sent.pk: "sent"}
        assert Message.objects.get(pk=retry_later.pk).status == "queued"


def test_the_sweeper_queues_a_message_stuck_sending(
    tenant_a: Tenant, django_capture_on_commit_callbacks: Any, delivered: Published, settings: Any
) -> None:
    now = timezone.now()
    with tenant_context(tenant_a):
        stuck = a_message(status=MessageStatus.SENDING, attempt_count=1)
        poison = a_message(status=MessageStatus.SENDING, attempt_count=max_attempts())
        with django_capture_on_commit_callbacks(execute=True):
            assert messages_sweep(now=now) == 0
        later = now + timedelta(seconds=settings.HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS + 1)
        with django_capture_on_commit_callbacks(execute=True):
            assert messages_sweep(now=later) == 1
        stored = Message.objects.get(pk=stuck.pk)
        given_up = Message.objects.get(pk=poison.pk)
    assert (stored.status, stored.error) == ("queued", SENDING_TIMED_OUT)
    # Out of attempts: failed, not passed round again.
    assert (given_up.status, given_up.error, given_up.failed_at) == (
        "failed",
        SENDING_GAVE_UP,
        later,
    )
    assert delivered == [("alpha", [str(stuck.id)], 0.0)]


def test_the_sweeper_task_runs_in_every_tenant(
    tenant_a: Tenant,
    tenant_b: Tenant,
    django_capture_on_commit_callbacks: Any,
    delivered: Published,
    settings: Any,
) -> None:
    settings.HERALD_DELIVERY_GRACE_SECONDS = 0
    with tenant_context(tenant_a):
        in_a = a_message()
    with tenant_context(tenant_b):
        in_b = a_message()
    with django_capture_on_commit_callbacks(execute=True):
        messages_sweep_all()
    assert sorted(delivered) == sorted(
        [("alpha", [str(in_a.id)], 0.0), ("beta", [str(in_b.id)], 0.0)]
    )


# --- tenants stay apart -----------------------------------------------------------------


def test_a_task_for_one_tenant_never_touches_anothers_messages(
    tenant_a: Tenant,
    tenant_b: Tenant,
    sink: HttpSink,
    django_capture_on_commit_callbacks: Any,
    delivered: Published,
    settings: Any,
) -> None:
    settings.HERALD_DELIVERY_GRACE_SECONDS = 0
    with tenant_context(tenant_a):
        integration_create(
            channel="sms", provider="http_gateway", name="gw", config={"url": f"{sink.url}/s"}
        )
        theirs = a_message()
    with tenant_context(tenant_b):
        # Beta's task is handed alpha's id: beta's schema has no such message.
        report = message_deliver(message_id=theirs.id)
        assert (report.attempted, report.status) == (False, "")
        messages_deliver([str(theirs.id)])
        with django_capture_on_commit_callbacks(execute=True):
            assert messages_sweep(now=timezone.now() + timedelta(minutes=1)) == 0
    assert delivered == []
    assert sink.requests == []
    with tenant_context(tenant_a):
        assert Message.objects.get(pk=theirs.pk).status == "queued"
        messages_deliver([str(theirs.id)])
        assert Message.objects.get(pk=theirs.pk).status == "sent"
    assert len(sink.requests) == 1


# --- the task -----------------------------------------------------------------------------


def test_the_task_skips_an_id_that_is_not_a_uuid_and_delivers_the_rest(
    tenant_a: Tenant, sink: HttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    with tenant_context(tenant_a):
        integration_create(
            channel="sms", provider="http_gateway", name="gw", config={"url": f"{sink.url}/s"}
        )
        message = a_message()
        messages_deliver(["not-a-uuid", str(message.id)])
        assert Message.objects.get(pk=message.pk).status == "sent"
    assert "'not-a-uuid', which is not a message id" in caplog.text
