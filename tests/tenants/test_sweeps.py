"""Beat work over every tenant: one tenant's failure never holds up the others'."""

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.models import (
    CallbackStatus,
    Message,
    MessageStatus,
    StatsDelta,
    StatusCallback,
    WebhookEndpoint,
)
from channels_delivery.services.callbacks import callbacks_sweepable
from channels_delivery.services.dispatch import messages_sweepable
from channels_delivery.services.stats import stats_foldable
from channels_delivery.tasks import messages_sweep_all, stats_fold_all
from rules_engine.models import DigestBatch, Event, EventStatus, Subscriber
from rules_engine.services.sweeper import events_sweepable
from rules_engine.tasks import digests_flush_all, events_sweep_all
from tenants.db import tenant_connection
from tenants.models import Tenant
from tenants.services import tenant_set_active
from tenants.sweeps import Pending, Swept, tenants_each
from tests.ports import free_port
from tests.threads import in_own_connection, own_backend_terminate

pytestmark = pytest.mark.django_db


def visited_schemas(fail_in: str = "") -> tuple[list[str], Callable[..., Any]]:
    seen: list[str] = []

    def work(*args: Any, **kwargs: Any) -> Any:
        seen.append(tenant_connection.schema_name)
        if tenant_connection.schema_name == fail_in:
            raise RuntimeError(f"{fail_in} is broken")
        return 0

    return seen, work


# Each beat task, and the service(s) it runs in every schema.
BEAT_TASKS = [
    (events_sweep_all, ["rules_engine.services.sweeper.events_sweep"], "sweeping the events"),
    (
        messages_sweep_all,
        [
            "channels_delivery.services.dispatch.messages_sweep",
            "channels_delivery.services.callbacks.callbacks_sweep",
        ],
        "sweeping the messages",
    ),
    (stats_fold_all, ["channels_delivery.services.stats.stats_fold"], "folding the analytics"),
    (digests_flush_all, ["rules_engine.tasks.digests_flush_due"], "sending the digests"),
]
each_beat_task = pytest.mark.parametrize(
    ("task", "services", "what"), BEAT_TASKS, ids=lambda value: getattr(value, "name", "")
)


