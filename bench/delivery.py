"""Delivery benchmark: from POST /api/v1/events to the webhook a local sink receives.

    .venv/bin/python bench/delivery.py [--events 10000] [--rate 100] [--latency-duration 30]
                                       [--delivery-concurrency 2] [--profile DIR] [--write-docs]

It sets up its own stack: the database ``herald_bench_delivery`` on the
PostgreSQL server of DATABASE_URL (default 127.0.0.1:5432), migrated, with a
tenant ``delivery`` holding an ``events:write`` key, an event type, a webhook
template, a rule that sends every ``order.shipped`` event to its recipient on
the webhook channel (one message per event), subscribers for the recipients,
and one webhook endpoint pointing at the sink; Redis database 11 as cache and
Celery broker (not 15, which ``herald.devstack test`` uses when REDIS_URL is
unset: workers take tasks from whatever shares their database). Then it
starts, each in its own process group:

- the sink: a raw asyncio HTTP/1.1 server on 127.0.0.1 in its own process
  (this file with ``--serve-sink``) that answers 200 at once and records, per
  request, the time it was received (``time.time()``, the same clock as the
  client's send times), the Standard Webhooks headers and the body;
- gunicorn as production runs it (gthread), like bench/ingest.py;
- a Celery worker for the ``pipeline`` queue and one for the ``delivery``
  queue (prefork, ``--delivery-concurrency`` pool processes: "two worker
  processes"), with HERALD_ALLOW_LOOPBACK_URLS=true so the SSRF guard lets the
  sink's 127.0.0.1 through. No beat runs: nothing here needs the sweepers.

Three measured runs:

1. End-to-end throughput: ``--events`` events posted in batches of
   ``--batch-size`` as fast as the server takes them, everything running;
   delivered messages/s at the sink from the first delivery to the last, and
   from the first POST to the last delivery.
2. Delivery alone: the same number of events posted with the delivery worker
   stopped; once the pipeline has stored (and published) every message, the
   delivery worker starts, and the sink measures how fast it drains them.
3. Latency: open loop, ``--rate`` single POST /events per second for
   ``--latency-duration`` seconds; per event, the sink's receive time minus the
   client's send time. The database's timestamps split it into stages.

Every run checks that each event was delivered exactly once (by event id in
the body and by ``webhook-id``), and a sample of the requests is verified with
the standardwebhooks library and the endpoint's secret. Peak RSS (VmHWM) of
every worker process is read before the workers stop.

Exit status: 0 when every event was delivered once (targets met or not), 1 on
a failed run or an error, 2 when py-spy is missing for --profile, 130 when
interrupted. Every process started is stopped in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    BenchError,
    CpuAccounting,
    CpuBreakdown,
    Figure,
    Gunicorn,
    Supervised,
    TenantWanted,
    cpu_busy_percent,
    ensure_database,
    find_executable,
    free_port,
    git_state,
    herald_environment,
    http_request,
    load_average,
    machine_info,
    markdown_table,
    peak_rss_kib,
    postgres_version,
    process_children,
    process_command_line,
    profile_categories,
    profile_summary,
    report_publish,
    run_guarded,
    say,
    sql,
    tenants_setup,
    utc_now,
    wait_for_quiet,
    with_database,
    with_redis_db,
)

BENCH_DATABASE = "herald_bench_delivery"
# Not 15: `herald.devstack test` (make test) uses database 15 when REDIS_URL is unset,
# and a worker shares its queues with whatever else uses the same database.
BENCH_REDIS_DB = 11
TENANT_SLUG = "delivery"
PLAN_NAME = "bench"
EVENT_TYPE = "order.shipped"
TEMPLATE_KEY = "bench-webhook"
RULE_NAME = "bench: order.shipped to the webhook"
ENDPOINT_PATH = "/hooks/orders"
# What tenant-schemas-celery logs for a task whose schema is no tenant of ours.
FOREIGN_TASK_MARK = "Tenant matching query does not exist"
SUBSCRIBERS = 1000  # user-0 … user-999; event n goes to user-(n % SUBSCRIBERS)

TARGET_MESSAGES_PER_S = 1_000
TARGET_P50_MS = 50.0
TARGET_P99_MS = 250.0
SIGNATURES_VERIFIED = 200  # requests per run checked with standardwebhooks
NONE = "-"

# What the webhook receives: the event's id (to match it with its POST), its
# order and the recipient, about 200 bytes.
WEBHOOK_BODY = (
    '{"event_id": "{{ event.id }}", "type": "{{ event.type }}", '
    '"order_id": {{ event.payload.order_id|tojson }}, '
    '"carrier": {{ event.payload.carrier|tojson }}, '
    '"recipient": {{ subscriber.id|tojson }}, "name": {{ subscriber.name|tojson }}}'
)
PAYLOAD = '{"order_id":"ord_%08d","carrier":"UPS","tracking_number":"1Z999AA10123456784"}'
EVENT_JSON = '{"event":"order.shipped","to":["user-%d"],"payload":' + PAYLOAD + "}"


# --- The sink ------------------------------------------------------------------------------

OK_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class SinkServer:
    """The webhook receiver: every POST is answered 200 at once and recorded.

    ``GET /_count`` answers how many were recorded, ``GET /_dump`` all of them
    as JSON (and forgets them), so the benchmark reads the sink over HTTP too.
    Runs alone in its own process, so its CPU time is its own.
    """

    def __init__(self) -> None:
        # (received at, webhook-id, webhook-timestamp, webhook-signature, body)
        self.records: list[tuple[float, str, str, str, bytes]] = []

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ", 2)[:2]
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                received = time.time()
                if method == "POST":
                    self.records.append(
                        (
                            received,
                            headers.get("webhook-id", ""),
                            headers.get("webhook-timestamp", ""),
                            headers.get("webhook-signature", ""),
                            body,
                        )
                    )
                    writer.write(OK_RESPONSE)
                else:
                    writer.write(self.answer(path))
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def answer(self, path: str) -> bytes:
        if path == "/_count":
            content = str(len(self.records)).encode()
        elif path == "/_dump":
            records, self.records = self.records, []
            content = json.dumps(
                [
                    {"t": t, "id": wid, "ts": ts, "sig": sig, "body": body.decode(errors="replace")}
                    for t, wid, ts, sig, body in records
                ]
            ).encode()
        else:
            return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(content), content)


def serve_sink(port: int) -> None:
    async def main() -> None:
        sink = SinkServer()
        server = await asyncio.start_server(sink.connection, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def sink_count(url: str) -> int:
    status, _, content = http_request(f"{url}/_count", timeout=10)
    if status != 200:
        raise BenchError(f"the sink answered {status} to /_count")
    return int(content)


def sink_dump(url: str) -> list[dict[str, Any]]:
    status, _, content = http_request(f"{url}/_dump", timeout=60)
    if status != 200:
        raise BenchError(f"the sink answered {status} to /_dump")
    records: list[dict[str, Any]] = json.loads(content)
    return records


# --- Setting up ----------------------------------------------------------------------------


def stack_env(*, database_url: str, redis_url: str) -> dict[str, str]:
    """The environment of every Herald process here (server and workers)."""
    env = herald_environment(database_url=database_url, redis_url=redis_url)
    # The sink listens on 127.0.0.1, which the SSRF guard refuses by default.
    env["HERALD_ALLOW_LOOPBACK_URLS"] = "true"
    env.setdefault("HERALD_RATE_LIMIT_ENABLED", "true")
    # No database backend ends mid-run (production: 60 s).
    env.setdefault("DATABASE_CONN_MAX_AGE", "3600")
    return env


@dataclass(frozen=True, kw_only=True)
class Setup:
    token: str
    secret: str
    schema: str
    events: str
    messages: str
    attempts: str
    endpoints: str

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{getattr(self, name)}"'


def prepare(env: dict[str, str], *, sink_url: str, migrate: bool) -> Setup:
    """Migrate, then make sure of the tenant, key, rule, template, subscribers
    and endpoint; the tenant's events and messages from earlier runs are deleted."""
    if migrate:
        say(f"migrating {BENCH_DATABASE} (public schema and tenant schemas)")
    say(f"ensuring tenant {TENANT_SLUG!r}, its key, rule, template, subscribers and endpoint")
    ready = tenants_setup(
        env,
        tenants=[
            TenantWanted(
                slug=TENANT_SLUG,
                name="Delivery benchmark",
                admin_email="bench@example.com",
                endpoint_paths=(ENDPOINT_PATH,),
            )
        ],
        sink_url=sink_url,
        event_type=EVENT_TYPE,
        event_type_fields={"name": "Order shipped"},
        template=TEMPLATE_KEY,
        body=WEBHOOK_BODY,
        rule=RULE_NAME,
        key_name="bench",
        created_by="bench",
        plan=PLAN_NAME,
        subscribers=SUBSCRIBERS,
        migrate=migrate,
        timeout=1500,
    )
    (tenant,) = ready.tenants
    return Setup(
        token=tenant.token,
        secret=tenant.secrets[ENDPOINT_PATH],
        schema=tenant.schema,
        events=ready.events,
        messages=ready.messages,
        attempts=ready.attempts,
        endpoints=ready.endpoints,
    )


