"""The tenant-aware Celery app, exercised through a real worker process.

The worker runs `celery -A herald.celery:app worker` against the test database
and the test Redis, so these tests prove what production does: the schema
travels with the task, a task without a tenant fails, redelivery is capped.
"""

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django_tenants.utils import tenant_context

from herald.celery import app
from herald.tasks import TenantMissing, redis_client
from tenants.db import tenant_connection
from tenants.models import Tenant
from tests.celery_probe import count_runs, record_schema
from tests.workers import celery_worker, routing_reset

ROOT = Path(__file__).resolve().parents[2]
WORKER_START_TIMEOUT = 60.0
RESULT_TIMEOUT = 20.0
MAX_DELIVERIES = 2


@pytest.fixture(scope="module")
def worker(django_db_setup: None, django_db_blocker: Any) -> Iterator[subprocess.Popen[str]]:
    queue = f"herald-test-{uuid.uuid4().hex[:8]}"
    with celery_worker(
        queues=queue,
        include=["tests.celery_probe"],
        env={"HERALD_TASK_MAX_DELIVERIES": str(MAX_DELIVERIES)},
    ) as process:
        app.conf.task_default_queue = queue
        app.conf.task_routes = {"tests.*": {"queue": queue}}
        routing_reset()
        try:
            yield process
        finally:
            app.conf.task_default_queue = settings.CELERY_TASK_DEFAULT_QUEUE
            app.conf.task_routes = settings.CELERY_TASK_ROUTES
            routing_reset()
            redis_client().delete(queue)


def wait_for_key(key: str, timeout: float = RESULT_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = redis_client().get(key)
        if value is not None:
            return json.loads(value)
        time.sleep(0.05)
    pytest.fail(f"nothing appeared at {key} within {timeout} s")


@pytest.mark.worker
@pytest.mark.django_db
def test_task_runs_in_the_schema_it_was_sent_from(worker: Any) -> None:
    for slug in ("alpha", "beta"):
        token = uuid.uuid4().hex
        with tenant_context(Tenant.objects.get(slug=slug)):
            record_schema.delay(token)
        ran = wait_for_key(f"test:ran:{token}")
        assert ran["schema"] == slug
        assert ran["users"] == [f"admin@{slug}.example.com"]


@pytest.mark.worker
@pytest.mark.django_db
def test_task_sent_from_public_schema_is_refused_at_send_time(worker: Any) -> None:
    assert tenant_connection.schema_name == "public"
    with pytest.raises(TenantMissing, match="tenant"):
        record_schema.delay(uuid.uuid4().hex)


@pytest.mark.worker
@pytest.mark.django_db
@pytest.mark.parametrize("headers", [{"_schema_name": "public"}, {}])
def test_task_arriving_without_a_tenant_fails_in_the_worker(worker: Any, headers: dict) -> None:
    token = uuid.uuid4().hex
    # Bypass both guards on the sending side, as a foreign producer would.
    result = Celery.send_task(
        app, "tests.record_schema", args=[token], headers=headers, queue=app.conf.task_default_queue
    )
    failure = wait_for_key(f"test:failed:{result.id}")
    assert failure["type"] == "TenantMissing"
    assert "without a tenant schema" in failure["message"]
    assert redis_client().get(f"test:ran:{token}") is None


@pytest.mark.worker
@pytest.mark.django_db
def test_redelivery_is_capped(worker: Any) -> None:
    token = uuid.uuid4().hex
    task_id = f"poison-{token}"
    with tenant_context(Tenant.objects.get(slug="alpha")):
        # The same message delivered again and again, as after repeated worker deaths.
        for _ in range(MAX_DELIVERIES + 1):
            count_runs.apply_async(args=[token], task_id=task_id)
    failure = wait_for_key(f"test:failed:{task_id}")
    assert failure["type"] == "RedeliveryLimitExceeded"
    assert int(redis_client().get(f"test:runs:{token}") or 0) == MAX_DELIVERIES


@pytest.mark.django_db
def test_direct_call_needs_a_tenant_too(tenant_a: Tenant) -> None:
    with pytest.raises(TenantMissing):
        record_schema(uuid.uuid4().hex)


def test_reliability_settings() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    # (the worker fixture above reroutes tests.* while it runs; read the settings)
    assert settings.CELERY_TASK_ROUTES["channels_delivery.*"] == {"queue": "delivery"}
    assert settings.CELERY_TASK_ROUTES["rules_engine.*"] == {"queue": "pipeline"}
    assert conf.broker_transport_options["visibility_timeout"] >= 3600
