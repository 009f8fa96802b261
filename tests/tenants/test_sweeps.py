"""Beat work over every tenant: one tenant's failure never holds up the others'."""

from collections.abc import Callable
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import connection, transaction

from channels_delivery.tasks import messages_sweep_all, stats_fold_all
from rules_engine.tasks import digests_flush_all, events_sweep_all
from tenants.db import tenant_connection
from tenants.models import Tenant
from tenants.services import tenant_set_active
from tenants.sweeps import tenants_each

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


@pytest.mark.parametrize(
    ("task", "services", "what"), BEAT_TASKS, ids=lambda value: getattr(value, "name", "")
)
def test_a_failing_tenant_does_not_stop_the_beat_task_for_the_others(
    task: Any,
    services: list[str],
    what: str,
    tenant_a: Tenant,
    tenant_b: Tenant,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # alpha comes first (slug order) and fails in its first service.
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

    assert tenants_each(work=work, what="counting") == 1
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
