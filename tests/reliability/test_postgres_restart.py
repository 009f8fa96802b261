"""PostgreSQL restarted under load (DESIGN.md, "Reliability rules"): while it is
down the API answers 503 problem+json, the workers recover once it is back, and
nothing the API accepted is lost.

The whole stack runs as production runs it, as processes of its own, against a
PostgreSQL cluster of this test's own (tests/reliability/postgres.py) and the
test Redis: gunicorn serving the API, a pipeline worker, a delivery worker and
Celery beat (the sweepers, with short grace periods). A tenant, an
``events:write`` key and a flow (one webhook message per event, to a local
sink) are set up through the services in a child process against that cluster.

A thread posts events at a steady rate. After ACCEPTED_BEFORE are accepted the
cluster is killed (SIGKILL, the whole server at once) and stays down for
DOWN_SECONDS, longer than the web processes cache an API key: first the
events' own queries fail behind a warm key, then authentication does, and every
request answers 503 ``service-unavailable`` with Retry-After. The cluster comes
back through crash recovery on the same port; posting succeeds again, and
ACCEPTED_AFTER more are accepted. Every accepted event is then processed and
its one message sent to the sink; the sink gets no event the API did not
accept. (A request in flight at the very moment of the kill may have committed
without hearing so: its event may be delivered, at least once, like any other.)

What the kill interrupts, the sweepers finish: a pipeline task retries its
database errors; an event whose task gave up is published again; a message
sent whose attempt could not be recorded stays ``sending`` until the sending
timeout, then is sent again with the same ``webhook-id`` (at least once). The
stack runs with those periods short (GRACE_SECONDS and below).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from django.conf import settings
from psycopg import sql

from bench._common import BenchError, TenantWanted, tenants_setup
from channels_delivery.models import Message, MessageStatus
from rules_engine.models import Event, EventStatus
from tests.channels_delivery.sinks import HttpSink
from tests.ports import free_port
from tests.reliability.flow import BODY_TEMPLATE
from tests.reliability.postgres import ThrowawayPostgres, throwaway_postgres

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
ACCEPTED_BEFORE = 40
ACCEPTED_AFTER = 40
POST_INTERVAL = 0.02  # seconds between the poster's requests: about 50 a second
# Longer than the web processes cache a verified key (HERALD_API_KEY_CACHE_SECONDS,
# 3 s), so that authentication, not only the endpoint, meets the dead database.
DOWN_SECONDS = 4.0
POST_TIMEOUT = 10.0
SETUP_SECONDS = 120.0  # migrate_schemas and a tenant's schema on a fresh cluster
START_SECONDS = 60.0  # the web server and the workers, until they serve
RECOVER_SECONDS = 20.0  # from the cluster's return to an accepted event
# The sweepers' periods, short (production: 60 s, 600 s, 600 s; the tasks' time
# limit 150 s). An event whose pipeline task gave up waits REQUEUE_SECONDS, a
# message left "sending" SENDING_TIMEOUT_SECONDS, for a sweep (beat: every 15 s).
GRACE_SECONDS = 2
REQUEUE_SECONDS = 10
TASK_TIME_LIMIT = 5
SENDING_TIMEOUT_SECONDS = 6
DELIVER_SECONDS = 60.0  # from the last accepted event until every one is sent
STOP_SECONDS = 15.0
SERVICE_UNAVAILABLE = "urn:herald:problem:service-unavailable"


@dataclass(frozen=True, kw_only=True)
class Prepared:
    token: str
    schema: str
    event_type: str
    path: str


def stack_env(*, database_url: str, directory: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "herald.settings",
        "HERALD_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "HERALD_DATA_DIR": str(directory),
        "HERALD_ALLOW_LOOPBACK_URLS": "true",  # the sink listens on 127.0.0.1
        "HERALD_RATE_LIMIT_ENABLED": "false",  # the load is steady, not a client's abuse
        "HERALD_DISPATCH_GRACE_SECONDS": str(GRACE_SECONDS),
        "HERALD_DISPATCH_REQUEUE_SECONDS": str(REQUEUE_SECONDS),
        "HERALD_DELIVERY_GRACE_SECONDS": str(GRACE_SECONDS),
        # A message whose attempt could not be recorded (the database died after
        # the send) stays "sending" until this timeout; it has to stay above the
        # tasks' time limit, so that an attempt still running is not duplicated.
        "CELERY_TASK_SOFT_TIME_LIMIT": str(TASK_TIME_LIMIT - 1),
        "CELERY_TASK_TIME_LIMIT": str(TASK_TIME_LIMIT),
        "HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS": str(SENDING_TIMEOUT_SECONDS),
    }


def stack_setup(env: dict[str, str], *, sink_url: str) -> Prepared:
    """In a child process against the fresh cluster, as the benchmarks set up
    theirs: the schemas, a tenant, its key and its flow to the sink."""
    slug = f"restart-{uuid.uuid4().hex[:8]}"  # quota counters in Redis are per slug
    event_type, path = "rel.pg-restart", "/pg-restart"
    try:
        ready = tenants_setup(
            env,
            tenants=[
                TenantWanted(
                    slug=slug, name="Postgres restart", admin_email=f"admin@{slug}.example.com",
                    endpoint_paths=(path,),
                )
            ],
            sink_url=sink_url, event_type=event_type,
            event_type_fields={"category": "reliability"}, template="pg-restart",
            body=BODY_TEMPLATE, rule="pg-restart", key_name="load", created_by="test",
            domains=[settings.HERALD_BASE_DOMAIN], migrate=True, timeout=SETUP_SECONDS,
        )  # fmt: skip
    except BenchError as error:
        pytest.fail(f"setting up the stack failed: {error}")
    (tenant,) = ready.tenants
    return Prepared(token=tenant.token, schema=tenant.schema, event_type=event_type, path=path)


class Processes:
    """The stack's processes, each leading a process group of its own (gunicorn's
    and Celery's children go with it), its output in a log file."""

    def __init__(self, env: dict[str, str], directory: Path) -> None:
        self.env = env
        self.directory = directory
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def start(self, name: str, command: list[str]) -> None:
        with self.log(name).open("wb") as log:
            self.running[name] = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def celery(self, name: str, *arguments: str) -> None:
        self.start(name, [sys.executable, "-m", "celery", "-A", "herald.celery:app", *arguments])

    def worker(self, name: str, queue: str, *, concurrency: int) -> None:
        self.celery(
            name, "worker", "-Q", queue, "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "--concurrency", str(concurrency), "--without-mingle", "--without-gossip",
            "--loglevel", "INFO",
        )  # fmt: skip

    def ready(self, worker: str) -> bool:
        return " ready." in self.output(worker)

    def output(self, name: str) -> str:
        return self.log(name).read_text(errors="replace")

    def tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {name} ---\n" + "\n".join(self.output(name).splitlines()[-lines:])
            for name in self.running
        )

    def wait_until(
        self,
        what: str,
        ready: Callable[[], Any],
        *,
        timeout: float,
        state: Callable[[], str] = lambda: "",
    ) -> None:
        """Poll ``ready`` until it is true; on failure show ``state()`` and the logs."""
        deadline = time.monotonic() + timeout
        while not ready():
            exited = [name for name, process in self.running.items() if process.poll() is not None]
            if exited or time.monotonic() > deadline:
                problem = f"{', '.join(exited)} exited" if exited else f"not within {timeout:g} s"
                pytest.fail(f"{what}: {problem}\n{state()}\n{self.tails()}")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what outlived the grace
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def web_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True, kw_only=True)
class Post:
    """One request of the poster; ``n`` is in the event's payload."""

    n: int
    started: float  # monotonic
    ended: float
    status: int | None  # None: no answer (the connection failed or timed out)
    content_type: str = ""
    retry_after: str | None = None
    body: Any = None

    @property
    def event_id(self) -> str | None:
        return str(self.body["id"]) if self.status == 202 else None