def redis_flush(redis_url: str) -> None:
    """Empty the bench's own Redis database (queues, rate limit buckets, caches)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def celery_worker(
    *,
    name: str,
    queues: str,
    concurrency: int,
    env: dict[str, str],
    log_dir: Path,
    app: str = "herald.celery:app",
) -> Supervised:
    # INFO, for the "ready." line; the tasks carry up to 100 ids each, so the
    # per-task log lines cost little.
    command = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-Q", queues, "--pool", "prefork", "--concurrency", str(concurrency),
        "--hostname", f"{name}@%h", "--without-mingle", "--without-gossip",
        "--without-heartbeat", "--loglevel", "INFO",
    ]  # fmt: skip
    return Supervised(
        name=f"celery worker {name}",
        command=command,
        env=env,
        log_path=log_dir / f"herald-bench-delivery-{name}.log",
    )


@dataclass(kw_only=True)
class Stack:
    url: str
    sink_url: str
    setup: Setup
    database_url: str
    redis_url: str
    env: dict[str, str]
    gunicorn: Gunicorn
    sink: Supervised
    pipeline: Supervised
    delivery: Supervised
    log_dir: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.setup.token}", "Content-Type": "application/json"}

    def reset(self) -> None:
        """Between runs: no events, messages or attempts left, empty queues."""
        sql(self.database_url, f"TRUNCATE {self.setup.table('events')} CASCADE")
        sql(
            self.database_url,
            f"UPDATE {self.setup.table('endpoints')} "  # noqa: S608 - our own table name
            "SET slow_until = NULL, failing_since = NULL",
        )
        sink_dump(self.sink_url)

    def messages_by_status(self) -> dict[str, int]:
        rows = sql(
            self.database_url,
            f"SELECT status, count(*) FROM {self.setup.table('messages')} GROUP BY status",  # noqa: S608
        )
        return {str(status): int(count) for status, count in rows}

    def foreign_tasks(self) -> int:
        """Tasks our workers got from someone else: their schema is no tenant of
        ours. Another process using the same Redis database shares our queues,
        and takes some of our tasks too, so the run does not count."""
        found = 0
        for worker in (self.pipeline, self.delivery):
            with contextlib.suppress(OSError):
                found += worker.log_path.read_text(errors="replace").count(FOREIGN_TASK_MARK)
        return found

    def check_alive(self) -> None:
        self.gunicorn.check_alive()
        for process in (self.sink, self.pipeline, self.delivery):
            if process.process is not None:
                process.check_alive()


@contextlib.contextmanager
def own_stack(arguments: argparse.Namespace) -> Iterator[Stack]:
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    database_url = with_database(server_url, BENCH_DATABASE)
    redis_url = with_redis_db(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL, arguments.redis_db)
    created = ensure_database(database_url)
    if created:
        say(f"created database {BENCH_DATABASE}")
    env = stack_env(database_url=database_url, redis_url=redis_url)
    # No slow lane runs here: the sink answers at once, but on a starved machine a
    # send can take over HERALD_WEBHOOK_SLOW_SECONDS (2 s) from start to answer,
    # and the endpoint's messages would then wait in a queue nobody serves.
    # Beyond the webhook timeout, the endpoint is never taken for slow.
    env.setdefault("HERALD_WEBHOOK_SLOW_SECONDS", "60")
    log_dir = Path(tempfile.gettempdir())
    sink_port = free_port()
    sink_url = f"http://127.0.0.1:{sink_port}"
    sink = Supervised(
        name="sink",
        command=[sys.executable, str(Path(__file__).resolve()), "--serve-sink", str(sink_port)],
        env=dict(os.environ),
        log_path=log_dir / "herald-bench-delivery-sink.log",
        grace=5.0,
    )
    with contextlib.ExitStack() as scope:
        scope.enter_context(sink)
        setup = prepare(env, sink_url=sink_url, migrate=not arguments.no_migrate)
        redis_flush(redis_url)
        deadline = time.monotonic() + 15
        while True:
            try:
                sink_count(sink_url)
                break
            except OSError:
                sink.check_alive()
                if time.monotonic() > deadline:
                    raise BenchError(f"the sink did not answer:\n{sink.log_tail()}") from None
                time.sleep(0.1)
        server = scope.enter_context(
            Gunicorn(
                workers=arguments.workers,
                worker_class="gthread",
                threads=arguments.gunicorn_threads,
                env=env,
                log_path=log_dir / "herald-bench-delivery-gunicorn.log",
            )
        )
        pipeline = celery_worker(
            name="pipeline",
            queues="pipeline",
            concurrency=arguments.pipeline_concurrency,
            env=env,
            log_dir=log_dir,
            app=arguments.celery_app,
        )
        delivery = celery_worker(
            name="delivery",
            queues="delivery",
            concurrency=arguments.delivery_concurrency,
            env=env,
            log_dir=log_dir,
            app=arguments.celery_app,
        )
        scope.enter_context(pipeline)
        scope.enter_context(delivery)
        server.wait_healthy(timeout=90)
        pipeline.wait_for_log(" ready.")
        delivery.wait_for_log(" ready.")
        yield Stack(
            url=server.url,
            sink_url=sink_url,
            setup=setup,
            database_url=database_url,
            redis_url=redis_url,
            env=env,
            gunicorn=server,
            sink=sink,
            pipeline=pipeline,
            delivery=delivery,
            log_dir=log_dir,
        )
    with contextlib.suppress(Exception):
        redis_flush(redis_url)


# --- Sending events ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sent:
    event_id: str
    sent_at: float  # time.time() just before the request
    answered_at: float


class Poster:
    """POSTs over one keep-alive connection per thread, with ``headers`` on each."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = url.removeprefix("http://").split(":")
        self.host, self.port = parts[0], int(parts[1])
        self.headers = headers
        self.local = threading.local()

    def post(
        self, path: str, body: bytes, *, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, float, float]:
        """(status, body, sent at, answered at): one retry on a fresh connection
        if the kept-alive one was closed meanwhile. ``headers`` are this request's
        on top of the poster's (soak.py sends for many tenants over one connection)."""
        sent_headers = {**self.headers, **headers} if headers else self.headers
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=60
                )
            sent_at = time.time()
            try:
                conn.request("POST", path, body=body, headers=sent_headers)
                response = conn.getresponse()
                content = response.read()
                return response.status, content, sent_at, time.time()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@dataclass(frozen=True, kw_only=True)
