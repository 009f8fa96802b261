"""Soak run: ten minutes of mixed load across 50 tenants, some of whose webhook
endpoints fail or answer slowly (issue 7; `make soak`, not part of CI).

    .venv/bin/python bench/soak.py [--duration 600] [--tenants 50] [--rate 10] [--write-docs]

It sets up its own stack on the database ``herald_bench_soak`` (migrated) and
Redis database 10 (emptied first): ``--tenants`` tenants ``soak-01`` … (made
once and kept: a tenant's schema takes seconds to create), each with a fresh
``events:write`` key, the event type ``order.shipped``, a webhook template, a
rule sending each event to its recipient on the webhook channel, subscribers,
and ``--endpoints-per-tenant`` webhook endpoints at a local sink. Every
endpoint behaves as its path says: healthy (200 at once), failing (500 at
once, always) or slow (200 after ``--slow-seconds``); ``--failing-share`` and
``--slow-share`` of the endpoints (5 % and 1 %) are failing and slow. A
webhook message goes to every endpoint of its tenant, so a healthy endpoint
may share its messages with a failing or a slow one; the report tells those
apart.

The processes are production's set (docker/compose.yaml, herald.devstack run),
each in its own process group and stopped however the run ends: gunicorn
(gthread), one Celery worker for the ``default``, ``pipeline`` and ``delivery``
queues (prefork), the slow lane's worker (``delivery_slow``, threads) and
beat (the sweepers, the retries that wait in rows, the analytics fold). The
sink is this file with ``--serve-sink``.

Open loop for ``--duration`` seconds at ``--rate`` events/s over all tenants
(each send to a random tenant; ``--batch-share`` of the events in batches of
``--batch-size`` through POST /api/v1/events/batch, the rest one per POST
/api/v1/events). Every ``--interval`` seconds the sink's records are read and
the resident memory (VmRSS) of every Herald process sampled. After the load, a
bounded drain (``--drain`` seconds) waits until nothing is owed: every event
processed, no message sending or due, every owed delivery received.

The report (printed; ``--write-docs`` rewrites docs/soak.md): delivery lag
over time, memory per process from the end of the warm-up to the end with the
growth verdict, lost messages (must be 0), duplicates, and what the failing
endpoints' messages went through. Exit status: 0 when nothing was lost and no
process grew, 1 otherwise or on an error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import random
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    BenchError,
    CpuAccounting,
    Gunicorn,
    Supervised,
    TenantWanted,
    ensure_database,
    free_port,
    git_state,
    http_request,
    load_average,
    machine_info,
    markdown_table,
    process_children,
    process_command_line,
    say,
    signals_as_interrupt,
    sql,
    tenants_setup,
    utc_now,
    with_database,
    with_redis_db,
)
from delivery import (
    EVENT_JSON,
    EVENT_TYPE,
    FOREIGN_TASK_MARK,
    RULE_NAME,
    TEMPLATE_KEY,
    WEBHOOK_BODY,
    Poster,
    percentile,
    redis_flush,
    stack_env,
    versions,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "soak.md"
SOAK_DATABASE = "herald_bench_soak"
# Not 11 (bench/delivery.py) or 12 (bench/dashboard.py), nor 15 (`make test`).
SOAK_REDIS_DB = 10
PLAN_NAME = "soak"
SUBSCRIBERS = 50  # per tenant: user-0 … user-49
HEALTHY, FAILING, SLOW = "healthy", "failing", "slow"
KIND_PATHS = {HEALTHY: "h", FAILING: "f", SLOW: "s"}
PATH_KINDS = {path: kind for kind, path in KIND_PATHS.items()}
# What the sweepers need to pick up a due message: the delivery grace period
# (HERALD_DELIVERY_GRACE_SECONDS, 60) plus a beat interval (15 s) and some slack.
SWEEP_SLACK_SECONDS = 90.0
# The growth rule: a process grew when its RSS at the end exceeds its RSS at the
# end of the warm-up by more than both of these.
GROWTH_MIB = 20.0
GROWTH_SHARE = 0.10
SIGNATURES_VERIFIED = 200
TIMESTAMP_TOLERANCE = 300.0  # seconds, as standardwebhooks allows
NONE = "-"


# --- The sink ------------------------------------------------------------------------------

RESPONSES = {
    200: b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    500: b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\noops\n",
}


class SoakSink:
    """The webhook receiver for every endpoint: the first path segment says how
    to answer (``/h/…`` 200 at once, ``/f/…`` 500 at once, ``/s/…`` 200 after
    ``slow_seconds``). Each connection is its own coroutine, so a slow answer
    holds up nobody else. Every POST is recorded: (received at, path, status
    answered, webhook-id, webhook-timestamp, webhook-signature, body); ``GET
    /_dump`` hands them over and forgets them."""

    def __init__(self, slow_seconds: float) -> None:
        self.slow_seconds = slow_seconds
        self.records: list[tuple[float, str, int, str, str, str, str]] = []

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
                if method != "POST":
                    writer.write(self.answer(path))
                    await writer.drain()
                    continue
                kind = PATH_KINDS.get(path.split("/")[1] if path.count("/") > 1 else "")
                if kind == SLOW:
                    await asyncio.sleep(self.slow_seconds)
                status = 500 if kind == FAILING else 200
                self.records.append(
                    (
                        received,
                        path,
                        status,
                        headers.get("webhook-id", ""),
                        headers.get("webhook-timestamp", ""),
                        headers.get("webhook-signature", ""),
                        body.decode(errors="replace"),
                    )
                )
                writer.write(RESPONSES[status])
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            pass
        finally:
            writer.close()

    def answer(self, path: str) -> bytes:
        if path == "/_dump":
            records, self.records = self.records, []
            content = json.dumps(records).encode()
        elif path == "/_count":
            content = str(len(self.records)).encode()
        else:
            return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(content), content)


def serve_sink(port: int, slow_seconds: float) -> None:
    async def main() -> None:
        sink = SoakSink(slow_seconds)
        server = await asyncio.start_server(sink.connection, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@dataclass(frozen=True, kw_only=True)
class Received:
    at: float
    path: str
    status: int
    webhook_id: str
    timestamp: str
    signature: str
    body: str

    @property
    def event_id(self) -> str:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return str(json.loads(self.body)["event_id"])
        return ""


def sink_dump(url: str) -> list[Received]:
    status, _, content = http_request(f"{url}/_dump", timeout=60)
    if status != 200:
        raise BenchError(f"the sink answered {status} to /_dump")
    return [
        Received(at=r[0], path=r[1], status=r[2], webhook_id=r[3], timestamp=r[4], signature=r[5],
                 body=r[6])
        for r in json.loads(content)
    ]  # fmt: skip


# --- Setting up ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    path: str
    kind: str
    secret: str


@dataclass(frozen=True, kw_only=True)
class Tenant:
    index: int
    slug: str
    schema: str
    token: str
    endpoints: tuple[Endpoint, ...]

    @property
    def kinds(self) -> set[str]:
        return {endpoint.kind for endpoint in self.endpoints}

    def category(self, endpoint: Endpoint) -> str:
        """A healthy endpoint sharing its messages with a slow one waits in the
        slow lane with it; one sharing with a failing one does not."""
        if endpoint.kind == HEALTHY and SLOW in self.kinds:
            return "healthy, beside a slow one"
        if endpoint.kind == HEALTHY and FAILING in self.kinds:
            return "healthy, beside a failing one"
        return endpoint.kind


CATEGORIES = (HEALTHY, "healthy, beside a failing one", "healthy, beside a slow one", SLOW, FAILING)


def endpoint_plan(tenants: int, per_tenant: int, failing: float, slow: float) -> list[list[str]]:
    """The kind of each tenant's endpoints: ``slow`` and ``failing`` of all of them
    (at least one each when the share is above 0), each on a different tenant
    where there are enough, and on a tenant's last endpoint, so that a tenant
    with more than one endpoint keeps a healthy one."""
    total = tenants * per_tenant
    slow_count = max(1, round(total * slow)) if slow > 0 else 0
    failing_count = max(1, round(total * failing)) if failing > 0 else 0
    if slow_count + failing_count > total:
        raise BenchError(f"{slow_count + failing_count} special endpoints of {total}")
    kinds = [[HEALTHY] * per_tenant for _ in range(tenants)]
    slots = [(t, k) for k in reversed(range(per_tenant)) for t in range(tenants)]
    # Spread over the tenants: the slow ones from the last tenant down, the
    # failing ones from the first up.
    for t, k in slots[:slow_count]:
        kinds[tenants - 1 - t][k] = SLOW
    remaining = [(t, k) for t, k in slots if kinds[t][k] == HEALTHY]
    for t, k in remaining[:failing_count]:
        kinds[t][k] = FAILING
    return kinds


@dataclass(frozen=True, kw_only=True)
class Setup:
    tenants: tuple[Tenant, ...]
    events: str
    messages: str
    attempts: str
    seconds: float

    def table(self, tenant: Tenant, name: str) -> str:
        return f'"{tenant.schema}"."{getattr(self, name)}"'


def prepare(env: dict[str, str], arguments: argparse.Namespace, *, sink_url: str) -> Setup:
    started = time.monotonic()
    if not arguments.no_migrate:
        say(f"migrating {SOAK_DATABASE} (public schema and tenant schemas)")
    plan = endpoint_plan(
        arguments.tenants, arguments.endpoints_per_tenant, arguments.failing_share,
        arguments.slow_share,
    )  # fmt: skip
    slugs = [f"soak-{t + 1:02d}" for t in range(arguments.tenants)]
    wanted = [
        TenantWanted(
            slug=slug,
            name=f"Soak {slug}",
            admin_email="soak@example.com",
            endpoint_paths=tuple(
                f"/{KIND_PATHS[kind]}/{t + 1}/{k + 1}" for k, kind in enumerate(kinds)
            ),
        )
        for t, (slug, kinds) in enumerate(zip(slugs, plan, strict=True))
    ]
    say(
        f"ensuring {arguments.tenants} tenants (a new one takes seconds: its schema is "
        "migrated), their keys, rules, templates, subscribers and endpoints"
    )
    ready = tenants_setup(
        env,
        tenants=wanted,
        sink_url=sink_url,
        event_type=EVENT_TYPE,
        event_type_fields={"name": "Order shipped"},
        template=TEMPLATE_KEY,
        body=WEBHOOK_BODY,
        rule=RULE_NAME,
        key_name="soak",
        created_by="soak",
        plan=PLAN_NAME,
        subscribers=SUBSCRIBERS,
        migrate=not arguments.no_migrate,
        timeout=5400,
    )
    tenants = tuple(
        Tenant(
            index=index,
            slug=found.slug,
            schema=found.schema,
            token=found.token,
            endpoints=tuple(
                Endpoint(path=path, kind=PATH_KINDS[path.split("/")[1]], secret=secret)
                for path, secret in found.secrets.items()
            ),
        )
        for index, found in enumerate(ready.tenants)
    )
    return Setup(
        tenants=tenants,
        events=ready.events,
        messages=ready.messages,
        attempts=ready.attempts,
        seconds=time.monotonic() - started,
    )


# --- The stack -------------------------------------------------------------------------------


def celery(
    name: str, arguments: Sequence[str], *, env: dict[str, str], log_dir: Path
) -> Supervised:
    # INFO as production runs them, and for the worker's "ready." line.
    command = [sys.executable, "-m", "celery", "-A", "herald.celery:app", *arguments,
               "--loglevel", "INFO"]  # fmt: skip
    return Supervised(
        name=name, command=command, env=env, log_path=log_dir / f"herald-soak-{name}.log"
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
    worker: Supervised
    slow_worker: Supervised
    beat: Supervised

    def check_alive(self) -> None:
        self.gunicorn.check_alive()
        for process in (self.sink, self.worker, self.slow_worker, self.beat):
            process.check_alive()

    def processes(self) -> list[tuple[str, int]]:
        """(role, pid) of every Herald process running now."""
        found: list[tuple[str, int]] = []
        if self.gunicorn.process is not None:
            found.append(("gunicorn arbiter", self.gunicorn.process.pid))
            found += [("gunicorn worker", pid) for pid in self.gunicorn.worker_pids()]
        if self.worker.pid is not None:
            found.append(("worker default,pipeline,delivery (main)", self.worker.pid))
            found += [("worker pool process", pid) for pid in process_children(self.worker.pid)]
        if self.slow_worker.pid is not None:
            found.append(("slow-lane worker (threads)", self.slow_worker.pid))
        if self.beat.pid is not None:
            found.append(("beat", self.beat.pid))
        return found

    def classify(self, pid: int, name: str, group: int) -> str:
        """For CpuAccounting: "soak" for our processes and our database's backends,
        "" for everything else (counted as others')."""
        if pid == os.getpid():
            return "loadgen"
        ours = {self.sink.pid, self.worker.pid, self.slow_worker.pid, self.beat.pid}
        if self.gunicorn.process is not None:
            ours.add(self.gunicorn.process.pid)
        if group in ours:
            return "soak"
        if name.startswith("postgres"):
            title = process_command_line(pid)
            is_client = "(" in title or "[local]" in title
            return "" if is_client and SOAK_DATABASE not in title else "postgres"
        if name.startswith("redis-server"):
            return "redis"
        return ""

    def foreign_tasks(self) -> int:
        found = 0
        for process in (self.worker, self.slow_worker):
            with contextlib.suppress(OSError):
                found += process.log_path.read_text(errors="replace").count(FOREIGN_TASK_MARK)
        return found


@contextlib.contextmanager
def own_stack(arguments: argparse.Namespace) -> Iterator[Stack]:
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    database_url = with_database(server_url, SOAK_DATABASE)
    redis_url = with_redis_db(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL, arguments.redis_db)
    if ensure_database(database_url):
        say(f"created database {SOAK_DATABASE}")
    env = stack_env(database_url=database_url, redis_url=redis_url)
    log_dir = Path(tempfile.gettempdir())
    sink_port = free_port()
    sink_url = f"http://127.0.0.1:{sink_port}"
    sink = Supervised(
        name="sink",
        command=[
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-sink",
            str(sink_port),
            "--slow-seconds",
            str(arguments.slow_seconds),
        ],
        env=dict(os.environ),
        log_path=log_dir / "herald-soak-sink.log",
        grace=5.0,
    )
    schedule = log_dir / "herald-soak-celerybeat-schedule"
    with contextlib.ExitStack() as scope:
        scope.enter_context(sink)
        setup = prepare(env, arguments, sink_url=sink_url)
        say(f"setup took {setup.seconds:.0f} s")
        redis_flush(redis_url)
        for stale in log_dir.glob(f"{schedule.name}*"):
            stale.unlink()
        server = scope.enter_context(
            Gunicorn(
                workers=arguments.workers,
                worker_class="gthread",
                threads=arguments.gunicorn_threads,
                env=env,
                log_path=log_dir / "herald-soak-gunicorn.log",
            )
        )
        worker = scope.enter_context(
            celery(
                "worker",
                ["worker", "-Q", "default,pipeline,delivery", "--pool", "prefork",
                 "--concurrency", str(arguments.concurrency), "--hostname", "soak@%h"],
                env=env,
                log_dir=log_dir,
            )
        )  # fmt: skip
        slow_worker = scope.enter_context(
            celery(
                "worker-slow",
                ["worker", "-Q", "delivery_slow", "--pool", "threads",
                 "--concurrency", str(arguments.slow_concurrency), "--hostname", "soak-slow@%h"],
                env=env,
                log_dir=log_dir,
            )
        )  # fmt: skip
        beat = scope.enter_context(
            celery("beat", ["beat", "-s", str(schedule)], env=env, log_dir=log_dir)
        )
        server.wait_healthy(timeout=90)
        worker.wait_for_log(" ready.")
        slow_worker.wait_for_log(" ready.")
        beat.wait_for_log("beat: Starting")
        yield Stack(
            url=server.url,
            sink_url=sink_url,
            setup=setup,
            database_url=database_url,
            redis_url=redis_url,
            env=env,
            gunicorn=server,
            sink=sink,
            worker=worker,
            slow_worker=slow_worker,
            beat=beat,
        )
    with contextlib.suppress(Exception):
        redis_flush(redis_url)
    for stale in log_dir.glob(f"{schedule.name}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


# --- The load ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sent:
    tenant: int
    event_id: str
    sent_at: float


@dataclass(kw_only=True)
class Load:
    """The open-loop sender: ``rate`` events/s to random tenants, some in batches,
    from up to 32 threads (a slow answer does not delay the next send while a
    thread is free). Runs in its own thread until ``duration`` or ``stop``."""

    stack: Stack
    rate: float
    duration: float
    batch_share: float
    batch_size: int
    seed: int = 7
    sent: list[Sent] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    requests: int = 0
    batches: int = 0
    late_max: float = 0.0
    started_at: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, poster: Poster, tenant: int, first: int, count: int, due: float) -> None:
        late = max(0.0, time.time() - due)
        numbers = range(first, first + count)
        key = {"Authorization": f"Bearer {self.stack.setup.tenants[tenant].token}"}
        try:
            if count == 1:
                body = (EVENT_JSON % (first % SUBSCRIBERS, first)).encode()
                status, content, sent_at, _ = poster.post("/api/v1/events", body, headers=key)
            else:
                events = ",".join(EVENT_JSON % (n % SUBSCRIBERS, n) for n in numbers)
                status, content, sent_at, _ = poster.post(
                    "/api/v1/events/batch", f'{{"events":[{events}]}}'.encode(), headers=key
                )
        except OSError as error:
            with self.lock:
                self.refused.append(f"{count} events: {type(error).__name__}: {error}")
            return
        found: list[Sent] = []
        problem = ""
        if status != 202:
            problem = f"{count} events: {status} {content[:200]!r}"
        else:
            try:
                answer = json.loads(content)
                items = [answer] if count == 1 else answer["results"]
                found = [Sent(tenant=tenant, event_id=item["id"], sent_at=sent_at)
                         for item in items if item.get("id")]  # fmt: skip
            except (ValueError, KeyError, TypeError, AttributeError):
                problem = f"{count} events: an answer without ids: {content[:200]!r}"
            if len(found) != count and not problem:
                problem = f"{count - len(found)} of {count} events rejected: {content[:200]!r}"
        with self.lock:
            self.sent.extend(found)
            self.requests += 1
            self.batches += count > 1
            self.late_max = max(self.late_max, late)
            if problem:
                self.refused.append(problem)

    def run(self) -> None:
        chooser = random.Random(self.seed)  # noqa: S311 - a load pattern, not a secret
        # One kept-alive connection per sender thread, whichever tenant it sends
        # for: each request carries its tenant's key.
        poster = Poster(self.stack.url, {"Content-Type": "application/json"})
        tenants = len(self.stack.setup.tenants)
        # The chance that a send is a batch, so that ``batch_share`` of the events
        # come in batches: q·B / (q·B + 1 - q) = share.
        size = self.batch_size
        share = self.batch_share
        q = share / (size - share * (size - 1)) if size > 1 and share > 0 else 0.0
        self.started_at = start = time.time() + 0.2
        total = int(self.rate * self.duration)
        number = 0
        with ThreadPoolExecutor(max_workers=32) as pool:
            while number < total and not self.stop.is_set():
                due = start + number / self.rate
                pause = due - time.time()
                if pause > 0:
                    self.stop.wait(pause)
                tenant = chooser.randrange(tenants)
                count = min(size if chooser.random() < q else 1, total - number)
                pool.submit(self.send, poster, tenant, number, count, due)
                number += count
            if self.stop.is_set():
                pool.shutdown(wait=False, cancel_futures=True)


# --- Sampling ------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """The process's resident set size now (VmRSS) in KiB; None once it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


@dataclass(kw_only=True)
class Memory:
    """RSS samples of every Herald process, by pid, with a label per process."""

    labels: dict[int, str] = field(default_factory=dict)
    samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    baseline_at: float | None = None

    def sample(self, stack: Stack, at: float) -> int:
        """Sample every process; the total KiB."""
        first = not self.samples
        total = 0
        for role, pid in stack.processes():
            if pid not in self.labels:
                number = sum(1 for label in self.labels.values() if label.startswith(role))
                late = "" if first else " (started during the run)"
                self.labels[pid] = (
                    f"{role} {number + 1}{late}"
                    if role.endswith(("worker", "process"))
                    else f"{role}{late}"
                )
            kib = rss_kib(pid)
            if kib is not None:
                self.samples.setdefault(pid, []).append((at, kib))
                total += kib
        return total

    def rows(self) -> list[tuple[str, int, float | None, float, float | None, float | None]]:
        """(label, pid, RSS at the end of the warm-up, at the end, growth MiB, slope
        MiB/min after the warm-up) per process."""
        found = []
        for pid, samples in self.samples.items():
            base = [kib for at, kib in samples if self.baseline_at is not None
                    and at >= self.baseline_at]  # fmt: skip
            first = base[0] / 1024 if base else None
            last = samples[-1][1] / 1024
            after = [(at, kib) for at, kib in samples if self.baseline_at is not None
                     and at >= self.baseline_at]  # fmt: skip
            found.append(
                (
                    self.labels[pid],
                    pid,
                    first,
                    last,
                    last - first if first is not None else None,
                    slope_mib_per_minute(after),
                )
            )
        return found

    def grown(self) -> list[str]:
        """Processes whose end RSS exceeds their warm-up RSS by more than
        GROWTH_MIB and GROWTH_SHARE of it."""
        found = []
        for label, _, first, last, growth, _ in self.rows():
            if first is None or growth is None:
                continue
            if growth > GROWTH_MIB and growth > GROWTH_SHARE * first:
                found.append(f"{label}: {first:.0f} → {last:.0f} MiB")
        return found


def slope_mib_per_minute(samples: Sequence[tuple[float, int]]) -> float | None:
    """Least-squares slope of RSS over time, MiB per minute; None for < 3 samples."""
    if len(samples) < 3:
        return None
    xs = [at / 60 for at, _ in samples]
    ys = [kib / 1024 for _, kib in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


@dataclass(frozen=True, kw_only=True)
class Interval:
    """One ``--interval`` of the run: when it ended, what the machine did."""

    index: int
    ended_at: float
    busy_percent: float
    others_percent: float  # CPU of processes that are not the soak's (others' test suites)
    rss_total_kib: int
    load: float


@dataclass(kw_only=True)
class Sampler:
    """Every ``interval`` seconds from ``started_at``, through the load and the
    drain: the machine's CPU split (the soak's, others') and every Herald
    process's RSS; the first sample after ``warmup`` is the memory baseline."""

    stack: Stack
    memory: Memory
    started_at: float
    interval: float
    warmup: float
    intervals: list[Interval] = field(default_factory=list)
    meter: CpuAccounting | None = None

    def __post_init__(self) -> None:
        self.meter = CpuAccounting(self.stack.classify)
        self.meter.__enter__()

    def due(self) -> float:
        return self.started_at + (len(self.intervals) + 1) * self.interval

    def tick(self, *, accepted: int, requests: int) -> None:
        """Sample if the current interval has ended."""
        now = time.time()
        if now < self.due() or self.meter is None:
            return
        if self.memory.baseline_at is None and now - self.started_at >= self.warmup:
            self.memory.baseline_at = now
        total = self.memory.sample(self.stack, now)
        self.meter.__exit__(None, None, None)
        cpu = self.meter.result
        sample = Interval(
            index=len(self.intervals),
            ended_at=now,
            busy_percent=100.0 - cpu.percent("idle") if cpu else 0.0,
            others_percent=cpu.percent("other") if cpu else 0.0,
            rss_total_kib=total,
            load=load_average()[0],
        )
        self.intervals.append(sample)
        self.meter = CpuAccounting(self.stack.classify)
        self.meter.__enter__()
        say(
            f"{now - self.started_at:.0f} s: {accepted:,} events accepted, {requests:,} "
            f"requests at the sink, machine {sample.busy_percent:.0f}% busy "
            f"({sample.others_percent:.0f}% others'), Herald RSS {total / 1024:.0f} MiB"
        )


# --- The checks at the end ------------------------------------------------------------------


def pending(stack: Stack) -> dict[str, int]:
    """What Herald still owes, over every tenant: events not through the pipeline,
    messages sending, and queued messages that are due."""
    parts = []
    for tenant in stack.setup.tenants:
        parts.append(
            "SELECT "  # noqa: S608 - our own table names
            f"(SELECT count(*) FROM {stack.setup.table(tenant, 'events')} "
            "WHERE status IN ('accepted', 'queued', 'processing')), "
            f"(SELECT count(*) FROM {stack.setup.table(tenant, 'messages')} "
            "WHERE status = 'sending'), "
            f"(SELECT count(*) FROM {stack.setup.table(tenant, 'messages')} WHERE status = "
            "'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= now()))"
        )
    rows = sql(stack.database_url, " UNION ALL ".join(parts))
    return {
        "events in the pipeline": sum(int(r[0]) for r in rows),
        "messages sending": sum(int(r[1]) for r in rows),
        "messages queued and due": sum(int(r[2]) for r in rows),
    }


@dataclass(frozen=True, kw_only=True)
class Fate:
    """What became of one accepted event's message, from the database."""

    status: str  # "" when the event has no message
    scheduled: bool  # queued with a next attempt set (in the future, or due for the next sweep)
    attempts: int
    event_status: str


def fates(stack: Stack) -> dict[str, Fate]:
    found: dict[str, Fate] = {}
    for tenant in stack.setup.tenants:
        rows = sql(
            stack.database_url,
            "SELECT e.id::text, e.status, coalesce(m.status, ''), "  # noqa: S608
            "coalesce(m.status = 'queued' AND m.next_attempt_at IS NOT NULL, false), "
            "coalesce(m.attempt_count, 0) "
            f"FROM {stack.setup.table(tenant, 'events')} e "
            f"LEFT JOIN {stack.setup.table(tenant, 'messages')} m ON m.event_id = e.id",
        )
        for event_id, event_status, status, scheduled, attempts in rows:
            found[str(event_id)] = Fate(
                status=str(status),
                scheduled=bool(scheduled),
                attempts=int(attempts),
                event_status=str(event_status),
            )
    return found


def wait_drained(
    stack: Stack, *, owed: set[tuple[str, str]], received: set[tuple[str, str]],
    records: list[Received], limit: float, sampler: Sampler, accepted: int,
) -> float:  # fmt: skip
    """Wait (up to ``limit`` s) until nothing is pending in Herald and every owed
    (event, endpoint) delivery arrived; the seconds it took."""
    started = time.monotonic()
    shown = started
    while True:
        for record in sink_dump(stack.sink_url):
            records.append(record)
            if record.status == 200:
                received.add((record.event_id, record.path))
        sampler.tick(accepted=accepted, requests=len(records))
        left = pending(stack)
        missing = len(owed - received)
        now = time.monotonic()
        # Queued and due messages do not hold the drain up: what is owed to a healthy or
        # slow endpoint is counted in ``missing``, and a failing endpoint's are due
        # again and again, each waiting for the next sweep.
        if not left["events in the pipeline"] and not left["messages sending"] and not missing:
            return now - started
        if now - started > limit:
            say(f"drain: gave up after {limit:g} s; still {missing:,} deliveries owed, {left}")
            return now - started
        if now - shown > 10:
            say(f"drain: {missing:,} deliveries owed; {left}")
            shown = now
        stack.check_alive()
        time.sleep(2.0)


# --- The run -------------------------------------------------------------------------------


def signature_problem(webhook: Any, record: Received, *, tolerance: float) -> str:
    """Why ``record`` would fail a receiver's Standard Webhooks check at the time
    it arrived ("" when it passes): its timestamp must be within ``tolerance``
    of its arrival, and one of its v1 signatures must match."""
    try:
        stamp = int(record.timestamp)
    except ValueError:
        return f"the timestamp {record.timestamp!r} is not a number"
    if abs(record.at - stamp) > tolerance:
        return f"signed {record.at - stamp:.0f} s before it arrived"
    signed = datetime.fromtimestamp(stamp, UTC)
    expected = webhook.sign(record.webhook_id, signed, record.body).encode()
    given = [part.encode() for part in record.signature.split(" ")]
    if not any(hmac.compare_digest(expected, part) for part in given):
        return "no signature matches the endpoint's secret"
    return ""


@dataclass(kw_only=True)
class Result:
    """Everything the report needs."""

    command: str
    date: str
    machine: str
    code: str
    versions: dict[str, str]
    arguments: argparse.Namespace
    setup_seconds: float
    tenants: tuple[Tenant, ...]
    load: Load
    records: list[Received]
    fates: dict[str, Fate]
    intervals: list[Interval]
    memory: Memory
    drain_seconds: float
    foreign_tasks: int
    processes: list[str]
    problems: list[str] = field(default_factory=list)

    # Filled by ``judge``.
    lost: dict[str, int] = field(default_factory=dict)
    late: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)
    failing_outcomes: dict[str, int] = field(default_factory=dict)
    attempts_histogram: dict[int, int] = field(default_factory=dict)
    verified: int = 0
    failing_requests: int = 0
    lag_by_category: dict[str, list[float]] = field(default_factory=dict)
    lag_by_interval: dict[int, list[float]] = field(default_factory=dict)
    delivered_by_interval: dict[int, int] = field(default_factory=dict)
    accepted_by_interval: dict[int, int] = field(default_factory=dict)

    def judge(self) -> None:
        from standardwebhooks.webhooks import Webhook

        a = self.arguments
        start = self.load.started_at
        sent = {item.event_id: item for item in self.load.sent}
        endpoint_of = {
            endpoint.path: (tenant, endpoint)
            for tenant in self.tenants
            for endpoint in tenant.endpoints
        }
        first_seen: dict[tuple[str, str], float] = {}
        copies: dict[tuple[str, str], int] = {}
        requests_by_path: dict[str, int] = {}
        unknown = 0
        for record in self.records:
            requests_by_path[record.path] = requests_by_path.get(record.path, 0) + 1
            if record.status != 200:
                continue
            if record.path not in endpoint_of or record.event_id not in sent:
                unknown += 1
                continue
            key = (record.event_id, record.path)
            copies[key] = copies.get(key, 0) + 1
            first_seen[key] = min(first_seen.get(key, record.at), record.at)
            index = int((record.at - start) // a.interval)
            self.delivered_by_interval[index] = self.delivered_by_interval.get(index, 0) + 1
        if unknown:
            self.problems.append(f"{unknown} deliveries name an event or endpoint not of this run")
        for item in sent.values():
            index = int((item.sent_at - start) // a.interval)
            self.accepted_by_interval[index] = self.accepted_by_interval.get(index, 0) + 1
        self.lost = {category: 0 for category in CATEGORIES}
        self.lost["events without a message"] = 0
        self.duplicates = {category: 0 for category in CATEGORIES}
        self.lag_by_category = {category: [] for category in CATEGORIES}
        for item in sent.values():
            tenant = self.tenants[item.tenant]
            fate = self.fates.get(item.event_id)
            if fate is None or not fate.status:
                self.lost["events without a message"] += 1
                continue
            for endpoint in tenant.endpoints:
                category = tenant.category(endpoint)
                key = (item.event_id, endpoint.path)
                if endpoint.kind == FAILING:
                    outcome = (
                        "failed" if fate.status == "failed"
                        else "scheduled for a retry" if fate.scheduled
                        else f"{fate.status} (neither failed nor scheduled)"
                    )  # fmt: skip
                    self.failing_outcomes[outcome] = self.failing_outcomes.get(outcome, 0) + 1
                    self.attempts_histogram[fate.attempts] = (
                        self.attempts_histogram.get(fate.attempts, 0) + 1
                    )
                    if fate.status != "failed" and not fate.scheduled:
                        self.lost[category] += 1
                    continue
                if key not in first_seen:
                    self.lost[category] += 1
                    if fate.status in ("queued", "sending"):
                        self.late += 1
                    continue
                self.duplicates[category] += copies[key] - 1
                lag = (first_seen[key] - item.sent_at) * 1000
                self.lag_by_category[category].append(lag)
                if category == HEALTHY:
                    index = int((item.sent_at - start) // a.interval)
                    self.lag_by_interval.setdefault(index, []).append(lag)
        # Every 500 to a failing endpoint is one attempt; the sink saw them all.
        self.failing_requests = sum(
            count for path, count in requests_by_path.items()
            if endpoint_of.get(path, (None, None))[1] is not None
            and endpoint_of[path][1].kind == FAILING
        )  # fmt: skip
        sample = [r for r in self.records if r.status == 200 and r.path in endpoint_of]
        for record in random.Random(1).sample(  # noqa: S311 - a sample, not a secret
            sample, min(SIGNATURES_VERIFIED, len(sample))
        ):
            # Checked as the receiver checked it on arrival: Webhook.verify would
            # hold the timestamp against now, minutes after the run.
            problem = signature_problem(
                Webhook(endpoint_of[record.path][1].secret), record, tolerance=TIMESTAMP_TOLERANCE
            )
            if problem:
                self.problems.append(f"webhook {record.webhook_id} does not verify: {problem}")
                break
            self.verified += 1
        if self.load.refused:
            self.problems.append(
                f"{len(self.load.refused)} sends were not accepted in full, the first: "
                f"{self.load.refused[0]}"
            )
        if self.foreign_tasks:
            self.problems.append(
                f"the workers got {self.foreign_tasks} tasks of a schema that is no tenant here: "
                f"another process uses Redis database {a.redis_db} (--redis-db)"
            )

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    def verdict(self) -> tuple[bool, list[str]]:
        reasons = list(self.problems)
        if self.lost_total:
            reasons.append(f"{self.lost_total:,} messages lost")
        grown = self.memory.grown()
        if grown:
            reasons.append("memory grew: " + "; ".join(grown))
        if self.memory.baseline_at is None:
            reasons.append("no memory sample after the warm-up (run longer than --warmup)")
        return not reasons, reasons

    def markdown(self) -> str:
        a = self.arguments
        ok, reasons = self.verdict()
        load = self.load
        accepted = len(load.sent)
        lines = [
            "# Soak run",
            "",
            "Written by `bench/soak.py --write-docs` (`make soak`, not part of CI): "
            "mixed load across many tenants, some of whose webhook endpoints fail or "
            "answer slowly, to show that delivery lag stays flat, memory does not grow "
            "and no message is lost. Re-run it to replace this page.",
            "",
            f"Command: `{self.command}`  ",
            f"Date: {self.date}; {self.code}  ",
            f"Machine: {self.machine}  ",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            "",
            f"**Verdict: {'PASS' if ok else 'FAIL'}** — lost messages: {self.lost_total:,}; "
            f"memory: {'no growth trend' if not self.memory.grown() else 'GROWTH'}"
            + ("" if ok else "; " + "; ".join(reasons))
            + f". {self.lag_trend()}",
            "",
            "## What ran",
            "",
            *(f"- {line}" for line in self.processes),
            "",
            f"Setup (database, {len(self.tenants)} tenants with their keys, rules, "
            f"templates, subscribers and endpoints) took {self.setup_seconds:.0f} s; "
            f"the drain after the load {self.drain_seconds:.0f} s.",
            "",
            "## Load",
            "",
            f"{accepted:,} events accepted in {load.requests:,} requests "
            f"({load.batches:,} batches of up to {a.batch_size}) over {a.duration:g} s "
            f"(target {a.rate:g} events/s, {a.batch_share:.0%} of them in batches), to "
            f"{len(self.tenants)} tenants chosen at random per request; "
            f"{len(load.refused)} requests not accepted in full; the latest send started "
            f"{load.late_max * 1000:.0f} ms after its time.",
            "",
            "## Delivery lag over time",
            "",
            f"Per {a.interval:g} s of the run: events accepted (by send time), deliveries "
            "answered 200 at the sink (by receive time, every endpoint), and the lag of "
            "the healthy endpoints of tenants whose endpoints are all healthy (sink "
            "receive time minus the client's send time of the event, both "
            "`time.time()` on this machine; events grouped by send time). CPU busy is the "
            "whole machine's (100 % = all cores); \"others'\" is the part used by "
            "processes that are not the soak's (Herald, the sink, this script, PostgreSQL "
            "backends of its database, Redis), such as other people's test suites on a "
            "shared machine. RSS is the sum over Herald's processes at the interval's end.",
            "",
            markdown_table(
                [
                    "From s",
                    "Accepted",
                    "Delivered",
                    "Lag p50 ms",
                    "p95",
                    "p99",
                    "max",
                    "CPU busy",
                    "of it others'",
                    "Herald RSS MiB",
                ],
                self.interval_rows(),
            ),
            "",
            "Over the whole run, by kind of endpoint (a healthy endpoint beside a slow one "
            "shares its messages with it, so they go through the slow lane together):",
            "",
            markdown_table(
                [
                    "Endpoints",
                    "Count",
                    "Deliveries owed",
                    "Lag p50 ms",
                    "p99",
                    "max",
                    "Duplicates",
                    "Lost",
                ],
                self.category_rows(),
            ),
            "",
            "## Memory",
            "",
            f"VmRSS of every Herald process, sampled every {a.interval:g} s; the baseline "
            f"is the first sample after the {a.warmup:g} s warm-up, the end sample is taken "
            "after the drain. **Rule:** a process grew when its end RSS exceeds its "
            f"baseline by more than {GROWTH_MIB:.0f} MiB *and* by more than "
            f"{GROWTH_SHARE:.0%}; the least-squares slope over the samples from the "
            "baseline on is shown for reading the trend, not judged.",
            "",
            markdown_table(
                ["Process", "pid", "Baseline MiB", "End MiB", "Growth MiB", "Slope MiB/min"],
                [
                    [
                        label,
                        str(pid),
                        f"{first:.0f}" if first is not None else NONE,
                        f"{last:.0f}",
                        f"{growth:+.1f}" if growth is not None else NONE,
                        f"{slope:+.2f}" if slope is not None else NONE,
                    ]
                    for label, pid, first, last, growth, slope in self.memory.rows()
                ],
            ),
            "",
            "Verdict: "
            + ("no growth trend." if not self.memory.grown() else "; ".join(self.memory.grown())),
            "",
            "## Lost messages",
            "",
            "After the drain, every accepted event's delivery to each endpoint of its "
            "tenant: a healthy or slow endpoint must have received it (answered 200); a "
            "failing endpoint's message must be `failed` or `queued` with its next "
            "attempt set (scheduled: in the future, or due and waiting for the next "
            "sweep, which claims it from its row). Anything else is lost. An accepted event "
            "without a message is lost too.",
            "",
            markdown_table(
                ["Where", "Lost"], [[name, f"{count:,}"] for name, count in self.lost.items()]
            ),
            "",
            f"Lost in total: **{self.lost_total:,}**"
            + (
                f" ({self.late:,} of them still queued or sending in Herald: late, not gone)"
                if self.late
                else ""
            )
            + ". Duplicates (the same event twice at one endpoint, by event id and "
            f"webhook-id; allowed, delivery is at least once): "
            f"{sum(self.duplicates.values()):,}. Signatures verified with "
            f"standardwebhooks: {self.verified} of a random sample.",
            "",
            "## Failing endpoints",
            "",
            "Herald's retry schedule (`channels_delivery/retry.py`, not configurable) waits "
            "about 0 s, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (±20 %) between attempts, so "
            "within a run of minutes a failing endpoint's message is retried from the "
            "Celery countdown twice and then from its row by the sweeper (beat, every "
            "15 s) once the 5 minutes passed; it is not failed for good until about "
            "28 hours later. Its messages at the end:",
            "",
            markdown_table(
                ["State", "Messages"],
                [[k, f"{v:,}"] for k, v in sorted(self.failing_outcomes.items())],
            ),
            "",
            "Attempts per message: "
            + (
                ", ".join(
                    f"{n} attempts: {count:,}"
                    for n, count in sorted(self.attempts_histogram.items())
                )
                or NONE
            )
            + f". Requests the failing endpoints answered 500: {self.failing_requests:,}.",
            "",
            "## Endpoints",
            "",
            "; ".join(
                f"{tenant.slug}: {' + '.join(e.kind for e in tenant.endpoints)}"
                for tenant in self.tenants
                if tenant.kinds != {HEALTHY}
            )
            + f"; the other {sum(1 for t in self.tenants if t.kinds == {HEALTHY})} tenants' "
            "endpoints are all healthy.",
        ]
        if reasons:
            lines += ["", "## Problems", "", *(f"- {reason}" for reason in reasons)]
        return "\n".join(lines) + "\n"

    def lag_trend(self) -> str:
        """The healthy endpoints' lag in the first and the last interval of the load
        (not judged: the verdict is about losses and memory)."""
        loaded = sorted(i for i in self.lag_by_interval if i in self.accepted_by_interval)
        if not loaded:
            return "Lag: no healthy deliveries."
        first = percentile(self.lag_by_interval[loaded[0]], 50)
        last = percentile(self.lag_by_interval[loaded[-1]], 50)
        growing = last > 2 * first and last > 1000
        return (
            f"Lag of the healthy endpoints, p50: {first:,.0f} ms in the first interval, "
            f"{last:,.0f} ms in the last"
            + (
                " — growing: the stack did not keep up with the rate on this machine "
                "(see the CPU columns)"
                if growing
                else ""
            )
            + "."
        )

    def interval_rows(self) -> list[list[str]]:
        rows = []
        busy = {i.index: i for i in self.intervals}
        last = max([*self.accepted_by_interval, *self.delivered_by_interval, *busy], default=-1)
        for index in range(last + 1):
            lag = self.lag_by_interval.get(index, [])
            sample = busy.get(index)
            rows.append(
                [
                    f"{index * self.arguments.interval:g}",
                    f"{self.accepted_by_interval.get(index, 0):,}",
                    f"{self.delivered_by_interval.get(index, 0):,}",
                    f"{percentile(lag, 50):,.0f}" if lag else NONE,
                    f"{percentile(lag, 95):,.0f}" if lag else NONE,
                    f"{percentile(lag, 99):,.0f}" if lag else NONE,
                    f"{max(lag):,.0f}" if lag else NONE,
                    f"{sample.busy_percent:.0f}%" if sample else NONE,
                    f"{sample.others_percent:.0f}%" if sample else NONE,
                    f"{sample.rss_total_kib / 1024:,.0f}" if sample else NONE,
                ]
            )
        return rows

    def category_rows(self) -> list[list[str]]:
        counts = {category: 0 for category in CATEGORIES}
        owed = {category: 0 for category in CATEGORIES}
        per_tenant = {tenant.index: 0 for tenant in self.tenants}
        for item in self.load.sent:
            per_tenant[item.tenant] += 1
        for tenant in self.tenants:
            for endpoint in tenant.endpoints:
                counts[tenant.category(endpoint)] += 1
                owed[tenant.category(endpoint)] += per_tenant[tenant.index]
        rows = []
        for category in CATEGORIES:
            lag = self.lag_by_category.get(category, [])
            rows.append(
                [
                    category,
                    str(counts[category]),
                    f"{owed[category]:,}",
                    f"{percentile(lag, 50):,.0f}" if lag else NONE,
                    f"{percentile(lag, 99):,.0f}" if lag else NONE,
                    f"{max(lag):,.0f}" if lag else NONE,
                    f"{self.duplicates.get(category, 0):,}" if category != FAILING else NONE,
                    f"{self.lost.get(category, 0):,}",
                ]
            )
        return rows


def soak(arguments: argparse.Namespace, argv: list[str]) -> Result:
    machine = machine_info()
    say(f"machine: {machine.describe()}; load average {load_average()[0]:.2f}")
    memory = Memory()
    records: list[Received] = []
    with own_stack(arguments) as stack:
        say("stack up; a first sample of every process's memory")
        memory.sample(stack, time.time())
        load = Load(
            stack=stack,
            rate=arguments.rate,
            duration=arguments.duration,
            batch_share=arguments.batch_share,
            batch_size=arguments.batch_size,
        )
        sender = threading.Thread(target=load.run, name="load", daemon=True)
        say(
            f"load: {arguments.rate:g} events/s for {arguments.duration:g} s over "
            f"{len(stack.setup.tenants)} tenants"
        )
        sender.start()
        try:
            while not load.started_at:
                if not sender.is_alive():
                    raise BenchError("the load generator stopped before it started")
                time.sleep(0.05)
            sampler = Sampler(
                stack=stack,
                memory=memory,
                started_at=load.started_at,
                interval=arguments.interval,
                warmup=arguments.warmup,
            )
            while sender.is_alive():
                stack.check_alive()
                if time.time() >= sampler.due():
                    records += sink_dump(stack.sink_url)
                    sampler.tick(accepted=len(load.sent), requests=len(records))
                time.sleep(0.5)
        finally:
            load.stop.set()
            sender.join(timeout=120)
        say(f"load done: {len(load.sent):,} events accepted; draining")
        owed = {
            (item.event_id, endpoint.path)
            for item in load.sent
            for endpoint in stack.setup.tenants[item.tenant].endpoints
            if endpoint.kind != FAILING
        }
        received = {(r.event_id, r.path) for r in records if r.status == 200}
        drain = wait_drained(
            stack,
            owed=owed,
            received=received,
            records=records,
            limit=arguments.drain,
            sampler=sampler,
            accepted=len(load.sent),
        )
        end = time.time()
        if memory.baseline_at is None:
            memory.baseline_at = end
        memory.sample(stack, end)
        found_fates = fates(stack)
        processes = [
            f"gunicorn `herald.wsgi:application`, {arguments.workers} gthread workers x "
            f"{arguments.gunicorn_threads} threads",
            "`celery -A herald.celery:app worker -Q default,pipeline,delivery --pool prefork "
            f"--concurrency {arguments.concurrency}`",
            "`celery -A herald.celery:app worker -Q delivery_slow --pool threads "
            f"--concurrency {arguments.slow_concurrency}` (the slow lane)",
            "`celery -A herald.celery:app beat` (sweepers every 15 s, analytics fold every 10 s)",
            f"the sink: one asyncio process; healthy endpoints answer 200 at once, failing "
            f"ones 500 at once, slow ones 200 after {arguments.slow_seconds:g} s "
            "(Herald's webhook timeout is 10 s; its slow lane takes endpoints slower than 2 s)",
            "this script: open-loop sends from up to 32 threads over kept-alive connections",
            f"PostgreSQL (database `{SOAK_DATABASE}`) and Redis (database {arguments.redis_db})",
            "environment: HERALD_ENV=development, DEBUG=false, LOG_LEVEL=WARNING (Celery: "
            "--loglevel INFO), HERALD_ALLOW_LOOPBACK_URLS=true, "
            f"HERALD_RATE_LIMIT_ENABLED={stack.env['HERALD_RATE_LIMIT_ENABLED']}, "
            f"DATABASE_CONN_MAX_AGE={stack.env['DATABASE_CONN_MAX_AGE']}; no retry or "
            "sweeper setting changed",
        ]
        foreign = stack.foreign_tasks()
        database_url = stack.database_url
        setup = stack.setup
    result = Result(
        command=".venv/bin/python bench/soak.py " + " ".join(shlex.quote(p) for p in argv),
        date=utc_now(),
        machine=machine.describe(),
        code=git_state(),
        versions=versions(database_url),
        arguments=arguments,
        setup_seconds=setup.seconds,
        tenants=setup.tenants,
        load=load,
        records=records,
        fates=found_fates,
        intervals=sampler.intervals,
        memory=memory,
        drain_seconds=drain,
        foreign_tasks=foreign,
        processes=processes,
    )
    result.judge()
    return result


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--tenants", type=int, default=50, help="tenants")
    parser.add_argument("--endpoints-per-tenant", type=int, default=2, help="webhook endpoints")
    parser.add_argument("--rate", type=float, default=10.0, help="events/s over all tenants")
    parser.add_argument(
        "--batch-share", type=float, default=0.2, help="share of the events sent in batches"
    )
    parser.add_argument("--batch-size", type=int, default=20, help="events per batch request")
    parser.add_argument(
        "--failing-share", type=float, default=0.05, help="share of endpoints answering 500"
    )
    parser.add_argument(
        "--slow-share", type=float, default=0.01, help="share of endpoints answering slowly"
    )
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=8.0,
        help="how long a slow endpoint takes (below Herald's 10 s webhook timeout)",
    )
    parser.add_argument(
        "--interval", type=float, default=60.0, help="seconds between samples (report rows)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds of load before the memory baseline is sampled",
    )
    parser.add_argument(
        "--drain", type=float, default=300.0, help="at most this long to wait after the load"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--gunicorn-threads", type=int, default=2, help="threads per worker")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="pool processes of the Celery worker"
    )
    parser.add_argument(
        "--slow-concurrency", type=int, default=16, help="threads of the slow-lane worker"
    )
    parser.add_argument(
        "--redis-db",
        type=int,
        default=SOAK_REDIS_DB,
        help="Redis database (cache and broker) of our stack; it is emptied first",
    )
    parser.add_argument(
        "--no-migrate", action="store_true", help="skip migrate_schemas (already migrated)"
    )
    parser.add_argument("--write-docs", action="store_true", help="rewrite docs/soak.md")
    parser.add_argument("--serve-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.batch_size <= 1000:
        parser.error("--batch-size must be between 1 and 1000")
    if arguments.tenants < 1 or arguments.endpoints_per_tenant < 1:
        parser.error("--tenants and --endpoints-per-tenant must be at least 1")
    if arguments.tenants > 99:
        parser.error("--tenants: at most 99")
    if arguments.rate <= 0 or arguments.duration <= 0 or arguments.interval <= 0:
        parser.error("--rate, --duration and --interval must be above 0")
    return arguments


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    if arguments.serve_sink:
        serve_sink(arguments.serve_sink, arguments.slow_seconds)
        return 0
    started = time.monotonic()
    try:
        with signals_as_interrupt():
            result = soak(arguments, argv)
    except BenchError as error:
        say(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything started has been stopped")
        return 130
    report = result.markdown()
    print(report)
    if arguments.write_docs:
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        DOCS.write_text(report)
        say(f"wrote {DOCS.relative_to(ROOT)}")
    ok, reasons = result.verdict()
    say(f"done in {time.monotonic() - started:.0f} s: " + ("PASS" if ok else "FAIL"))
    for reason in reasons:
        say(f"FAILED: {reason}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