class Poster:
    """Posts events from a thread of its own, one every POST_INTERVAL, until stopped."""

    def __init__(self, *, url: str, token: str, event_type: str) -> None:
        self.url = url
        self.token = token
        self.event_type = event_type
        self.posts: list[Post] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="poster", daemon=True)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=POST_TIMEOUT) as client:
            n = 0
            while not self.stopping.is_set():
                self.posts.append(self._post(client, n))
                n += 1
                self.stopping.wait(POST_INTERVAL)

    def _post(self, client: httpx.Client, n: int) -> Post:
        event = {"event": self.event_type, "to": [{"id": f"subscriber-{n}"}], "payload": {"n": n}}
        started = time.monotonic()
        try:
            response = client.post("/api/v1/events", json=event)
        except httpx.HTTPError:
            return Post(n=n, started=started, ended=time.monotonic(), status=None)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return Post(
            n=n, started=started, ended=time.monotonic(), status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            retry_after=response.headers.get("retry-after"), body=body,
        )  # fmt: skip

    def accepted(self, *, since: float = 0.0) -> list[Post]:
        return [post for post in list(self.posts) if post.status == 202 and post.started >= since]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(POST_TIMEOUT + 5)


@dataclass(frozen=True, kw_only=True)
class Stored:
    events: dict[str, tuple[str, int]]  # event id -> (status, payload n)
    messages: dict[str, tuple[str, str]]  # message id -> (event id, status)
    message_rows: list[tuple[Any, ...]]  # every column, to show in a failure