class SinkReference:
    """The sink alone, measured in the same run: what delivery could reach if
    Herald's own work cost nothing."""

    posts_per_s: float  # from REFERENCE_THREADS threads (as many as delivery processes)
    round_trip_ms: float  # p50 of one POST answered


REFERENCE_THREADS = 2
REFERENCE_SECONDS = 5.0


def sink_reference(stack: Stack) -> SinkReference:
    """POSTs of a webhook-sized body to the sink over keep-alive connections, from
    REFERENCE_THREADS threads for REFERENCE_SECONDS; the sink's records are
    emptied afterwards, so no run counts them."""
    poster = Poster(stack.sink_url, {"Content-Type": "application/json"})
    body = json.dumps({"event_id": "reference", "payload": {"n": 0, "text": "x" * 200}}).encode()
    deadline = time.monotonic() + REFERENCE_SECONDS

    def hammer() -> list[float]:
        trips = []
        while time.monotonic() < deadline:
            status, _, sent_at, answered_at = poster.post("/reference", body)
            if status != 200:
                raise BenchError(f"the sink answered {status} to the reference POST")
            trips.append((answered_at - sent_at) * 1000)
        return trips

    started = time.monotonic()
    with ThreadPoolExecutor(REFERENCE_THREADS) as pool:
        trips = [t for each in pool.map(lambda _: hammer(), range(REFERENCE_THREADS)) for t in each]
    elapsed = time.monotonic() - started
    sink_dump(stack.sink_url)
    return SinkReference(posts_per_s=len(trips) / elapsed, round_trip_ms=percentile(trips, 50))