@each_beat_task
def test_a_failing_tenant_does_not_stop_the_beat_task_for_the_others(
    task: Any,
    services: list[str],
    what: str,
    tenant_a: Tenant,
    tenant_b: Tenant,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Both tenants have work (as far as the probe knows); alpha comes first
    # (slug order) and fails in its first service.
    monkeypatch.setattr("tenants.sweeps._probe_run", lambda probe: True)
    seen, work = visited_schemas(fail_in="alpha")
    for service in services:
        monkeypatch.setattr(service, work)
    task()
    assert seen[0] == "alpha"
    assert "beta" in seen
    assert f"{what} of alpha failed" in caplog.text
    assert "RuntimeError: alpha is broken" in caplog.text


def test_a_database_error_in_one_schema_leaves_the_next_schema_working(
    tenant_a: Tenant, tenant_b: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    counted: dict[str, int] = {}

    def work(tenant: Tenant) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            if tenant.slug == "alpha":
                cursor.execute("SELECT count(*) FROM no_such_table")
            else:
                cursor.execute("SELECT count(*) FROM rules_engine_event")
            counted[tenant.slug] = cursor.fetchone()[0]

    assert tenants_each(work=work, what="counting") == Swept(worked=1, idle=0, failed=1)
    assert counted == {"beta": 0}
    assert 'relation "no_such_table" does not exist' in caplog.text
    assert tenant_connection.schema_name == "public"


def test_suspended_tenants_are_skipped_unless_asked_for(tenant_a: Tenant, tenant_b: Tenant) -> None:
    tenant_set_active(tenant=tenant_b, is_active=False)
    seen: list[str] = []
    tenants_each(work=lambda tenant: seen.append(tenant.slug), what="x")
    assert seen == ["alpha"]
    seen.clear()
    tenants_each(work=lambda tenant: seen.append(tenant.slug), what="x", include_suspended=True)
    assert seen == ["alpha", "beta"]
    assert "public" not in seen


def test_a_task_out_of_time_stops_at_once(tenant_a: Tenant, tenant_b: Tenant) -> None:
    seen: list[str] = []

    def work(tenant: Tenant) -> None:
        seen.append(tenant.slug)
        raise SoftTimeLimitExceeded()

    with pytest.raises(SoftTimeLimitExceeded):
        tenants_each(work=work, what="x")
    assert seen == ["alpha"]
    assert tenant_connection.schema_name == "public"


# --- the probe: a tenant with nothing pending costs one query ---------------------------


def an_event(**fields: Any) -> Event:
    return Event.objects.create(event_type_key="order.shipped", payload={}, **fields)


def a_message(**fields: Any) -> Message:
    subscriber, _ = Subscriber.objects.get_or_create(external_id="ann")
    return Message.objects.create(
        event=an_event(), subscriber=subscriber, channel="sms", content={"text": "hi"}, **fields
    )


def a_callback(**fields: Any) -> StatusCallback:
    endpoint = WebhookEndpoint.objects.create(url="https://hooks.example.com/h")
    return StatusCallback.objects.create(
        endpoint=endpoint, type="message.sent", payload={}, **fields
    )


LONG_AGO = timedelta(hours=2)


@pytest.fixture
def nothing_pending(tenant_a: Tenant, tenant_b: Tenant) -> None:
    """Tests that run real workers may have committed rows in alpha or beta;
    this test's transaction removes them (the rollback puts them back)."""
    for tenant in (tenant_a, tenant_b):
        with tenant_context(tenant):
            DigestBatch.objects.all().delete()
            StatusCallback.objects.all().delete()
            Message.objects.all().delete()
            Event.objects.all().delete()
            StatsDelta.objects.all().delete()  # last: the deletes above count too


# (what a row of each kind the beat sweeps is, how to make it, which sweep claims it)
PENDING_ROWS: list[tuple[str, Callable[[datetime], object], Pending]] = [
    (
        "accepted event past the grace period",
        lambda old: an_event(created_at=old),
        lambda now: [events_sweepable(now=now)],
    ),
    (
        "scheduled event whose time has come",
        lambda old: an_event(send_at=old),
        lambda now: [events_sweepable(now=now)],
    ),
    (
        "queued event whose publish was lost",
        lambda old: an_event(status=EventStatus.QUEUED, dispatched_at=old),
        lambda now: [events_sweepable(now=now)],
    ),
    ("due message", lambda old: a_message(), lambda now: messages_sweepable(now=now)),
    (
        "message stuck sending",
        lambda old: a_message(status=MessageStatus.SENDING),
        lambda now: messages_sweepable(now=now),
    ),
    ("due callback", lambda old: a_callback(), lambda now: callbacks_sweepable(now=now)),
    (
        "callback stuck sending",
        lambda old: a_callback(status=CallbackStatus.SENDING),
        lambda now: callbacks_sweepable(now=now),
    ),
    (
        "analytics not folded yet",
        lambda old: StatsDelta.objects.create(hour=old, metric="sent", amount=1),
        lambda now: [stats_foldable()],
    ),
]


@pytest.mark.parametrize(
    ("kind", "make", "pending"), PENDING_ROWS, ids=[r[0] for r in PENDING_ROWS]
)
def test_the_probe_finds_each_kind_of_pending_row_in_its_own_tenant_only(
    kind: str,
    make: Callable[[datetime], object],
    pending: Pending,
    tenant_a: Tenant,
    tenant_b: Tenant,
) -> None:
    now = timezone.now()
    with tenant_context(tenant_a):
        made = make(now - LONG_AGO)
        if isinstance(made, Message | StatusCallback):
            # updated_at is set on every save: age the row the way time would.
            type(made).objects.filter(pk=made.pk).update(updated_at=now - LONG_AGO)
    seen: list[str] = []
    swept = tenants_each(
        work=lambda tenant: seen.append(tenant.slug), what="probing", pending=pending
    )
    assert seen == ["alpha"], kind
    assert swept == Swept(worked=1, idle=1, failed=0)


@pytest.mark.usefixtures("nothing_pending")
def test_a_row_not_due_yet_leaves_the_tenant_idle(tenant_a: Tenant, tenant_b: Tenant) -> None:
    with tenant_context(tenant_a):
        an_event(send_at=timezone.now() + timedelta(hours=1))
        a_message(send_after=timezone.now() + timedelta(hours=1))
        a_message(status=MessageStatus.SENDING)  # just claimed, not stuck
    seen: list[str] = []
    swept = tenants_each(
        work=lambda tenant: seen.append(tenant.slug),
        what="probing",
        pending=lambda now: [events_sweepable(now=now), *messages_sweepable(now=now)],
    )
    assert (seen, swept) == ([], Swept(worked=0, idle=2, failed=0))


@pytest.mark.usefixtures("nothing_pending")
@each_beat_task
def test_beat_tasks_skip_idle_tenants_with_one_query_each(
    task: Any,
    services: list[str],
    what: str,
    tenant_a: Tenant,
    tenant_b: Tenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen, work = visited_schemas()
    for service in services:
        monkeypatch.setattr(service, work)
    with CaptureQueriesContext(connection) as queries:
        task()
    assert seen == []
    statements = [
        query["sql"]
        for query in queries.captured_queries
        if not query["sql"].startswith("SET search_path")
    ]
    # The tenants list, then one probe per tenant.
    assert len(statements) == 3
    assert all(sql.startswith("SELECT EXISTS (") for sql in statements[1:])


# --- the database goes away mid-run ------------------------------------------------------


def test_a_lost_connection_is_made_again_and_the_run_goes_on(
    tenant_a: Tenant, tenant_b: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def work(tenant: Tenant) -> None:
        seen.append(tenant.slug)
        if tenant.slug == "alpha":
            own_backend_terminate()
        Event.objects.exists()  # in alpha: the server has closed the connection

    # In a thread with its own connection: the test's transaction would die with it.
    swept = in_own_connection(lambda: tenants_each(work=work, what="sweeping"))
    assert seen == ["alpha", "beta"]
    assert swept == Swept(worked=1, idle=0, failed=1)
    assert "sweeping of alpha failed" in caplog.text


def test_the_run_stops_when_the_database_can_not_be_reached(
    tenant_a: Tenant, tenant_b: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """One error for the run, not one per tenant (each a Sentry event)."""
    seen: list[str] = []

    def work(tenant: Tenant) -> None:
        seen.append(tenant.slug)
        own_backend_terminate()
        # Where this connection would connect again, nothing listens.
        connection.settings_dict = {**connection.settings_dict, "PORT": str(free_port())}
        Event.objects.exists()

    with pytest.raises(OperationalError):
        in_own_connection(lambda: tenants_each(work=work, what="sweeping"))
    assert seen == ["alpha"]
    assert "sweeping stopped at alpha: the database is unreachable" in caplog.text