def stored(database_url: str, schema: str) -> Stored:
    """What the cluster holds, read with a connection of its own."""
    events_table = sql.Identifier(schema, Event._meta.db_table)
    messages_table = sql.Identifier(schema, Message._meta.db_table)
    with psycopg.connect(database_url, connect_timeout=5) as connection:
        events = connection.execute(
            sql.SQL("SELECT id, status, payload FROM {}").format(events_table)
        ).fetchall()
        messages = connection.execute(
            sql.SQL(
                "SELECT id, event_id, status, attempt_count, next_attempt_at, updated_at FROM {}"
            ).format(messages_table)
        ).fetchall()
    return Stored(
        events={str(id_): (status, int(payload["n"])) for id_, status, payload in events},
        messages={str(row[0]): (str(row[1]), row[2]) for row in messages},
        message_rows=[(str(row[0]), str(row[1]), *row[2:]) for row in messages],
    )


def sink_deliveries(sink: HttpSink, path: str) -> list[tuple[str, int]]:
    """(webhook-id, payload n) of every request the flow's endpoint received."""
    return [
        (request.headers["webhook-id"], int(json.loads(request.body)["n"]))
        for request in list(sink.requests)
        if request.path == path
    ]


@contextlib.contextmanager
def stack_directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="herald-pg-stack-") as name:
        yield Path(name)


def redis_flushed() -> None:
    """Nothing another test left in the broker's queues reaches this stack's workers."""
    for url in dict.fromkeys([settings.REDIS_URL, settings.CELERY_BROKER_URL]):
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            client.flushdb()
        finally:
            client.close()


def test_the_api_answers_503_while_postgres_is_down_and_loses_nothing_accepted(
    sink: HttpSink,
) -> None:
    redis_flushed()
    try:
        with throwaway_postgres() as postgres, stack_directory() as directory:
            database_url = postgres.create_database("herald")
            env = stack_env(database_url=database_url, directory=directory)
            began = time.monotonic()
            prepared = stack_setup(env, sink_url=sink.url)
            print(
                f"\nstack set up (migrate_schemas, tenant, flow): {time.monotonic() - began:.1f} s"
            )
            stack = Processes(env, directory)
            try:
                posts, down = load_through_a_restart(postgres, stack, prepared)
                outage_answered(stack, posts, down=down)
                began = time.monotonic()
                everything_accepted_delivered(
                    stack, sink, prepared, database_url, posts, killed_at=down[0]
                )
                print(
                    f"posted {len(posts)}: {Counter(post.status for post in posts)}; all "
                    f"delivered {time.monotonic() - began:.1f} s after the last post"
                )
            finally:
                stack.stop()
    finally:
        redis_flushed()  # nothing of this stack reaches later tests' workers