def post_batches(stack: Stack, *, first: int, count: int, batch_size: int) -> list[Sent]:
    """Events ``first`` … ``first + count - 1`` in batches, over 4 connections."""
    poster = Poster(stack.url, stack.headers())

    def send(start: int) -> list[Sent]:
        numbers = range(start, min(start + batch_size, first + count))
        events = ",".join(EVENT_JSON % (n % SUBSCRIBERS, n) for n in numbers)
        status, content, sent_at, answered_at = poster.post(
            "/api/v1/events/batch", f'{{"events":[{events}]}}'.encode()
        )
        if status != 202:
            raise BenchError(f"POST /api/v1/events/batch answered {status}: {content[:300]!r}")
        answer = json.loads(content)
        if answer.get("rejected"):
            raise BenchError(f"the batch was not accepted in full: {content[:300]!r}")
        return [
            Sent(event_id=item["id"], sent_at=sent_at, answered_at=answered_at)
            for item in answer["results"]
        ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        chunks = pool.map(send, range(first, first + count, batch_size))
        return [sent for chunk in chunks for sent in chunk]


def post_open_loop(stack: Stack, *, rate: float, duration: float, first: int) -> list[Sent]:
    """Single POST /api/v1/events at ``rate`` per second on a fixed schedule (open
    loop: a slow answer does not delay the next send while a sender thread is free)."""
    poster = Poster(stack.url, stack.headers())
    total = int(rate * duration)
    results: list[Sent] = []
    lock = threading.Lock()
    late: list[float] = []

    def send(n: int, due: float) -> None:
        late.append(max(0.0, time.time() - due))
        status, content, sent_at, answered_at = poster.post(
            "/api/v1/events", (EVENT_JSON % (n % SUBSCRIBERS, n)).encode()
        )
        if status != 202:
            raise BenchError(f"POST /api/v1/events answered {status}: {content[:300]!r}")
        with lock:
            results.append(
                Sent(event_id=json.loads(content)["id"], sent_at=sent_at, answered_at=answered_at)
            )

    start = time.time() + 0.2
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = []
        for index in range(total):
            due = start + index / rate
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            futures.append(pool.submit(send, first + index, due))
        for future in futures:
            future.result()
    if late and max(late) > 0.05:
        say(f"some sends started late (max {max(late) * 1000:.0f} ms): the client was busy")
    return results


def wait_delivered(stack: Stack, *, expected: int, stall: float, label: str) -> tuple[int, float]:
    """Wait until the sink has ``expected`` requests or none arrived for ``stall`` s;
    (the count, the time the wait ended)."""
    last_count, last_change = -1, time.monotonic()
    shown = time.monotonic()
    while True:
        count = sink_count(stack.sink_url)
        now = time.monotonic()
        if count != last_count:
            last_count, last_change = count, now
        if count >= expected:
            return count, time.time()
        if now - last_change > stall:
            say(f"{label}: no delivery for {stall:g} s; {count:,} of {expected:,} arrived")
            return count, time.time()
        if now - shown > 5:
            say(f"{label}: {count:,} of {expected:,} delivered")
            shown = now
        stack.check_alive()
        time.sleep(0.2)


# --- Checking and measuring ------------------------------------------------------------------


@dataclass(kw_only=True)
class Deliveries:
    """What the sink received in one run, matched with what was sent."""

    received: list[dict[str, Any]]
    sent: list[Sent]
    problems: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    first_at: float = 0.0
    last_at: float = 0.0
    verified: int = 0

    @property
    def count(self) -> int:
        return len(self.received)

    def span_rate(self) -> float:
        """Delivered/s from the first delivery to the last."""
        span = self.last_at - self.first_at
        return (self.count - 1) / span if span > 0 else 0.0

    def overall_rate(self) -> float:
        """Delivered/s from the first POST to the last delivery."""
        started = min(sent.sent_at for sent in self.sent)
        return self.count / (self.last_at - started) if self.last_at > started else 0.0


def check_deliveries(
    *, received: list[dict[str, Any]], sent: list[Sent], secret: str, label: str
) -> Deliveries:
    """Each event delivered once, each webhook-id once, a sample verified."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    result = Deliveries(received=received, sent=sent)
    by_event: dict[str, float] = {}
    duplicates = 0
    unknown = 0
    sent_at = {item.event_id: item.sent_at for item in sent}
    for record in received:
        try:
            event_id = json.loads(record["body"])["event_id"]
        except (ValueError, KeyError, TypeError):
            result.problems.append(f"{label}: a body without an event id: {record['body'][:200]!r}")
            continue
        if event_id in by_event:
            duplicates += 1
        else:
            by_event[event_id] = record["t"]
        if event_id not in sent_at:
            unknown += 1
    webhook_ids = {record["id"] for record in received}
    if duplicates:
        result.problems.append(f"{label}: {duplicates} events were delivered more than once")
    if len(webhook_ids) != len(received):
        result.problems.append(
            f"{label}: {len(received) - len(webhook_ids)} webhook-ids arrived more than once"
        )
    if unknown:
        result.problems.append(f"{label}: {unknown} deliveries name events this run did not send")
    lost = [event_id for event_id in sent_at if event_id not in by_event]
    if lost:
        result.problems.append(f"{label}: {len(lost)} of {len(sent):,} events never arrived")
    if received:
        times = [record["t"] for record in received]
        result.first_at, result.last_at = min(times), max(times)
    result.latencies_ms = [
        (by_event[event_id] - at) * 1000 for event_id, at in sent_at.items() if event_id in by_event
    ]
    webhook = Webhook(secret)
    for record in random.Random(1).sample(  # noqa: S311 - a sample, not a secret
        received, min(SIGNATURES_VERIFIED, len(received))
    ):
        headers = {
            "webhook-id": record["id"],
            "webhook-timestamp": record["ts"],
            "webhook-signature": record["sig"],
        }
        try:
            webhook.verify(record["body"], headers)
        except WebhookVerificationError as error:
            result.problems.append(f"{label}: webhook {record['id']} does not verify: {error}")
            break
        result.verified += 1
    return result


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


QUANTILES = "percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM {}))"
STAGES_SQL = (
    "SELECT "  # noqa: S608 - our own fixed text and table names
    + ", ".join(
        QUANTILES.format(interval)
        for interval in (
            "m.created_at - e.created_at",
            "a.started_at - m.created_at",
            "a.finished_at - a.started_at",
        )
    )
    + " FROM {events} e JOIN {messages} m ON m.event_id = e.id"
    " JOIN {attempts} a ON a.message_id = m.id"
)


def stages(stack: Stack) -> dict[str, tuple[float, float]]:
    """Medians and p99 (ms) of the stages the database's timestamps tell apart."""
    rows = sql(
        stack.database_url,
        STAGES_SQL.format(
            events=stack.setup.table("events"),
            messages=stack.setup.table("messages"),
            attempts=stack.setup.table("attempts"),
        ),
    )
    if not rows or rows[0][0] is None:
        return {}
    pipeline, queued, http = rows[0][:3]
    return {
        "event stored → message stored (publish, pipeline queue, `event_process`)": (
            pipeline[0] * 1000,
            pipeline[1] * 1000,
        ),
        "message stored → claimed (commit, publish, delivery queue, claim)": (
            queued[0] * 1000,
            queued[1] * 1000,
        ),
        "claimed → sink answered (endpoints, signing, HTTP POST)": (http[0] * 1000, http[1] * 1000),
    }


@dataclass(kw_only=True)
class Run:
    name: str
    deliveries: Deliveries
    cpu: CpuBreakdown | None
    posting_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    load: float = 0.0
    wall_s: float = 0.0

    def cpu_per_message(self) -> str:
        if self.cpu is None or not self.deliveries.count:
            return NONE
        kinds = [k for k in CPU_KINDS if self.cpu.seconds.get(k)]
        return ", ".join(
            f"{k} {1000 * self.cpu.seconds[k] / self.deliveries.count:.2f}" for k in kinds
        )

    def cpu_total_per_message(self) -> float:
        if self.cpu is None or not self.deliveries.count:
            return 0.0
        return sum(1000 * self.cpu.seconds.get(k, 0.0) for k in CPU_KINDS) / self.deliveries.count


CPU_KINDS = ("gunicorn", "pipeline", "delivery", "sink", "postgres", "redis", "loadgen")
CPU_LABELS = (*CPU_KINDS, "other", "idle")


def classifier(stack: Stack) -> Any:
    groups = {
        stack.gunicorn.process.pid if stack.gunicorn.process else -1: "gunicorn",
        stack.pipeline.pid or -2: "pipeline",
        stack.delivery.pid or -3: "delivery",
        stack.sink.pid or -4: "sink",
    }
    me = os.getpid()

    def classify(pid: int, name: str, group: int) -> str:
        if pid == me:
            return "loadgen"
        if group in groups:
            return groups[group]
        if name.startswith("postgres"):
            # A client backend's title names its database; other people's
            # connections (a test suite's) are not ours.
            title = process_command_line(pid)
            is_client = re.search(r"\d\(\d+\)|\[local\]", title) is not None
            return "" if is_client and BENCH_DATABASE not in title else "postgres"
        if name.startswith("redis-server"):
            return "redis"
        return ""

    return classify


@contextlib.contextmanager
def profiling(stack: Stack, name: str, directory: Path | None) -> Iterator[None]:
    """py-spy (wall clock: waits count) on the delivery worker's processes during the block."""
    if directory is None or stack.delivery.pid is None:
        yield
        return
    py_spy = find_executable("py-spy", extra_globs=[str(Path(sys.executable).parent / "py-spy")])
    if py_spy is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    pids = process_children(stack.delivery.pid)
    recorders = []
    for index, pid in enumerate(pids):
        output = directory / f"{name}-pool{index}.txt"
        command = [
            py_spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--idle",
            "--format", "raw", "--output", str(output),
        ]  # fmt: skip
        recorders.append(
            subprocess.Popen(  # noqa: S603 - fixed command
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for recorder in recorders:
            try:
                recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()


def throughput_run(stack: Stack, arguments: argparse.Namespace, *, first: int) -> Run:
    """Everything running: post the events, wait for the sink to have them all."""
    name = "throughput"
    stack.reset()
    if arguments.wait_quiet > 0:
        wait_for_quiet(arguments.wait_quiet, busy_below=arguments.quiet_below)
    load = load_average()[0]
    say(f"{name}: posting {arguments.events:,} events (load average {load:.2f})")
    with profiling(stack, name, arguments.profile), CpuAccounting(classifier(stack)) as cpu:
        started = time.monotonic()
        sent = post_batches(
            stack, first=first, count=arguments.events, batch_size=arguments.batch_size
        )
        posting = time.monotonic() - started
        wait_delivered(stack, expected=len(sent), stall=arguments.stall, label=name)
    deliveries = check_deliveries(
        received=sink_dump(stack.sink_url), sent=sent, secret=stack.setup.secret, label=name
    )
    measured = Run(
        name=name,
        deliveries=deliveries,
        cpu=cpu.result,
        posting_s=posting,
        statuses=stack.messages_by_status(),
        load=load,
    )
    say(
        f"{name}: {deliveries.count:,} delivered; {deliveries.span_rate():,.0f}/s first to last, "
        f"{deliveries.overall_rate():,.0f}/s from the first POST"
    )
    return measured


def drain_run(stack: Stack, arguments: argparse.Namespace, *, first: int) -> Run:
    """The delivery worker stopped while the events are posted and turned into
    messages; then started, and timed while it empties the delivery queue."""
    name = "drain"
    stack.reset()
    stack.delivery.stop()
    say(f"{name}: posting {arguments.events:,} events with the delivery worker stopped")
    sent = post_batches(stack, first=first, count=arguments.events, batch_size=arguments.batch_size)
    deadline = time.monotonic() + 600
    while True:
        queued = stack.messages_by_status().get("queued", 0)
        if queued >= len(sent):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: the pipeline stored {queued:,} of {len(sent):,} messages")
        stack.check_alive()
        time.sleep(0.5)
    time.sleep(2.0)  # the pipeline's last publishes reach Redis
    if arguments.wait_quiet > 0:
        wait_for_quiet(arguments.wait_quiet, busy_below=arguments.quiet_below)
    load = load_average()[0]
    say(f"{name}: {len(sent):,} messages queued; starting the delivery worker (load {load:.2f})")
    stack.delivery.start()
    stack.delivery.wait_for_log(" ready.")
    with profiling(stack, name, arguments.profile), CpuAccounting(classifier(stack)) as cpu:
        wait_delivered(stack, expected=len(sent), stall=arguments.stall, label=name)
    deliveries = check_deliveries(
        received=sink_dump(stack.sink_url), sent=sent, secret=stack.setup.secret, label=name
    )
    measured = Run(
        name=name,
        deliveries=deliveries,
        cpu=cpu.result,
        statuses=stack.messages_by_status(),
        load=load,
    )
    say(f"{name}: {deliveries.count:,} delivered; {deliveries.span_rate():,.0f}/s first to last")
    return measured


def latency_run(stack: Stack, arguments: argparse.Namespace, *, first: int) -> Run:
    name = "latency"
    stack.reset()
    if arguments.wait_quiet > 0:
        wait_for_quiet(arguments.wait_quiet, busy_below=arguments.quiet_below)
    load = load_average()[0]
    say(
        f"{name}: {arguments.rate:g} events/s for {arguments.latency_duration:g} s "
        f"(load average {load:.2f})"
    )
    with CpuAccounting(classifier(stack)) as cpu:
        sent = post_open_loop(
            stack, rate=arguments.rate, duration=arguments.latency_duration, first=first
        )
        wait_delivered(stack, expected=len(sent), stall=arguments.stall, label=name)
    deliveries = check_deliveries(
        received=sink_dump(stack.sink_url), sent=sent, secret=stack.setup.secret, label=name
    )
    measured = Run(
        name=name,
        deliveries=deliveries,
        cpu=cpu.result,
        statuses=stack.messages_by_status(),
        stages=stages(stack),
        load=load,
    )
    lat = deliveries.latencies_ms
    say(
        f"{name}: p50 {percentile(lat, 50):.0f} ms, p99 {percentile(lat, 99):.0f} ms, "
        f"max {max(lat, default=0):.0f} ms"
    )
    return measured


def smoke_test(stack: Stack) -> None:
    """One event, end to end, checked before any load."""
    stack.reset()
    poster = Poster(stack.url, stack.headers())
    status, content, sent_at, answered_at = poster.post(
        "/api/v1/events", (EVENT_JSON % (7, 7)).encode()
    )
    if status != 202:
        raise BenchError(f"POST /api/v1/events answered {status}: {content[:500]!r}")
    sent = [Sent(event_id=json.loads(content)["id"], sent_at=sent_at, answered_at=answered_at)]
    count, _ = wait_delivered(stack, expected=1, stall=30, label="smoke test")
    if count != 1:
        raise BenchError(
            f"the smoke test's event was not delivered; messages: {stack.messages_by_status()}; "
            f"delivery worker:\n{stack.delivery.log_tail()}"
        )
    checked = check_deliveries(
        received=sink_dump(stack.sink_url), sent=sent, secret=stack.setup.secret, label="smoke"
    )
    if checked.problems:
        raise BenchError("; ".join(checked.problems))
    body = json.loads(checked.received[0]["body"])
    if body.get("recipient") != "user-7" or body.get("order_id") != "ord_00000007":
        raise BenchError(f"the webhook body is not what the template makes: {body}")


@dataclass(frozen=True, kw_only=True)
class Memory:
    label: str
    pid: int
    peak_kib: int


def memory(stack: Stack) -> list[Memory]:
    """Peak RSS of every process of the stack that is still running."""
    found = []
    processes = [
        (
            "gunicorn arbiter",
            "gunicorn worker",
            stack.gunicorn.process.pid if stack.gunicorn.process else None,
        ),
        ("pipeline worker (main)", "pipeline pool process", stack.pipeline.pid),
        ("delivery worker (main)", "delivery pool process", stack.delivery.pid),
    ]
    for main, child, pid in processes:
        if pid is None:
            continue
        for label, member in [(main, pid), *((child, c) for c in process_children(pid))]:
            peak = peak_rss_kib(member)
            if peak is not None:
                found.append(Memory(label=label, pid=member, peak_kib=peak))
    if stack.sink.pid is not None and (peak := peak_rss_kib(stack.sink.pid)) is not None:
        found.append(Memory(label="sink", pid=stack.sink.pid, peak_kib=peak))
    return found


# --- Report -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Report:
    command: str
    date: str
    machine: str
    code: str
    versions: dict[str, str]
    arguments: argparse.Namespace
    runs: list[Run]
    memory: list[Memory]
    foreign_tasks: int
    load_before: float
    background_before: float
    processes: list[str]
    reference: SinkReference | None = None

    def figures(self) -> list[Figure]:
        ref = self.reference
        found = []
        for measured in (self.run("throughput"), self.run("drain")):
            if measured is not None:
                rate = measured.deliveries.span_rate()
                found.append(
                    Figure(
                        name=f"Delivery, {measured.name}: webhooks delivered/s",
                        value=rate,
                        unit="messages/s",
                        target=f"≥ {TARGET_MESSAGES_PER_S:,}/s",
                        met=rate >= TARGET_MESSAGES_PER_S,
                        reference=f"the sink alone, POSTs/s from {REFERENCE_THREADS} threads",
                        reference_value=ref.posts_per_s if ref else None,
                    )
                )
        latency = self.run("latency")
        if latency is not None and latency.deliveries.latencies_ms:
            lat = latency.deliveries.latencies_ms
            for share, target in ((50, TARGET_P50_MS), (99, TARGET_P99_MS)):
                value = percentile(lat, share)
                found.append(
                    Figure(
                        name=f"Event to delivery at {self.arguments.rate:g} events/s, p{share}",
                        value=value,
                        unit="ms",
                        target=f"≤ {target:.0f} ms",
                        met=value <= target,
                        reference="one POST to the sink alone, p50 round trip ms",
                        reference_value=ref.round_trip_ms if ref else None,
                    )
                )
        return found

    def run(self, name: str) -> Run | None:
        return next((r for r in self.runs if r.name == name), None)

    def problems(self) -> list[str]:
        found = [problem for r in self.runs for problem in r.deliveries.problems]
        if self.foreign_tasks:
            found.append(
                f"the workers got {self.foreign_tasks} tasks of a schema that is no tenant here: "
                f"another process uses Redis database {self.arguments.redis_db} (--redis-db)"
            )
        return found

    def targets(self) -> list[tuple[str, str, bool]]:
        found = []
        throughput = self.run("throughput")
        drain = self.run("drain")
        for r in (throughput, drain):
            if r is not None:
                rate = r.deliveries.span_rate()
                found.append(
                    (
                        f"{r.name}: ≥ {TARGET_MESSAGES_PER_S:,} delivered messages/s",
                        f"{rate:,.0f}/s",
                        rate >= TARGET_MESSAGES_PER_S,
                    )
                )
        latency = self.run("latency")
        if latency is not None:
            lat = latency.deliveries.latencies_ms
            p50, p99 = percentile(lat, 50), percentile(lat, 99)
            found.append((f"p50 ≤ {TARGET_P50_MS:.0f} ms", f"{p50:.0f} ms", p50 <= TARGET_P50_MS))
            found.append((f"p99 ≤ {TARGET_P99_MS:.0f} ms", f"{p99:.0f} ms", p99 <= TARGET_P99_MS))
        return found

    def markdown(self) -> str:
        a = self.arguments
        lines = [
            f"Command: `{self.command}`  ",
            f"Date: {self.date}; {self.code}  ",
            f"Machine: {self.machine}; load average {self.load_before:.2f} and "
            f"{self.background_before:.0f}% CPU busy before the runs  ",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            "",
            *(
                [
                    f"Same-run reference: the sink alone took {self.reference.posts_per_s:,.0f} "
                    f"POSTs/s from {REFERENCE_THREADS} threads of this script over kept-alive "
                    f"connections, p50 round trip {self.reference.round_trip_ms:.2f} ms: what "
                    "delivery could reach if Herald's own work cost nothing.",
                    "",
                ]
                if self.reference
                else []
            ),
            "What ran (each in its own process group, all on this machine):",
            "",
            *(f"- {line}" for line in self.processes),
            "",
            markdown_table(
                ["Target", "Measured", "Met"],
                [[t, m, "yes" if ok else "**no**"] for t, m, ok in self.targets()],
            ),
            "",
        ]
        rows = []
        for r in self.runs:
            d = r.deliveries
            lat = d.latencies_ms
            rows.append(
                [
                    r.name,
                    f"{len(d.sent):,}",
                    f"{d.count:,}",
                    f"{d.span_rate():,.0f}",
                    f"{d.overall_rate():,.0f}" if r.name != "drain" else NONE,
                    f"{percentile(lat, 50):,.0f} / {percentile(lat, 95):,.0f} / "
                    f"{percentile(lat, 99):,.0f} / {max(lat, default=0):,.0f}",
                    f"{r.load:.2f}",
                ]
            )
        lines += [
            markdown_table(
                [
                    "Run",
                    "Events",
                    "Delivered",
                    "Messages/s first→last delivery",
                    "Messages/s first POST→last delivery",
                    "POST→sink ms p50 / p95 / p99 / max",
                    "Load before",
                ],
                rows,
            ),
            "",
            "Latency is the sink's receive time minus the client's send time of the "
            "event's POST (both `time.time()` on this machine). In the throughput and "
            "drain runs it mostly measures how long the backlog took to clear.",
            "",
        ]
        latency = self.run("latency")
        if latency is not None and latency.stages:
            lines += [
                "Latency run, by stage (database timestamps, "
                f"{latency.deliveries.count:,} messages):",
                "",
                markdown_table(
                    ["Stage", "p50 ms", "p99 ms"],
                    [[k, f"{v[0]:,.1f}", f"{v[1]:,.1f}"] for k, v in latency.stages.items()],
                ),
                "",
            ]
        lines += [
            "CPU per delivered message (ms), by process kind: "
            "(the CPU time each kind used during the run, divided by the messages delivered)",
            "",
            markdown_table(
                ["Run", "CPU ms per message", "Total", "Machine (share of 2 cores)"],
                [
                    [
                        r.name,
                        r.cpu_per_message(),
                        f"{r.cpu_total_per_message():.2f}",
                        r.cpu.describe(CPU_LABELS) if r.cpu else NONE,
                    ]
                    for r in self.runs
                ],
            ),
            "",
            "Peak RSS (VmHWM) per process, read at the end (the delivery worker is "
            "restarted for the drain run, so its figures cover the runs from there on):",
            "",
            markdown_table(
                ["Process", "Peak RSS MiB"],
                [[m.label, f"{m.peak_kib / 1024:.0f}"] for m in self.memory],
            ),
            "",
        ]
        statuses = {r.name: r.statuses for r in self.runs}
        lines.append(
            "Message statuses after each run: "
            + "; ".join(f"{n}: {s}" for n, s in statuses.items())
            + ". Signatures verified with standardwebhooks: "
            + ", ".join(f"{r.deliveries.verified} ({r.name})" for r in self.runs)
            + "."
        )
        if a.profile:
            lines.append("")
            lines.append(f"Profiled with py-spy ({a.profile}): figures are lower than usual.")
        return "\n".join(lines)


# Where a delivery pool process's time goes (wall clock). A sample goes to the
# first category with a marker (a substring of a frame) on its stack.
STAGE_CATEGORIES: list[tuple[str, list[str]]] = [
    # Markers for the per-message code and for the batched code (``*_many``)
    # that was being written while this benchmark was.
    ("claim transaction (`_claim`, `_claim_many`)", ["_claim (", "_claim_many ("]),
    (
        "webhook endpoints owed (`_endpoints_owed`, `_endpoints_accepted`)",
        ["_endpoints_owed (", "endpoints_owed (", "_endpoints_accepted ("],
    ),
    ("sign + HTTP POST (`_provider_send`)", ["_provider_send ("]),
    (
        "endpoint health (`endpoint_delivery_record`, `_health_summary`)",
        ["endpoint_delivery_record (", "_health_summary (", "endpoints_health"],
    ),
    (
        "signing secrets, render (`endpoint_address`, `_rendered`)",
        ["endpoint_address (", "_rendered ("],
    ),
    ("record transaction (`_record`, `_record_many`)", ["_record (", "_record_many ("]),
    ("rest of the delivery service", ["message_deliver (", "messages_deliver_many ("]),
    ("Celery around the task (tenant switch, ack, logging)", ["trace_task ("]),
    ("waiting for the next task (pool loop)", ["Worker.workloop ("]),
]
KIND_CATEGORIES: list[tuple[str, list[str]]] = [
    ("PostgreSQL round trips (psycopg waiting)", ["Connection.wait (", "wait_c (", "/waiting.py"]),
    ("HTTP (httpx/httpcore, sockets)", ["httpx/", "httpcore/", "socket.py"]),
    ("signing (standardwebhooks, hmac)", ["standardwebhooks/", "hmac.py"]),
    ("Django ORM and psycopg in Python", ["django/db/", "psycopg/"]),
    ("Celery/kombu/billiard (waiting for and handling tasks)", ["celery/", "kombu/", "billiard/"]),
]


def profile_report(directory: Path, runs: list[Run]) -> str:
    sections = []
    for r in runs:
        paths = sorted(directory.glob(f"{r.name}-pool*.txt"))
        if not paths:
            continue
        messages = max(1, r.deliveries.count)
        parts = [
            f"### {r.name}: py-spy, wall clock, {len(paths)} pool processes, {messages:,} messages"
        ]
        for title, categories in (("By stage", STAGE_CATEGORIES), ("By kind", KIND_CATEGORIES)):
            total, counts = profile_categories(paths, categories)
            # 100 samples/s: each sample is 10 ms of one pool process.
            rows = [
                [label, f"{count / max(1, total):.1%}", f"{count * 10 / messages:.3f}"]
                for label, count in sorted(counts.items(), key=lambda item: -item[1])
                if count
            ]
            parts.append(
                f"{title} ({total:,} samples):\n\n"
                + markdown_table(["Where", "Share", "process-ms per message"], rows)
            )
        _, top = profile_summary(paths, top=80)
        # Without the frames of the pool loop around everything.
        shown = [x for x in top if x.inclusive < 0.95][:30]
        parts.append(
            markdown_table(
                ["Function", "Inclusive", "Own"],
                [[f"`{x.function}`", f"{x.inclusive:.1%}", f"{x.own:.1%}"] for x in shown],
            )
        )
        sections.append("\n\n".join(parts))
    text = "\n\n".join(sections) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.md").write_text(text)
    return text


# --- Main ----------------------------------------------------------------------------------


def versions(database_url: str) -> dict[str, str]:
    found = {"Python": sys.version.split()[0]}
    for package in (
        "Django",
        "celery",
        "kombu",
        "httpx",
        "psycopg",
        "gunicorn",
        "standardwebhooks",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    found["PostgreSQL"] = postgres_version(database_url)
    return found


def command_line(argv: list[str]) -> str:
    return ".venv/bin/python bench/delivery.py " + " ".join(shlex.quote(p) for p in argv)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/delivery.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=10_000, help="events per throughput run")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch request")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s in the latency run")
    parser.add_argument(
        "--latency-duration", type=float, default=30.0, help="seconds of the latency run"
    )
    parser.add_argument(
        "--runs",
        default="throughput,drain,latency",
        help="which runs, comma-separated (throughput, drain, latency)",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument(
        "--gunicorn-threads", type=int, default=2, help="threads per gthread worker"
    )
    parser.add_argument(
        "--pipeline-concurrency", type=int, default=2, help="pipeline worker pool processes"
    )
    parser.add_argument(
        "--delivery-concurrency", type=int, default=2, help="delivery worker pool processes"
    )
    parser.add_argument(
        "--redis-db",
        type=int,
        default=BENCH_REDIS_DB,
        help="Redis database (cache and broker) of our stack; it is emptied first",
    )
    parser.add_argument(
        "--celery-app",
        default="herald.celery:app",
        metavar="MODULE:NAME",
        help="the Celery app the workers run: try a change (a wrapper module on PYTHONPATH) "
        "without editing Herald",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60.0,
        help="give up waiting for deliveries after this many seconds without one",
    )
    parser.add_argument(
        "--no-migrate", action="store_true", help="skip migrate_schemas (already migrated)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record the delivery pool processes (wall clock) during the throughput "
        "and drain runs; raw stacks and summary.md in DIR. Profiled figures are lower",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measured run, wait up to this long for the machine to be quiet",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=10.0,
        metavar="PERCENT",
        help="with --wait-quiet: quiet means less CPU busy than this",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="rewrite the Delivery block of docs/benchmarks.md"
    )
    parser.add_argument(
        "--figures", metavar="PATH", help="also write the headline figures as JSON (bench/all.py)"
    )
    parser.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    runs = [r.strip() for r in arguments.runs.split(",") if r.strip()]
    unknown = set(runs) - {"throughput", "drain", "latency"}
    if unknown or not runs:
        parser.error(f"--runs: unknown run(s) {sorted(unknown)}; use throughput, drain, latency")
    arguments.runs = runs
    if not 1 <= arguments.batch_size <= 1000:
        parser.error("--batch-size must be between 1 and 1000")
    return arguments


def benchmark(arguments: argparse.Namespace, argv: list[str]) -> Report:
    machine = machine_info()
    load_before = load_average()[0]
    say(f"machine: {machine.describe()}; load average {load_before:.2f}")
    background = cpu_busy_percent(3.0)
    if background > 20:
        say(f"warning: the machine is already {background:.0f}% busy; figures will be low")
    runs: list[Run] = []
    with own_stack(arguments) as stack:
        smoke_test(stack)
        say("smoke test passed: one event delivered, signature verified")
        reference = sink_reference(stack)
        say(
            f"reference: the sink alone takes {reference.posts_per_s:,.0f} POSTs/s from "
            f"{REFERENCE_THREADS} threads, p50 round trip {reference.round_trip_ms:.2f} ms"
        )
        first = 100
        for name in arguments.runs:
            step = {"throughput": throughput_run, "drain": drain_run, "latency": latency_run}[name]
            runs.append(step(stack, arguments, first=first))
            first += max(arguments.events, int(arguments.rate * arguments.latency_duration))
        found_memory = memory(stack)
        foreign = stack.foreign_tasks()
        processes = [
            f"gunicorn `herald.wsgi:application`, {arguments.workers} gthread workers x "
            f"{arguments.gunicorn_threads} threads",
            f"`celery -A herald.celery:app worker -Q pipeline --pool prefork --concurrency "
            f"{arguments.pipeline_concurrency}`",
            f"`celery -A herald.celery:app worker -Q delivery --pool prefork --concurrency "
            f"{arguments.delivery_concurrency}` (the delivery worker processes measured)",
            "the sink: one asyncio process answering 200 at once",
            "this script (`loadgen`): batches over 4 keep-alive connections, or single "
            "POSTs from up to 32 threads on an open-loop schedule",
            f"PostgreSQL and Redis (database {arguments.redis_db}); no beat, no other worker",
            "environment: HERALD_ENV=development, DEBUG=false, LOG_LEVEL=WARNING (Celery "
            "workers: --loglevel INFO), HERALD_ALLOW_LOOPBACK_URLS=true, "
            f"HERALD_RATE_LIMIT_ENABLED={stack.env['HERALD_RATE_LIMIT_ENABLED']}, "
            f"DATABASE_CONN_MAX_AGE={stack.env['DATABASE_CONN_MAX_AGE']}",
        ]
        database_url = stack.database_url
    return Report(
        command=command_line(argv),
        date=utc_now(),
        machine=machine.describe(),
        code=git_state(),
        versions=versions(database_url),
        arguments=arguments,
        runs=runs,
        memory=found_memory,
        foreign_tasks=foreign,
        load_before=load_before,
        background_before=background,
        processes=processes,
        reference=reference,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    if arguments.serve_sink:
        serve_sink(arguments.serve_sink)
        return 0
    if (
        arguments.profile
        and find_executable("py-spy", extra_globs=[str(Path(sys.executable).parent / "py-spy")])
        is None
    ):
        print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    started = time.monotonic()
    report = run_guarded(
        lambda: benchmark(arguments, argv),
        interrupted="interrupted; everything started has been stopped",
    )
    if isinstance(report, int):
        return report
    problems = report.problems()
    report_publish(
        report,
        bench="delivery",
        title="Delivery",
        figures=arguments.figures,
        write_docs=arguments.write_docs and not problems,
    )
    if arguments.profile:
        print(profile_report(arguments.profile, report.runs))
    met = all(ok for _, _, ok in report.targets())
    say(f"done in {time.monotonic() - started:.0f} s; targets " + ("met" if met else "NOT met"))
    if problems:
        for problem in problems:
            say(f"FAILED: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
