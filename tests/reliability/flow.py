"""The whole path a tenant's event takes, committed, for the reliability tests.

An event type, a webhook template and a rule that sends every event of the
type to the subscribers it names, and a webhook endpoint on a local sink:
what an event posted to the API becomes is one webhook message per event,
POSTed to ``path`` on the sink with the message's id as ``webhook-id``.
Everything is written from a connection of its own and committed (so worker
processes see it), and removed again by ``forget``.
"""

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from celery.signals import after_task_publish
from django.conf import settings
from django.test import Client
from django.utils import timezone

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message, WebhookEndpoint
from channels_delivery.services.dispatch import messages_sweep
from channels_delivery.services.webhooks import endpoint_create
from rules_engine.event_types import event_types_forget
from rules_engine.models import Event, EventType, Rule, Subscriber, Template
from rules_engine.services.event_types import event_type_save
from rules_engine.services.rules import rule_create
from rules_engine.services.sweeper import events_sweep
from rules_engine.services.templates import template_create
from tenants.models import ApiKey, Tenant
from tests.channels_delivery.sinks import HttpSink, SinkRequest
from tests.channels_delivery.test_worker_kill import in_tenant
from tests.factories import api_key_issue

T = TypeVar("T")

POLL_SECONDS = 0.02
WORKER_ENV = {"HERALD_ALLOW_LOOPBACK_URLS": "true"}  # the sink listens on 127.0.0.1
DELIVERY_QUEUE = settings.CELERY_TASK_ROUTES["channels_delivery.*"]["queue"]
PIPELINE_QUEUE = settings.CELERY_TASK_ROUTES["rules_engine.*"]["queue"]
PIPELINE_TASK = "rules_engine.event_process_many"
DELIVER_TASK = "channels_delivery.messages_deliver"
BODY_TEMPLATE = '{"event": {{ event.type|tojson }}, "n": {{ event.payload.n|tojson }}}'


@dataclass(frozen=True, kw_only=True)
class Flow:
    """One event type's way to one endpoint of the sink."""

    tenant: Tenant
    sink: HttpSink
    event_type: str
    path: str
    endpoint_id: int

    def requests(self) -> list[SinkRequest]:
        return [request for request in list(self.sink.requests) if request.path == self.path]

    def webhook_ids(self) -> list[str]:
        return [request.headers["webhook-id"] for request in self.requests()]


def flow_create(tenant: Tenant, sink: HttpSink, *, name: str) -> Flow:
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    event_type, path = f"rel.{tag}", f"/{tag}"

    def create() -> Flow:
        event_type_save(key=event_type, category="reliability")
        template_create(
            key=tag, channel=Channel.WEBHOOK, variants={"en": {"body": BODY_TEMPLATE}},
            fallback_locale="en", created_by="test",
        )  # fmt: skip
        rule_create(
            name=tag, event_type_key=event_type,
            actions=[{"channel": "webhook", "template": tag}],
            recipients={"kind": "event"}, created_by="test",
        )  # fmt: skip
        endpoint = endpoint_create(url=f"{sink.url}{path}", event_types=[event_type])
        return Flow(tenant=tenant, sink=sink, event_type=event_type, path=path,
                    endpoint_id=endpoint.pk)  # fmt: skip

    flow = in_tenant(tenant, create)
    event_types_forget(schema_name=tenant.schema_name)
    return flow


def flow_forget(flow: Flow) -> None:
    """Remove what the flow committed (messages and attempts go with the events)."""

    def delete() -> None:
        Subscriber.objects.filter(external_id__startswith=f"{flow.event_type}-").delete()
        Event.objects.filter(event_type_key=flow.event_type).delete()
        Rule.objects.filter(event_type__key=flow.event_type).delete()
        Template.objects.filter(key=flow.event_type.removeprefix("rel.")).delete()
        EventType.objects.filter(key=flow.event_type).delete()
        WebhookEndpoint.objects.filter(pk=flow.endpoint_id).delete()

    in_tenant(flow.tenant, delete)
    event_types_forget(schema_name=flow.tenant.schema_name)


def events_post(flow: Flow, count: int, *, client: Client | None = None) -> list[str]:
    """``count`` events of the flow accepted by the API (each its own request and
    commit, as separate clients send them), each naming a subscriber of its own."""

    def send() -> list[str]:
        token = api_key_issue(tenant=flow.tenant, scopes=["events:write"]).token
        api = client or Client()
        ids = []
        try:
            for n in range(count):
                response = api.post(
                    "/api/v1/events",
                    {"event": flow.event_type, "to": [{"id": f"{flow.event_type}-{n}"}],
                     "payload": {"n": n}},
                    content_type="application/json",
                    headers={"Authorization": f"Bearer {token}"},
                )  # fmt: skip
                assert response.status_code == 202, response.content
                ids.append(response.json()["id"])
        finally:
            ApiKey.objects.filter(tenant=flow.tenant, revoked_at=None).delete()
        return ids

    result: list[str] = in_tenant(flow.tenant, send)
    return result


def past_the_grace(*, grace_seconds: int) -> datetime:
    """The clock a sweep sees once every row written until now is past the grace."""
    return timezone.now() + timedelta(seconds=grace_seconds + 1)


def events_swept(tenant: Tenant, *, now: datetime) -> set[str]:
    """The ids of the events a sweep at ``now`` handed the pipeline. Ids, not the
    sweep's count: rows another test left behind must not decide this one."""
    with tasks_published(PIPELINE_TASK) as published:
        in_tenant(tenant, lambda: events_sweep(now=now))
    return {event_id for chunk in published for event_id in chunk}


def messages_swept(tenant: Tenant, *, now: datetime) -> set[str]:
    """The ids of the messages a sweep at ``now`` published for delivery."""
    with tasks_published(DELIVER_TASK) as published:
        in_tenant(tenant, lambda: messages_sweep(now=now))
    return {message_id for chunk in published for message_id in chunk}


def flow_messages(flow: Flow) -> list[Message]:
    return in_tenant(
        flow.tenant,
        lambda: list(Message.objects.filter(event__event_type_key=flow.event_type)),
    )


def flow_events(flow: Flow) -> dict[str, str]:
    """Event id -> status."""

    def read() -> dict[str, str]:
        rows = Event.objects.filter(event_type_key=flow.event_type).values_list("id", "status")
        return {str(event_id): status for event_id, status in rows}

    return in_tenant(flow.tenant, read)


def wait_for(
    what: str, ready: Callable[[], T], *, timeout: float, log: list[str] | None = None
) -> T:
    """Poll ``ready`` until it returns something true, and return that; on failure
    show the end of the worker's ``log``."""
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


def tasks_settled(log: list[str], task_name: str) -> bool:
    """Every ``task_name`` task the worker received has finished (none in flight)."""
    lines = list(log)
    received = [line for line in lines if f"Task {task_name}[" in line and " received" in line]
    finished = [
        line for line in lines
        if f"{task_name}[" in line and (" succeeded " in line or " raised " in line)
    ]  # fmt: skip
    return len(received) == len(finished)


@contextmanager
def tasks_published(task_name: str) -> Iterator[list[Any]]:
    """The argument lists of the ``task_name`` tasks this process publishes in the block."""
    published: list[Any] = []

    def seen(sender: Any = None, body: Any = None, **_: Any) -> None:
        if sender == task_name:
            published.append(body[0][0] if body else None)  # body: (args, kwargs, embed)

    after_task_publish.connect(seen, weak=False)
    try:
        yield published
    finally:
        after_task_publish.disconnect(seen)