def load_through_a_restart(
    postgres: ThrowawayPostgres, stack: Processes, prepared: Prepared
) -> tuple[list[Post], tuple[float, float]]:
    """Start the stack, post events through a kill and restart of the cluster;
    returns every post, and when the cluster was killed and when it was started
    again (monotonic)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stack.start(
        "web",
        [sys.executable, "-m", "gunicorn", "herald.wsgi:application", "--workers", "2",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
    )  # fmt: skip
    stack.worker("pipeline", settings.CELERY_TASK_ROUTES["rules_engine.*"]["queue"], concurrency=1)
    stack.worker(
        "delivery", settings.CELERY_TASK_ROUTES["channels_delivery.*"]["queue"], concurrency=2
    )
    stack.celery(
        "beat", "beat", "--loglevel", "INFO", "-s", str(stack.directory / "celerybeat-schedule")
    )
    stack.wait_until("the web server", lambda: web_answers(url), timeout=START_SECONDS)
    for name in ("pipeline", "delivery"):
        stack.wait_until(f"the {name} worker", partial(stack.ready, name), timeout=START_SECONDS)

    poster = Poster(url=url, token=prepared.token, event_type=prepared.event_type)
    poster.start()
    try:
        stack.wait_until(
            f"{ACCEPTED_BEFORE} events accepted",
            lambda: len(poster.accepted()) >= ACCEPTED_BEFORE,
            timeout=START_SECONDS,
        )
        killed_at = time.monotonic()
        postgres.kill()
        time.sleep(DOWN_SECONDS)
        restarted_at = time.monotonic()
        postgres.start()
        back_at = time.monotonic()
        stack.wait_until(
            "an event accepted once PostgreSQL is back",
            lambda: poster.accepted(since=back_at),
            timeout=RECOVER_SECONDS,
        )
        stack.wait_until(
            f"{ACCEPTED_AFTER} more events accepted",
            lambda: len(poster.accepted(since=back_at)) >= ACCEPTED_AFTER,
            timeout=RECOVER_SECONDS,
        )
    finally:
        poster.stop()
    return list(poster.posts), (killed_at, restarted_at)


def outage_answered(stack: Processes, posts: list[Post], *, down: tuple[float, float]) -> None:
    """Every answer was an acceptance or a 503 problem document; while the
    cluster was down every one was a 503, from the endpoint behind a warm key
    and from authentication alike."""
    answers = {post.status for post in posts}
    assert answers <= {202, 503, None}, [p for p in posts if p.status not in (202, 503, None)]
    refused = [post for post in posts if post.status == 503]
    for post in refused:
        assert post.content_type == "application/problem+json", post
        assert post.body["type"] == SERVICE_UNAVAILABLE, post
        assert (post.body["status"], post.body["title"]) == (503, "Service unavailable"), post
        assert int(post.retry_after or 0) > 0, post
    killed_at, restarted_at = down
    before = [post for post in posts if post.ended < killed_at]
    assert {post.status for post in before} == {202}
    during = [post for post in posts if post.started > killed_at and post.ended < restarted_at]
    assert len(during) >= DOWN_SECONDS / POST_INTERVAL / 4, "the poster hardly posted"
    assert {post.status for post in during} == {503}, [p for p in during if p.status != 503]
    web = stack.output("web")
    assert "database unavailable in POST /api/v1/events" in web  # the endpoint's own query
    assert "database unavailable while authenticating an API key" in web


def everything_accepted_delivered(
    stack: Processes,
    sink: HttpSink,
    prepared: Prepared,
    database_url: str,
    posts: list[Post],
    *,
    killed_at: float,
) -> None:
    """Each accepted event is processed and its one message sent, and the sink
    got nothing else; an event whose request was cut short by the kill may be
    there too, and delivered too."""
    accepted = {post.event_id: post.n for post in posts if post.event_id is not None}
    cut_short = {
        post.n for post in posts if post.status != 202 and post.started <= killed_at <= post.ended
    }

    def all_sent() -> bool:
        """Every stored event (each accepted one among them) has a sent message,
        and the sink has every event."""
        now = stored(database_url, prepared.schema)
        sent = {
            event_id for event_id, status in now.messages.values() if status == MessageStatus.SENT
        }
        delivered = {n for _, n in sink_deliveries(sink, prepared.path)}
        return (
            set(accepted) <= set(now.events) <= sent
            and {n for _, n in now.events.values()} <= delivered
        )

    def state() -> str:
        now = stored(database_url, prepared.schema)
        delivered_ns = {n for _, n in sink_deliveries(sink, prepared.path)}
        missing = {event_id: n for event_id, n in accepted.items() if n not in delivered_ns}
        return (
            f"accepted {len(accepted)}, not delivered {len(missing)}; events "
            f"{Counter(status for status, _ in now.events.values())}, messages "
            f"{Counter(status for _, status in now.messages.values())}; messages not delivered: "
            f"{[row for row in now.message_rows if row[1] in missing][:10]}"
        )

    stack.wait_until(
        "every event's message sent to the sink",
        all_sent,
        timeout=DELIVER_SECONDS,
        state=state,
    )
    final = stored(database_url, prepared.schema)
    unacknowledged = {
        event_id: n for event_id, (_, n) in final.events.items() if event_id not in accepted
    }
    # Committed, but the answer was lost with the server: only a request in flight then.
    assert set(unacknowledged.values()) <= cut_short, "the sink got events never accepted"
    assert set(accepted) <= set(final.events), "an accepted event is not stored"
    for event_id, (status, n) in final.events.items():
        assert status == EventStatus.PROCESSED, (event_id, status)
        assert accepted.get(event_id, n) == n
    by_event: dict[str, list[str]] = {}
    for message_id, (event_id, status) in final.messages.items():
        assert status == MessageStatus.SENT, (message_id, status)
        by_event.setdefault(event_id, []).append(message_id)
    assert {event_id: len(ids) for event_id, ids in by_event.items()} == dict.fromkeys(
        final.events, 1
    ), "each event has exactly one message"
    deliveries = sink_deliveries(sink, prepared.path)
    for webhook_id, n in deliveries:
        assert webhook_id in final.messages, f"the sink got {webhook_id}, a message never stored"
        event_id, _ = final.messages[webhook_id]
        assert final.events[event_id][1] == n
    assert {final.messages[webhook_id][0] for webhook_id, _ in deliveries} == set(final.events)
