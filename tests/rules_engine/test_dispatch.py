"""The pipeline publisher: committed events reach the pipeline, gathered, off the request path."""

import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import tenant_context

from rules_engine.models import Event, EventStatus
from rules_engine.services.dispatch import PUBLISH_CHUNK, PipelinePublisher
from tenants.models import ApiKey, Tenant
from tests.factories import api_key_issue
from tests.threads import in_own_connection
from tests.workers import celery_worker, routing_reset

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[str, list[str], float]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)

    def __call__(self, schema: str, ids: list[str]) -> None:
        with self.lock:
            if self.fail_first:
                self.fail_first -= 1
                raise ConnectionError("broker down")
            self.sent.append((schema, list(ids), time.monotonic()))
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while sum(len(ids) for _, ids, _ in self.sent) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrived.wait(left)
            return [i for _, ids, _ in self.sent for i in ids]


def test_ids_gathered_over_the_interval_go_out_together_per_schema(settings: Any) -> None:
    settings.HERALD_PIPELINE_PUBLISH_MS = 200
    recorder = Recorder()
    publisher = PipelinePublisher(publish=recorder)
    started = time.monotonic()
    for n in range(5):
        publisher.add(schema_name="alpha", event_ids=[f"a{n}"])
        publisher.add(schema_name="beta", event_ids=[f"b{n}"])
    assert recorder.sent == []  # nothing before the interval ends
    expected = [f"a{n}" for n in range(5)] + [f"b{n}" for n in range(5)]
    assert sorted(recorder.wait_for(10)) == sorted(expected)
    assert [(schema, len(ids)) for schema, ids, _ in recorder.sent] == [("alpha", 5), ("beta", 5)]
    assert all(at - started >= 0.15 for _, _, at in recorder.sent)


def test_a_full_chunk_goes_out_without_waiting_for_the_interval(settings: Any) -> None:
    settings.HERALD_PIPELINE_PUBLISH_MS = 60_000
    recorder = Recorder()
    publisher = PipelinePublisher(publish=recorder)
    started = time.monotonic()
    publisher.add(schema_name="alpha", event_ids=[str(n) for n in range(PUBLISH_CHUNK * 2 + 5)])
    assert len(recorder.wait_for(PUBLISH_CHUNK * 2 + 5)) == PUBLISH_CHUNK * 2 + 5
    assert [len(ids) for _, ids, _ in recorder.sent] == [PUBLISH_CHUNK, PUBLISH_CHUNK, 5]
    assert time.monotonic() - started < 5


def test_flush_publishes_what_is_pending_now(settings: Any) -> None:
    settings.HERALD_PIPELINE_PUBLISH_MS = 60_000
    recorder = Recorder()
    publisher = PipelinePublisher(publish=recorder)
    publisher.add(schema_name="alpha", event_ids=[uuid.UUID(int=1)])
    assert publisher.flush() == 1
    assert [(s, ids) for s, ids, _ in recorder.sent] == [("alpha", [str(uuid.UUID(int=1))])]
    assert publisher.flush() == 0


def test_a_failed_publish_is_logged_and_the_publisher_carries_on(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.HERALD_PIPELINE_PUBLISH_MS = 20
    recorder = Recorder(fail_first=1)
    publisher = PipelinePublisher(publish=recorder)
    with caplog.at_level(logging.ERROR, logger="rules_engine.services.dispatch"):
        publisher.add(schema_name="alpha", event_ids=["lost"])
        deadline = time.monotonic() + 5
        while recorder.fail_first and time.monotonic() < deadline:
            time.sleep(0.01)
        publisher.add(schema_name="alpha", event_ids=["next"])
        assert recorder.wait_for(1) == ["next"]
    assert "sweeper will dispatch them" in caplog.text


def test_at_zero_interval_ids_are_published_in_the_callers_thread(settings: Any) -> None:
    settings.HERALD_PIPELINE_PUBLISH_MS = 0
    recorder = Recorder()
    publisher = PipelinePublisher(publish=recorder)
    publisher.add(schema_name="alpha", event_ids=["now"])
    assert [ids for _, ids, _ in recorder.sent] == [["now"]]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_gets_its_own_publisher_thread(settings: Any) -> None:
    """gunicorn forks its workers: the parent's thread does not exist in the child."""
    settings.HERALD_PIPELINE_PUBLISH_MS = 20
    read_end, write_end = os.pipe()

    def to_pipe(schema: str, ids: list[str]) -> None:
        os.write(write_end, (",".join(ids) + "\n").encode())

    publisher = PipelinePublisher(publish=to_pipe)
    publisher.add(schema_name="alpha", event_ids=["parent"])  # starts the parent's thread
    pid = os.fork()
    if pid == 0:  # the child: publish, wait for the thread, leave without cleanup
        try:
            publisher.add(schema_name="alpha", event_ids=["child"])
            time.sleep(1)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    os.close(write_end)
    with os.fdopen(read_end) as lines:
        assert sorted(lines.read().split()) == ["child", "parent"]


# --- end to end: API -> commit -> publisher thread -> broker -> worker -------------


@pytest.fixture(scope="module")
def pipeline_worker(django_db_setup: None) -> Iterator[subprocess.Popen[str]]:
    routing_reset()  # rules_engine.* to the pipeline queue, as configured
    with celery_worker(queues="pipeline") as process:
        yield process


def test_committed_events_reach_the_pipeline_through_the_publisher_thread(
    tenant_a: Tenant, settings: Any, pipeline_worker: subprocess.Popen[str]
) -> None:
    settings.HERALD_PIPELINE_PUBLISH_MS = 20
    marker = f"dispatch-{uuid.uuid4().hex[:8]}"

    def send() -> list[str]:
        token = api_key_issue(tenant=tenant_a, scopes=["events:write"]).token
        client = Client(headers={"Authorization": f"Bearer {token}"})
        ids = []
        for n in range(3):
            response = client.post(
                "/api/v1/events",
                {"event": marker, "payload": {"n": n}},
                content_type="application/json",
            )
            assert response.status_code == 202, response.content
            ids.append(response.json()["id"])
        batch = client.post(
            "/api/v1/events/batch",
            {"events": [{"event": marker, "payload": {"n": n}} for n in range(3, 10)]},
            content_type="application/json",
        )
        assert batch.status_code == 202, batch.content
        return ids + [item["id"] for item in batch.json()["results"]]

    def statuses() -> dict[str, str]:
        with tenant_context(tenant_a):
            return {
                str(event_id): status
                for event_id, status in Event.objects.filter(event_type_key=marker).values_list(
                    "id", "status"
                )
            }

    def clean() -> None:
        with tenant_context(tenant_a):
            Event.objects.filter(event_type_key=marker).delete()
        ApiKey.objects.filter(tenant=tenant_a, revoked_at=None).delete()

    try:
        ids = in_own_connection(send)
        assert len(ids) == 10
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = in_own_connection(statuses)
            if set(seen.values()) == {EventStatus.NO_MATCH}:
                break
            time.sleep(0.2)
        assert seen == dict.fromkeys(ids, EventStatus.NO_MATCH)
    finally:
        in_own_connection(clean)
