"""The broker restarted with events in its queues (DESIGN.md, "The rows are the
outbox"): every event the API accepted is delivered once the broker is back.

A Redis of the test's own (no persistence) is the broker of a real delivery
worker and of the API in this process. The API accepts EVENTS events, whose
pipeline tasks wait in that Redis' queue; the Redis is killed (SIGKILL: the
queue is gone) and started again, empty, on the same port. The delivery worker
lives through it and reconnects; a pipeline worker starts; the events sweeper,
past the grace period, hands the pipeline every accepted event again, and each
event's message reaches the sink exactly once.
"""

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis
from django.conf import settings
from kombu import Connection

from channels_delivery.models import MessageStatus
from herald.celery import app
from rules_engine.models import EventStatus
from rules_engine.services.dispatch import pipeline_publisher
from tests.ports import free_port
from tests.reliability.flow import (
    DELIVERY_QUEUE,
    PIPELINE_QUEUE,
    WORKER_ENV,
    Flow,
    events_post,
    events_swept,
    flow_events,
    flow_messages,
    messages_swept,
    past_the_grace,
    tasks_settled,
    wait_for,
)
from tests.workers import celery_worker

pytestmark = [pytest.mark.worker, pytest.mark.django_db, pytest.mark.timeout(90)]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
EVENTS = 5
START_SECONDS = 10.0  # for redis-server to answer PING
WAIT_SECONDS = 30.0  # the worker reconnects with a back-off of a few seconds
DELIVER = "channels_delivery.messages_deliver"
BROKER_ENV = "CELERY_BROKER_URL"


@dataclass(kw_only=True)
class ThrowawayRedis:
    """A redis-server on a port of its own that keeps nothing on disk."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: whatever its queues held is gone."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=START_SECONDS)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=START_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()


def app_pools_forget() -> None:
    """The app's connection and producer pools were made for the broker it had;
    the next publish makes them for the one it has now. None is closed: kombu
    keeps pools in a registry by URL and hands a closed one out again for its
    URL, so closing the wrong one (the shared broker's, if a publish made it the
    app's pool meanwhile) broke every later publish of the run."""
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def broker() -> Iterator[ThrowawayRedis]:
    """A throwaway Redis, the broker of this process (the API) and of the workers
    started while it is in use."""
    if not os.access(REDIS_SERVER, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{REDIS_SERVER} is missing; CI must provide redis-server")
        pytest.skip(f"no redis-server at {REDIS_SERVER} to start a throwaway broker with")
    server = ThrowawayRedis()
    server.start()
    # Workers get CELERY_BROKER_URL from the settings (tests.workers). This process's
    # app reads it from three places, first found wins: the CELERY_BROKER_URL
    # environment variable (which `make test` sets: the reason this test failed
    # only there), a value set on the conf, and Django's settings. All three point
    # at the throwaway broker while it is in use, and are put back here, not by
    # pytest's fixtures, whose teardown would come after the pools are forgotten:
    # a publish in between would bind them to the dead broker.
    shared, interval = settings.CELERY_BROKER_URL, settings.HERALD_PIPELINE_PUBLISH_MS
    environment = os.environ.get(BROKER_ENV)
    # Events are published in the request's thread as they commit, not by the
    # publisher's background thread, whose timing the full suite's load decides.
    settings.HERALD_PIPELINE_PUBLISH_MS = 0
    settings.CELERY_BROKER_URL = os.environ[BROKER_ENV] = server.url
    app.conf.broker_url = server.url
    app_pools_forget()
    try:
        yield server
    finally:
        pipeline_publisher.flush()  # what this test's events still owe the throwaway broker
        settings.CELERY_BROKER_URL, settings.HERALD_PIPELINE_PUBLISH_MS = shared, interval
        if environment is None:
            os.environ.pop(BROKER_ENV, None)
        else:
            os.environ[BROKER_ENV] = environment
        # A value set on the conf wins over Django's settings for good: removed, not restored.
        app.conf.changes.pop("broker_url", None)
        app_pools_forget()
        server.stop()
    assert app.connection_for_write().as_uri() == Connection(shared).as_uri()


def broker_state(broker: ThrowawayRedis, caplog: pytest.LogCaptureFixture) -> str:
    """Where this process publishes now, and what each broker holds: the failure
    message of a publish that did not reach the throwaway broker."""
    with app.connection_for_write() as connection:
        uri = connection.as_uri()
    lines = [
        f"app publishes to {uri}; throwaway broker {broker.url}",
        f"{BROKER_ENV}={os.environ.get(BROKER_ENV)} setting={settings.CELERY_BROKER_URL}",
        f"{PIPELINE_QUEUE} holds {broker.client().llen(PIPELINE_QUEUE)} on the throwaway",
        f"throwaway keys: {sorted(broker.client().keys('*'))}",
        f"task_always_eager={app.conf.task_always_eager} "
        f"route={app.amqp.router.route({}, 'rules_engine.event_process_many')}",
        f"HERALD_PIPELINE_PUBLISH_MS={settings.HERALD_PIPELINE_PUBLISH_MS}",
        *(f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records),
    ]
    return "\n".join(lines) + "\n"


def test_events_lost_with_the_broker_are_delivered_once_it_is_back(
    flows: Callable[[str], Flow], broker: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    flow = flows("restart")
    output: list[str] = []  # both workers' lines
    with celery_worker(queues=DELIVERY_QUEUE, env=WORKER_ENV, output=output):
        event_ids = events_post(flow, EVENTS)
        # Accepted, and their pipeline tasks wait in the broker (nobody consumes them
        # yet); each was published as its request committed.
        try:
            wait_for(
                "the accepted events' pipeline tasks to reach the broker",
                lambda: broker.client().llen(PIPELINE_QUEUE) == EVENTS,
                timeout=WAIT_SECONDS,
            )
        except pytest.fail.Exception as failed:
            pytest.fail(f"{failed}\n{broker_state(broker, caplog)}")
        broker.kill()
        broker.start()
        assert broker.client().llen(PIPELINE_QUEUE) == 0  # the queue went with it
        assert flow_events(flow) == dict.fromkeys(event_ids, EventStatus.ACCEPTED)

        with celery_worker(queues=PIPELINE_QUEUE, env=WORKER_ENV, output=output):
            grace = settings.HERALD_DISPATCH_GRACE_SECONDS
            swept = events_swept(flow.tenant, now=past_the_grace(grace_seconds=grace))
            assert set(event_ids) <= swept
            wait_for(
                "every accepted event's message to be sent",
                lambda: (
                    len(flow_messages(flow)) == EVENTS
                    and {m.status for m in flow_messages(flow)} == {MessageStatus.SENT}
                ),
                timeout=WAIT_SECONDS,
                log=output,
            )
            wait_for(
                "the delivery tasks to finish",
                lambda: tasks_settled(output, DELIVER),
                timeout=WAIT_SECONDS,
                log=output,
            )
            later = past_the_grace(grace_seconds=settings.HERALD_DISPATCH_REQUEUE_SECONDS)
            assert not events_swept(flow.tenant, now=later) & set(event_ids)
            mine = {str(message.id) for message in flow_messages(flow)}
            assert not messages_swept(flow.tenant, now=later) & mine
    messages = flow_messages(flow)
    assert sorted(str(m.event_id) for m in messages) == sorted(event_ids)
    assert sorted(flow.webhook_ids()) == sorted(str(m.id) for m in messages)
    assert set(flow_events(flow).values()) == {EventStatus.PROCESSED}
