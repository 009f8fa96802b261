"""Ingest benchmark: POST /api/v1/events and POST /api/v1/events/batch under load.

    .venv/bin/python bench/ingest.py [--duration 20] [--connections 32] [--workers 3]
                                     [--worker-class gthread] [--gunicorn-threads 2]
                                     [--target URL --key KEY] [--write-docs]

Without ``--target`` it sets up its own stack: the database ``herald_bench``
on the PostgreSQL server of DATABASE_URL (default 127.0.0.1:5432), migrated,
with a tenant ``bench`` on a plan ``bench`` whose limits are too large to be
reached (so the rate limiter and the monthly quota still run, a Redis round
trip each, but never refuse), a fresh ``events:write`` key, Redis database 9
as cache and Celery broker, and gunicorn as production runs it (gthread
workers, docker/compose.yaml). No Celery worker runs: this measures ingest
alone, and the queued pipeline tasks are deleted at the end.

The load comes from wrk (closed loop: each connection sends its next request
when the previous one is answered) after a warm-up. The same run measures two
references: ``GET /healthz`` on the same server (gunicorn, Django and one
``SELECT 1``: the framework's floor), and pgbench on the same PostgreSQL
server: single-row INSERTs with as many clients as wrk has connections, and
1,000-row INSERTs.

Exit status: 0 when every request got the expected answer (whether or not the
targets were met), 1 on a failed run, 2 when a tool is missing, 130 when
interrupted. gunicorn is stopped in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    MANAGE,
    WRK_INSTALL_HINT,
    BenchError,
    CpuAccounting,
    CpuBreakdown,
    Figure,
    Gunicorn,
    PgbenchResult,
    WrkResult,
    cpu_busy_percent,
    ensure_database,
    find_executable,
    find_pgbench,
    herald_environment,
    http_request,
    load_average,
    machine_info,
    markdown_table,
    pgbench_run,
    postgres_version,
    process_command_line,
    profile_categories,
    profile_summary,
    report_publish,
    run,
    run_guarded,
    say,
    sql,
    tool_version,
    utc_now,
    with_database,
    with_redis_db,
    wrk_run,
)

BENCH_DATABASE = "herald_bench"
BENCH_REDIS_DB = 9
TENANT_SLUG = "bench"
PLAN_NAME = "bench"
EVENT_TYPE = "order.shipped"
# Celery queues the ingest path publishes to (and kombu's priority variants).
QUEUE_PREFIXES = ("pipeline", "default")
LIMIT_KEY_PREFIXES = ("herald:ratelimit:", "herald:quota:")

TARGET_SINGLE_RPS = 1_000
TARGET_SINGLE_P99_MS = 50.0
TARGET_BATCH_EVENTS_PER_S = 20_000
NONE = "-"  # a table cell with nothing to show

# A shipped order, about 230 bytes of payload; the recipient and order vary.
PAYLOAD_TEMPLATE = (
    '{"order_id":"ord_%08d","carrier":"UPS","tracking_number":"1Z999AA10123456784",'
    '"items":[{"sku":"SKU-1042","name":"Trail running shoes","qty":1},'
    '{"sku":"SKU-2290","name":"Merino socks","qty":2}],'
    '"total":{"amount":12999,"currency":"EUR"},"eta":"2025-06-03",'
    '"address":{"city":"Lyon","country":"FR"}}'
)
EVENT_TEMPLATE = '{"event":"order.shipped","to":["user-%d"],"payload":' + PAYLOAD_TEMPLATE + "}"
RECIPIENTS = 50_000
REFERENCE_SCRIPTS = (
    "the scripts: `INSERT INTO bench_ref (payload) VALUES ('<the event payload>'::jsonb)` and "
    "`INSERT INTO bench_ref (payload) SELECT '<the event payload>'::jsonb FROM "
    "generate_series(1, {batch_size})`, into `bench_ref (id bigserial PRIMARY KEY, "
    "payload jsonb, created_at timestamptz DEFAULT now())`"
)

# The JSON Schema declared for order.shipped with --payload-schema.
PAYLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_id", "carrier", "tracking_number", "items"],
    "properties": {
        "order_id": {"type": "string", "pattern": "^ord_[0-9]+$"},
        "carrier": {"type": "string", "maxLength": 50},
        "tracking_number": {"type": "string", "maxLength": 100},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
            },
        },
        "total": {"type": "object"},
        "eta": {"type": "string", "format": "date"},
    },
}


def lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def lua_headers(key: str) -> str:
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = {lua_string("Bearer " + key)}\n'
        "expected_status = 202\n"
    )


def single_event_lua(key: str) -> str:
    """One event per request; each request names another recipient and order."""
    return lua_headers(key) + (
        f"local template = {lua_string(EVENT_TEMPLATE)}\n"
        "local counter = 0\n"
        "function init(args)\n"
        "  counter = (thread_index or 1) * 7919\n"
        "end\n"
        "function request()\n"
        "  counter = counter + 1\n"
        f"  local body = string.format(template, counter % {RECIPIENTS}, counter)\n"
        "  return wrk.format(nil, nil, nil, body)\n"
        "end\n"
    )


def batch_lua(key: str, batch_size: int, variants: int = 4) -> str:
    """``batch_size`` events per request, from a few bodies built once per thread."""
    return lua_headers(key) + (
        f"local template = {lua_string(EVENT_TEMPLATE)}\n"
        "local bodies = {}\n"
        "local next_body = 0\n"
        "function init(args)\n"
        "  local base = (thread_index or 1) * 1000003\n"
        f"  for v = 1, {variants} do\n"
        "    local events = {}\n"
        f"    for i = 1, {batch_size} do\n"
        f"      local n = base + v * {batch_size} + i\n"
        f"      events[i] = string.format(template, n % {RECIPIENTS}, n)\n"
        "    end\n"
        '    bodies[v] = \'{"events":[\' .. table.concat(events, ",") .. "]}"\n'
        "  end\n"
        "end\n"
        "function request()\n"
        f"  next_body = next_body % {variants} + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[next_body])\n"
        "end\n"
    )


# The framework's floor: gunicorn, Django, two middlewares and one SELECT 1.
HEALTHZ_LUA = 'wrk.method = "GET"\nexpected_status = 200\n'


# wrk's response() comes from the shared report script; the batch run wraps it
# to also count 202s that rejected some items.
BATCH_RESPONSE_CHECK_LUA = """
local __count_status = response
function response(status, headers, body)
  __count_status(status, headers, body)
  if status == expected_status and not string.find(body, '"rejected":%s*0[,}]') then
    unexpected = unexpected + 1
    if first_unexpected == "" then
      first_unexpected = "202 with rejected items: " .. string.sub(body, 1, 300)
    end
  end
end
"""


# --- The stack -------------------------------------------------------------------


@dataclass(kw_only=True)
class Stack:
    """Where the server is; how to reach its data and processes (our own stack only)."""

    url: str
    key: str
    database_url: str | None = None  # herald_bench, for row counts and pgbench
    redis_url: str | None = None
    event_table: str | None = None  # "<schema>.<table>"
    gunicorn: Gunicorn | None = None
    env: dict[str, str] | None = None  # the server's environment

    def events_stored(self) -> int | None:
        if self.database_url is None or self.event_table is None:
            return None
        return int(sql(self.database_url, f"SELECT count(*) FROM {self.event_table}")[0][0])  # noqa: S608


SETUP_PROGRAM = """
import json
from django.db import connection
from django_tenants.utils import schema_context
from rules_engine.event_types import event_types_forget
from rules_engine.models import Event, EventType
from rules_engine.services.event_types import event_type_save
from tenants.models import ApiKey, ApiScope, Plan, Tenant
from tenants.services import api_key_create, api_key_revoke, public_tenant_ensure, tenant_create

options = json.loads({options!r})
public_tenant_ensure(domains=["localhost"])
plan, _ = Plan.objects.update_or_create(
    name=options["plan"],
    defaults={{
        "events_per_month": 2_000_000_000,
        "api_requests_per_second": 1_000_000,
        "max_subscribers": 2_000_000_000,
        "retention_days": 1,
    }},
)
tenant = Tenant.objects.filter(slug=options["slug"]).first()
if tenant is None:
    tenant = tenant_create(
        slug=options["slug"], name="Benchmark", admin_email="bench@example.com", plan=plan
    ).tenant
tenant.plan = plan
tenant.is_active = True
tenant.strict_event_types = False
tenant.save(update_fields=["plan", "is_active", "strict_event_types"])
for stale in ApiKey.objects.filter(tenant=tenant, name="bench", revoked_at=None):
    api_key_revoke(api_key=stale)
token = api_key_create(tenant=tenant, name="bench", scopes=[ApiScope.EVENTS_WRITE]).token
with schema_context(tenant.schema_name):
    if options["payload_schema"] is None:
        EventType.objects.filter(key=options["event_type"]).delete()
    else:
        event_type_save(
            key=options["event_type"],
            name="Order shipped",
            payload_schema=options["payload_schema"],
        )
    event_types_forget(schema_name=tenant.schema_name)
    table = Event._meta.db_table
    if options["truncate"]:
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {{table}} CASCADE")
print("BENCH_SETUP " + json.dumps({{
    "token": token, "event_table": f"{{tenant.schema_name}}.{{table}}"
}}))
"""


def stack_env(*, database_url: str, redis_url: str, settings_module: str) -> dict[str, str]:
    env = herald_environment(
        database_url=database_url, redis_url=redis_url, settings_module=settings_module
    )
    # On unless turned off explicitly (to measure what the limiter costs).
    env.setdefault("HERALD_RATE_LIMIT_ENABLED", "true")
    # Connections live through the whole run (production: 60 s), so that no
    # database backend ends mid-run and takes its CPU time out of the account.
    env.setdefault("DATABASE_CONN_MAX_AGE", "3600")
    return env


def prepare_database(
    env: dict[str, str], *, truncate: bool, payload_schema: bool
) -> dict[str, str]:
    say("migrating herald_bench (public schema and tenant schemas)")
    run(
        [sys.executable, str(MANAGE), "migrate_schemas", "--noinput", "-v", "0"],
        env=env,
        timeout=900,
    )
    say(f"ensuring plan {PLAN_NAME!r}, tenant {TENANT_SLUG!r} and a fresh events:write key")
    options = json.dumps(
        {
            "plan": PLAN_NAME,
            "slug": TENANT_SLUG,
            "event_type": EVENT_TYPE,
            "payload_schema": PAYLOAD_SCHEMA if payload_schema else None,
            "truncate": truncate,
        }
    )
    program = SETUP_PROGRAM.format(options=options)
    result = run([sys.executable, str(MANAGE), "shell", "-c", program], env=env, timeout=600)
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_SETUP "):
            data: dict[str, str] = json.loads(line.removeprefix("BENCH_SETUP "))
            return data
    raise BenchError(f"the setup printed no result:\n{result.stdout}\n{result.stderr}")


def redis_delete_queues(redis_url: str, *, limits: bool = False) -> int:
    """Delete the Celery queues in the bench's Redis database (and, with ``limits``,
    the rate limit buckets and quota counters, so every run starts alike)."""
    import redis

    prefixes = [*QUEUE_PREFIXES, *(LIMIT_KEY_PREFIXES if limits else ())]
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = [key for prefix in prefixes for key in client.scan_iter(match=f"{prefix}*")]
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


@contextlib.contextmanager
def own_stack(arguments: argparse.Namespace) -> Iterator[Stack]:
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    database_url = with_database(server_url, BENCH_DATABASE)
    redis_url = arguments.redis_url or with_redis_db(
        os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL, BENCH_REDIS_DB
    )
    if ensure_database(database_url):
        say(f"created database {BENCH_DATABASE}")
    env = stack_env(
        database_url=database_url, redis_url=redis_url, settings_module=arguments.settings
    )
    setup = prepare_database(
        env, truncate=not arguments.keep_events, payload_schema=arguments.payload_schema
    )
    redis_delete_queues(redis_url, limits=True)
    log = Path(tempfile.gettempdir()) / "herald-bench-gunicorn.log"
    try:
        with Gunicorn(
            workers=arguments.workers,
            worker_class=arguments.worker_class,
            threads=arguments.gunicorn_threads,
            env=env,
            log_path=log,
            app=arguments.app,
        ) as server:
            server.wait_healthy(timeout=90)
            yield Stack(
                url=server.url,
                key=setup["token"],
                database_url=database_url,
                redis_url=redis_url,
                event_table=setup["event_table"],
                gunicorn=server,
                env=env,
            )
    finally:
        with contextlib.suppress(Exception):
            deleted = redis_delete_queues(redis_url)
            say(f"deleted {deleted} Celery queue key(s) in {redis_url}")


# --- Runs ------------------------------------------------------------------------


def smoke_test(stack: Stack, batch_size: int) -> list[str]:
    """One event and one batch, checked in full before any load; notes for the report."""
    headers = {"Authorization": f"Bearer {stack.key}", "Content-Type": "application/json"}
    body = (EVENT_TEMPLATE % (1, 1)).encode()
    status, response_headers, content = http_request(
        f"{stack.url}/api/v1/events", body=body, headers=headers
    )
    if status != 202:
        raise BenchError(f"POST /api/v1/events answered {status}: {content[:500]!r}")
    notes = []
    limit = {k.lower(): v for k, v in response_headers.items()}.get("ratelimit-limit")
    notes.append(
        f"rate limiter on (bucket of {limit} requests)"
        if limit
        else "rate limiter off (no RateLimit headers)"
    )
    events = ",".join(EVENT_TEMPLATE % (n % RECIPIENTS, n) for n in range(batch_size))
    status, _, content = http_request(
        f"{stack.url}/api/v1/events/batch",
        body=f'{{"events":[{events}]}}'.encode(),
        headers=headers,
        timeout=60,
    )
    if status != 202:
        raise BenchError(f"POST /api/v1/events/batch answered {status}: {content[:500]!r}")
    answer = json.loads(content)
    if answer.get("accepted") != batch_size or answer.get("rejected") != 0:
        raise BenchError(f"the batch was not accepted in full: {content[:500]!r}")
    return notes


@dataclass(kw_only=True)
class Measured:
    name: str
    wrk: WrkResult
    cpu: CpuBreakdown | None
    events_per_request: int
    events_stored: int | None = None

    @property
    def events_per_second(self) -> float:
        return self.wrk.requests_per_second * self.events_per_request

    def cpu_cost(self) -> str:
        """CPU time per request by process kind, and the rate that would fill every core.

        Unlike the throughput, this hardly changes when other work shares the
        machine, so it compares runs made at different times.
        """
        if self.cpu is None or self.wrk.requests == 0:
            return ""
        kinds = ("gunicorn", "postgres", "redis", "loadgen")
        per_request = {k: 1000 * self.cpu.seconds.get(k, 0.0) / self.wrk.requests for k in kinds}
        total = sum(per_request.values())
        ceiling = self.cpu.cpus * 1000 / total if total else 0.0
        shown = ", ".join(f"{k} {v:.2f}" for k, v in per_request.items())
        events = (
            f" ({ceiling * self.events_per_request:,.0f} events/s)"
            if self.events_per_request > 1
            else ""
        )
        return (
            f"CPU per request (ms): {shown}; total {total:.2f}, so at most "
            f"{ceiling:,.0f} requests/s{events} if these processes had all "
            f"{self.cpu.cpus} cores to themselves"
        )

    def problems(self) -> list[str]:
        found = []
        if self.wrk.unexpected_status or self.wrk.non_2xx_3xx:
            found.append(
                f"{self.name}: {max(self.wrk.unexpected_status, self.wrk.non_2xx_3xx)} "
                f"unexpected responses, e.g. {self.wrk.unexpected_sample!r}"
            )
        if self.wrk.timeouts:
            found.append(f"{self.name}: {self.wrk.timeouts} requests timed out")
        if self.wrk.requests == 0:
            found.append(f"{self.name}: no request completed")
        return found


def classifier(stack: Stack) -> Any:
    gunicorn_group = (
        stack.gunicorn.process.pid if stack.gunicorn and stack.gunicorn.process else None
    )

    def classify(pid: int, name: str, group: int) -> str:
        if gunicorn_group is not None and group == gunicorn_group:
            return "gunicorn"
        if name.startswith("postgres"):
            # A client backend's title names its database; other people's
            # connections (a test suite's) are not ours. The server's own
            # processes (WAL writer, checkpointer…) serve us too.
            title = process_command_line(pid)
            is_client = re.search(r"\d\(\d+\)|\[local\]", title) is not None
            return "" if is_client and BENCH_DATABASE not in title else "postgres"
        if name.startswith("redis-server"):
            return "redis"
        return ""

    return classify


def load_run(
    *,
    stack: Stack,
    name: str,
    path: str,
    lua: str,
    connections: int,
    threads: int,
    duration: float,
    warmup: float,
    events_per_request: int,
    profile_dir: Path | None,
    profile_wall_clock: bool,
    quiet_wait: float,
    quiet_below: float,
) -> Measured:
    url = f"{stack.url}{path}"
    checkpoint(stack.database_url)
    if warmup > 0:
        say(f"{name}: warm-up {warmup:g} s, {connections} connections")
        warm = wrk_run(url=url, lua=lua, duration=warmup, connections=connections, threads=threads)
        if warm.unexpected_status or warm.non_2xx_3xx:
            raise BenchError(f"{name} warm-up: unexpected responses: {warm.unexpected_sample}")
    settle(stack)
    if stack.gunicorn:
        stack.gunicorn.check_alive()
    if quiet_wait > 0:
        wait_for_quiet(quiet_wait, busy_below=quiet_below)
    before = stack.events_stored()
    say(
        f"{name}: measuring {duration:g} s, {connections} connections "
        f"(load average {load_average()[0]:.2f})"
    )
    profile = profiling(stack, name, duration, profile_dir, wall_clock=profile_wall_clock)
    with profile, CpuAccounting(classifier(stack)) as cpu:
        result = wrk_run(
            url=url, lua=lua, duration=duration, connections=connections, threads=threads
        )
    settle(stack)
    after = stack.events_stored()
    measured = Measured(
        name=name,
        wrk=result,
        # With --target the server's processes are not ours to tell apart.
        cpu=cpu.result if stack.gunicorn is not None else None,
        events_per_request=events_per_request,
        events_stored=None if before is None or after is None else after - before,
    )
    say(
        f"{name}: {result.requests_per_second:,.0f} requests/s, "
        f"{measured.events_per_second:,.0f} events/s, p50 {result.p('50'):.1f} ms, "
        f"p99 {result.p('99'):.1f} ms"
        + (f"; CPU: {measured.cpu.describe(CPU_LABELS)}" if measured.cpu else "")
    )
    return measured


def checkpoint(database_url: str | None) -> None:
    """Write out dirty buffers now, so that a checkpoint the previous run caused
    does not compete with this run's commits (needs a superuser; else skipped)."""
    if database_url is None:
        return
    try:
        sql(database_url, "CHECKPOINT")
    except Exception as error:  # only a way to make runs alike
        say(f"could not CHECKPOINT ({type(error).__name__}); runs may differ more")


def settle(stack: Stack, *, timeout: float = 60.0) -> None:
    """Wait until the server has finished the requests wrk left in flight."""
    if stack.database_url is None:
        time.sleep(2.0)
        return
    deadline = time.monotonic() + timeout
    last = stack.events_stored()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = stack.events_stored()
        if now == last:
            return
        last = now


def wait_for_quiet(max_wait: float, *, busy_below: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine is less than ``busy_below``% busy."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy_percent(2.0)
    while busy >= busy_below and time.monotonic() < deadline:
        say(f"machine {busy:.0f}% busy (others' work); waiting for it to calm down")
        time.sleep(8.0)
        busy = cpu_busy_percent(2.0)
    return busy


CPU_LABELS = ("gunicorn", "postgres", "redis", "loadgen", "other", "idle")


@contextlib.contextmanager
def profiling(
    stack: Stack, name: str, duration: float, directory: Path | None, *, wall_clock: bool
) -> Iterator[None]:
    """py-spy record on every gunicorn worker during the block (with --profile).

    By default only samples on the CPU count. With ``wall_clock`` (py-spy's
    ``--idle``) waits count too: a sync worker serves one request at a time, so
    the time it waits for PostgreSQL, Redis or the client limits its
    throughput as much as the time it computes.
    """
    if directory is None or stack.gunicorn is None:
        yield
        return
    py_spy = find_executable("py-spy", extra_globs=[str(Path(sys.executable).parent / "py-spy")])
    if py_spy is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    recorders = []
    slug = name.split()[0].lower()
    for index, pid in enumerate(stack.gunicorn.worker_pids()):
        output = directory / f"{slug}-worker{index}.txt"
        command = [
            py_spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking",
            "--duration", str(max(1, round(duration))), "--format", "raw", "--output", str(output),
            *(["--idle"] if wall_clock else []),
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
            try:
                recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()


def pgbench_reference(
    *, database_url: str, duration: float, connections: int, threads: int, batch_size: int
) -> tuple[PgbenchResult, PgbenchResult]:
    sql(
        database_url,
        "CREATE TABLE IF NOT EXISTS bench_ref (id bigserial PRIMARY KEY, payload jsonb, "
        "created_at timestamptz DEFAULT now())",
    )
    payload = (PAYLOAD_TEMPLATE % 12345).replace("'", "''")
    sql(database_url, "TRUNCATE bench_ref")
    checkpoint(database_url)
    say(f"pgbench: single-row INSERT, {connections} clients, {duration:g} s")
    single = pgbench_run(
        url=database_url,
        script=f"INSERT INTO bench_ref (payload) VALUES ('{payload}'::jsonb);\n",  # noqa: S608
        duration=duration,
        connections=connections,
        threads=threads,
    )
    sql(database_url, "TRUNCATE bench_ref")
    checkpoint(database_url)
    batch_clients = max(1, min(connections, 4))
    say(f"pgbench: {batch_size}-row INSERT, {batch_clients} clients, {duration:g} s")
    batch = pgbench_run(
        url=database_url,
        script=(
            f"INSERT INTO bench_ref (payload) SELECT '{payload}'::jsonb "  # noqa: S608
            f"FROM generate_series(1, {batch_size});\n"
        ),
        duration=duration,
        connections=batch_clients,
        threads=threads,
    )
    sql(database_url, "TRUNCATE bench_ref")
    say(f"pgbench: {single.tps:,.0f} single-row TPS; {batch.tps * batch_size:,.0f} rows/s batched")
    return single, batch


# --- Report ----------------------------------------------------------------------


@dataclass(kw_only=True)
class Report:
    command: str
    date: str
    single: Measured
    batch: Measured
    healthz: Measured | None
    pg_single: PgbenchResult | None
    pg_batch: PgbenchResult | None
    batch_size: int
    workers: int | None
    server: str  # worker class and threads
    connections: int
    batch_connections: int
    duration: float
    background_before: float
    background_after: float
    load_before: tuple[float, float, float]
    versions: dict[str, str]
    code: str
    machine: str
    notes: list[str]

    def figures(self) -> list[Figure]:
        single_ref = self.pg_single.tps if self.pg_single else None
        rows_ref = self.pg_batch.tps * self.batch_size if self.pg_batch else None
        found = [
            Figure(
                name="POST /api/v1/events, one event a request",
                value=self.single.events_per_second,
                unit="events/s",
                target=f"≥ {TARGET_SINGLE_RPS:,}/s",
                met=self.single.events_per_second >= TARGET_SINGLE_RPS,
                reference="pgbench single-row INSERT, transactions/s",
                reference_value=single_ref,
            ),
            Figure(
                name="POST /api/v1/events, p99 latency",
                value=self.single.wrk.p("99"),
                unit="ms",
                target=f"≤ {TARGET_SINGLE_P99_MS:g} ms",
                met=self.single.wrk.p("99") <= TARGET_SINGLE_P99_MS,
                reference="pgbench single-row INSERT, mean latency ms",
                reference_value=self.pg_single.latency_ms if self.pg_single else None,
            ),
            Figure(
                name=f"POST /api/v1/events/batch, {self.batch_size:,} events a request",
                value=self.batch.events_per_second,
                unit="events/s",
                target=f"≥ {TARGET_BATCH_EVENTS_PER_S:,}/s",
                met=self.batch.events_per_second >= TARGET_BATCH_EVENTS_PER_S,
                reference=f"pgbench {self.batch_size:,}-row INSERTs, rows/s",
                reference_value=rows_ref,
            ),
        ]
        if self.healthz is not None:
            found.append(
                Figure(
                    name="GET /healthz, a minimal Django view (reference)",
                    value=self.healthz.wrk.requests_per_second,
                    unit="requests/s",
                    reference="pgbench single-row INSERT, transactions/s",
                    reference_value=single_ref,
                )
            )
        return found

    def table(self) -> str:
        single, batch = self.single.wrk, self.batch.wrk
        ref_single = self.pg_single.tps if self.pg_single else None
        ref_rows = self.pg_batch.tps * self.batch_size if self.pg_batch else None

        def ratio(value: float, reference: float | None) -> str:
            return f"{value / reference:.0%}" if reference else NONE

        def met(ok: bool) -> str:
            return "yes" if ok else "**no**"

        rows = [
            [
                "Single events/s",
                f"{self.single.events_per_second:,.0f}",
                f"≥ {TARGET_SINGLE_RPS:,}",
                met(self.single.events_per_second >= TARGET_SINGLE_RPS),
                f"{ref_single:,.0f} INSERT TPS" if ref_single else NONE,
                ratio(self.single.events_per_second, ref_single),
            ],
            [
                "Single latency p50 / p90 / p99",
                f"{single.p('50'):.1f} / {single.p('90'):.1f} / {single.p('99'):.1f} ms",
                f"p99 ≤ {TARGET_SINGLE_P99_MS:g} ms",
                met(single.p("99") <= TARGET_SINGLE_P99_MS),
                f"{self.pg_single.latency_ms:.1f} ms avg" if self.pg_single else NONE,
                NONE,
            ],
            [
                f"Batch events/s ({self.batch_size:,} per request)",
                f"{self.batch.events_per_second:,.0f}",
                f"≥ {TARGET_BATCH_EVENTS_PER_S:,}",
                met(self.batch.events_per_second >= TARGET_BATCH_EVENTS_PER_S),
                f"{ref_rows:,.0f} rows/s ({self.batch_size:,}-row INSERTs)" if ref_rows else NONE,
                ratio(self.batch.events_per_second, ref_rows),
            ],
            [
                "Batch requests/s; latency p50 / p90 / p99",
                f"{batch.requests_per_second:,.1f}; {batch.p('50'):.0f} / {batch.p('90'):.0f}"
                f" / {batch.p('99'):.0f} ms",
                f"≥ {TARGET_BATCH_EVENTS_PER_S // self.batch_size:,} requests/s",
                met(batch.requests_per_second * self.batch_size >= TARGET_BATCH_EVENTS_PER_S),
                f"{self.pg_batch.tps:,.1f} TPS, {self.pg_batch.latency_ms:.0f} ms avg"
                if self.pg_batch
                else NONE,
                NONE,
            ],
        ]
        if self.healthz is not None:
            health = self.healthz.wrk
            rows.append(
                [
                    "Reference: `GET /healthz` (gunicorn + Django + one `SELECT 1`)",
                    f"{health.requests_per_second:,.0f} requests/s; p50 {health.p('50'):.1f}"
                    f" / p99 {health.p('99'):.1f} ms",
                    NONE,
                    NONE,
                    "single events/s as a share of it",
                    ratio(self.single.events_per_second, health.requests_per_second),
                ]
            )
        return markdown_table(
            ["Figure", "Measured", "Target", "Met", "Reference (same run)", "Ratio"],
            rows,
        )

    def details(self) -> str:
        lines = [
            f"- **Command:** `{self.command}`",
            f"- **Date:** {self.date}",
            f"- **Machine:** {self.machine}; "
            + (
                "server, PostgreSQL, Redis and load generator on the same machine"
                if self.workers
                else "the load generator's (the server was given with --target)"
            ),
            "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            f"- **Code:** {self.code}",
            f"- **Server:** gunicorn, {self.workers} workers, {self.server}"
            if self.workers
            else "- **Server:** given with --target",
            f"- **Load:** wrk, {self.connections} connections (single), "
            f"{self.batch_connections} (batch), {self.duration:g} s each after a warm-up; "
            "closed loop, so latency includes queueing at saturation",
        ]
        for run_ in (self.single, self.batch, self.healthz):
            if run_ is None:
                continue
            wrk = run_.wrk
            stored = (
                f"; rows stored {run_.events_stored:,}, "
                f"answered {wrk.requests * run_.events_per_request:,} (the difference: requests "
                "still in flight when wrk stopped)"
                if run_.events_stored is not None and run_.events_per_request
                else ""
            )
            lines.append(
                f"- **{run_.name}:** {wrk.requests:,} requests in {wrk.duration_s:.1f} s, "
                f"non-2xx {wrk.non_2xx_3xx}, unexpected status {wrk.unexpected_status}, "
                f"socket errors {wrk.socket_errors} (connect {wrk.connect_errors}, "
                f"read {wrk.read_errors}, write {wrk.write_errors}, timeout {wrk.timeouts}), "
                f"mean {wrk.mean_ms:.1f} ms, p99.9 {wrk.p('99.9'):.1f} ms, "
                f"max {wrk.max_ms:.1f} ms{stored}"
            )
            if run_.cpu:
                lines.append(
                    f"  - CPU during the run (share of {run_.cpu.cpus} cores): "
                    + run_.cpu.describe(CPU_LABELS)
                )
                lines.append(f"  - {run_.cpu_cost()}")
        if self.pg_single and self.pg_batch:
            lines.append(
                f"- **Reference:** `{self.pg_single.command}` "
                f"({self.pg_single.transactions:,} transactions) and "
                f"`{self.pg_batch.command}` ({self.pg_batch.transactions:,} transactions) "
                f"in herald_bench; {REFERENCE_SCRIPTS.format(batch_size=self.batch_size)}"
            )
        lines.append(
            f"- **Noise:** machine busy {self.background_before:.0f}% before the run and "
            f"{self.background_after:.0f}% after it (3 s samples, nothing of ours running); "
            f"load average {self.load_before[0]:.2f} / {self.load_before[1]:.2f} / "
            f"{self.load_before[2]:.2f} at the start; 'other' above is CPU used by "
            "processes that are not part of the benchmark"
        )
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        return self.table() + "\n\n" + self.details() + "\n"

    def met_all(self) -> bool:
        return (
            self.single.events_per_second >= TARGET_SINGLE_RPS
            and self.single.wrk.p("99") <= TARGET_SINGLE_P99_MS
            and self.batch.events_per_second >= TARGET_BATCH_EVENTS_PER_S
        )


def versions(database_url: str | None, server_env: dict[str, str] | None) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"Python": sys.version.split()[0]}
    for package in ("Django", "django-ninja", "pydantic", "psycopg", "celery"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    if server_env is not None:  # the gunicorn that served, which PYTHONPATH may change
        gunicorn = run([sys.executable, "-m", "gunicorn", "--version"], env=server_env, timeout=30)
        found["gunicorn"] = gunicorn.stdout.split("(version ")[-1].rstrip(")\n ")
    if database_url:
        found["PostgreSQL"] = postgres_version(database_url)
    found["wrk"] = tool_version(["wrk", "--version"]).split(" [")[0].replace("wrk ", "")
    return found


def git_state() -> str:
    """The commit, and whether the application code differs from it."""
    try:
        commit = run(["git", "rev-parse", "--short", "HEAD"], timeout=10).stdout.strip()
        changed = run(["git", "status", "--porcelain"], timeout=30).stdout.splitlines()
    except (BenchError, OSError):
        return "unknown"
    app = [line for line in changed if not line[3:].startswith(("bench/", "docs/"))]
    if not app:
        return f"commit {commit}"
    return f"commit {commit} plus uncommitted changes to {len(app)} application paths"


def command_line(argv: list[str]) -> str:
    shown = []
    skip = False
    for part in argv:
        if skip:
            shown.append("<KEY>")
            skip = False
            continue
        shown.append(part)
        skip = part == "--key"
    return ".venv/bin/python bench/ingest.py " + " ".join(shlex.quote(p) for p in shown)


# --- Main ---------------------------------------------------------------------------


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/ingest.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections, single")
    parser.add_argument("--batch-connections", type=int, default=4, help="wrk connections, batch")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch request")
    parser.add_argument("--threads", type=int, default=2, help="wrk and pgbench threads")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument(
        "--worker-class",
        default="gthread",
        choices=["gthread", "sync"],
        help="gunicorn worker class (production: gthread)",
    )
    parser.add_argument(
        "--gunicorn-threads",
        type=int,
        default=2,
        help="threads per gthread worker (production: 2)",
    )
    parser.add_argument("--target", help="benchmark this running Herald instead (base URL)")
    parser.add_argument("--key", help="API key (events:write) for --target")
    parser.add_argument(
        "--redis-url", help="Redis for our own stack (None: REDIS_URL's server, database 9)"
    )
    parser.add_argument(
        "--settings",
        default="herald.settings",
        metavar="MODULE",
        help="DJANGO_SETTINGS_MODULE for our stack: try a settings change without editing "
        "herald.settings (put the module on PYTHONPATH)",
    )
    parser.add_argument(
        "--app",
        default="herald.wsgi:application",
        metavar="MODULE:NAME",
        help="the WSGI application gunicorn serves: try a change (a wrapper module on "
        "PYTHONPATH) without editing Herald",
    )
    parser.add_argument(
        "--payload-schema",
        action="store_true",
        help="declare order.shipped with a JSON Schema, so every payload is validated",
    )
    parser.add_argument(
        "--keep-events", action="store_true", help="do not empty the bench tenant's events first"
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the references (GET /healthz and pgbench)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record every gunicorn worker during the measured runs (raw stacks in DIR); "
        "the figures of a profiled run are lower",
    )
    parser.add_argument(
        "--profile-wall-clock",
        action="store_true",
        help="with --profile: sample waiting workers too (py-spy --idle), not only the CPU",
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
        "--write-docs", action="store_true", help="rewrite the Ingest block of docs/benchmarks.md"
    )
    parser.add_argument(
        "--figures", metavar="PATH", help="also write the headline figures as JSON (bench/all.py)"
    )
    arguments = parser.parse_args(argv)
    if (arguments.target is None) != (arguments.key is None):
        parser.error("--target and --key go together")
    if arguments.target and arguments.profile:
        parser.error("--profile needs our own stack (no --target)")
    if arguments.batch_size < 1 or arguments.batch_size > 1000:
        parser.error("--batch-size must be between 1 and 1000")
    return arguments


def benchmark(arguments: argparse.Namespace, argv: list[str]) -> Report:
    machine = machine_info()
    load_before = load_average()
    say(f"machine: {machine.describe()}; load average {load_before[0]:.2f}")
    if arguments.wait_quiet > 0:
        wait_for_quiet(arguments.wait_quiet, busy_below=arguments.quiet_below)
    say("sampling the machine's background CPU for 3 s")
    background_before = cpu_busy_percent(3.0)
    if background_before > 20:
        say(f"warning: the machine is already {background_before:.0f}% busy; figures will be low")

    with contextlib.ExitStack() as stack_scope:
        if arguments.target:
            stack = Stack(url=arguments.target.rstrip("/"), key=arguments.key)
        else:
            stack = stack_scope.enter_context(own_stack(arguments))
        notes = smoke_test(stack, arguments.batch_size)
        common = {
            "stack": stack,
            "threads": arguments.threads,
            "duration": arguments.duration,
            "warmup": arguments.warmup,
            "profile_dir": arguments.profile,
            "profile_wall_clock": arguments.profile_wall_clock,
            "quiet_wait": arguments.wait_quiet,
            "quiet_below": arguments.quiet_below,
        }
        single = load_run(
            name="Single",
            path="/api/v1/events",
            lua=single_event_lua(stack.key),
            connections=arguments.connections,
            events_per_request=1,
            **common,
        )
        batch = load_run(
            name="Batch",
            path="/api/v1/events/batch",
            lua=batch_lua(stack.key, arguments.batch_size) + BATCH_RESPONSE_CHECK_LUA,
            connections=arguments.batch_connections,
            events_per_request=arguments.batch_size,
            **common,
        )
        database_url = stack.database_url or with_database(
            os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL, BENCH_DATABASE
        )
        healthz = None
        if not arguments.no_reference:
            healthz = load_run(
                name="GET /healthz",
                path="/healthz",
                lua=HEALTHZ_LUA,
                connections=arguments.connections,
                events_per_request=0,
                **{**common, "profile_dir": None},
            )
        pg_single = pg_batch = None
        if not arguments.no_reference:
            if stack.database_url is None:
                ensure_database(database_url)
            pg_single, pg_batch = pgbench_reference(
                database_url=database_url,
                duration=arguments.duration,
                connections=arguments.connections,
                threads=arguments.threads,
                batch_size=arguments.batch_size,
            )
    background_after = cpu_busy_percent(3.0)
    if arguments.payload_schema:
        notes.append(f"{EVENT_TYPE} declared with a JSON Schema: every payload is validated")
    else:
        notes.append(f"{EVENT_TYPE} not declared: payloads are stored without schema validation")
    notes.append("no Celery worker ran; the pipeline tasks ingest queued were deleted")
    if stack.env is not None:
        notes.append(
            "server environment: HERALD_ENV=development, DEBUG=false, LOG_LEVEL=WARNING, "
            f"DATABASE_CONN_MAX_AGE={stack.env['DATABASE_CONN_MAX_AGE']}, "
            f"HERALD_RATE_LIMIT_ENABLED={stack.env['HERALD_RATE_LIMIT_ENABLED']}, "
            f"DJANGO_SETTINGS_MODULE={stack.env['DJANGO_SETTINGS_MODULE']}"
        )
    if arguments.profile:
        notes.append(f"profiled with py-spy ({arguments.profile}): figures are lower than usual")
    return Report(
        command=command_line(argv),
        date=utc_now(),
        single=single,
        batch=batch,
        healthz=healthz,
        pg_single=pg_single,
        pg_batch=pg_batch,
        batch_size=arguments.batch_size,
        workers=None if arguments.target else arguments.workers,
        server=(
            f"{arguments.worker_class} ({arguments.gunicorn_threads} threads each)"
            if arguments.worker_class == "gthread"
            else "sync"
        ),
        connections=arguments.connections,
        batch_connections=arguments.batch_connections,
        duration=arguments.duration,
        background_before=background_before,
        background_after=background_after,
        load_before=load_before,
        versions=versions(database_url, stack.env),
        code=git_state(),
        machine=machine.describe(),
        notes=notes,
    )


# Where a worker's time goes, for --profile. A sample goes to the first
# category with a marker (a substring of a frame) on its stack, so the more
# specific categories come first.
PROFILE_CATEGORIES: list[tuple[str, list[str]]] = [
    ("gunicorn: waiting for and accepting a connection", ["SyncWorker.wait (", "socket.accept ("]),
    (
        "Celery publish (`event_process.delay`, incl. Redis LPUSH)",
        ["Task.delay (", "Task.apply_async ("],
    ),
    ("rate limiter (Redis EVALSHA)", ["rate_limit_check ("]),
    ("monthly quota (Redis EVALSHA)", ["event_quota_consume (", "event_quota_refund ("]),
    ("connection health check (`SELECT 1`)", ["is_usable ("]),
    ("`SET search_path` (django-tenants)", ["_handle_search_path ("]),
    ("body: JSON parse and depth check", ["parse_json_body ("]),
    ("response: validation and rendering (ninja)", ["_result_to_response ("]),
    ("INSERT: psycopg client-side binding (params into SQL text)", ["_convert_query ("]),
    ("INSERT: PostgreSQL round trip (psycopg send, wait, receive)", ["Connection.wait ("]),
    ("INSERT: ORM (compile SQL, prepare values)", ["SQLInsertCompiler", "bulk_create ("]),
    ("`Event` instances (`_new_event`)", ["_new_event ("]),
    ("event types and payload schema (`event_errors`)", ["event_errors ("]),
    ("request validation (ninja/pydantic)", ["Operation._get_values (", "model_validate ("]),
    (
        "HTTP I/O (gunicorn: read request, write response, close)",
        ["gunicorn/http/", "close_graceful ("],
    ),
    ("API key lookup", ["api_key_authenticate ("]),
]


def print_profiles(
    directory: Path, runs: dict[str, Measured], workers: int, *, wall_clock: bool
) -> None:
    """Where the workers' time went in each profiled run; also saved as DIR/summary.md."""
    sections = []
    for phase, measured in runs.items():
        paths = sorted(directory.glob(f"{phase}-worker*.txt"))
        if not paths:
            continue
        total, counts = profile_categories(paths, PROFILE_CATEGORIES)
        requests = max(1, measured.wrk.requests)
        # 100 samples per second per worker: each sample is 10 ms of one worker.
        rows = [
            [label, f"{count / max(1, total):.1%}", f"{count * 10 / requests:.3f}"]
            for label, count in sorted(counts.items(), key=lambda item: -item[1])
            if count
        ]
        _, lines = profile_summary(paths, top=60)
        functions = [
            [f"`{line.function}`", f"{line.inclusive:.1%}", f"{line.own:.1%}"]
            for line in lines
            if line.inclusive < 0.97  # gunicorn's and Django's frames around every request
        ]
        sections.append(
            f"### {phase}: {total:,} samples of {len(paths)} of {workers} workers, "
            f"{requests:,} requests\n\n"
            + markdown_table(
                [
                    "Where",
                    "Share of samples",
                    "ms per request (wall clock)" if wall_clock else "CPU ms per request",
                ],
                rows,
            )
            + "\n\n"
            + markdown_table(["Function", "Inclusive", "Own"], functions[:30])
        )
    text = "\n\n".join(sections) + "\n"
    (directory / "summary.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    if find_executable("wrk") is None:
        print(f"wrk is not installed. Install it with:\n  {WRK_INSTALL_HINT}", file=sys.stderr)
        return 2
    if not arguments.no_reference and find_pgbench() is None:
        print(
            "pgbench is not installed (apt-get install -y postgresql-client), "
            "or pass --no-reference",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    report = run_guarded(
        lambda: benchmark(arguments, argv),
        interrupted="interrupted; everything started has been stopped",
    )
    if isinstance(report, int):
        return report
    problems = report.single.problems() + report.batch.problems()
    report_publish(
        report,
        bench="ingest",
        title="Ingest",
        figures=arguments.figures,
        write_docs=arguments.write_docs and not problems,
    )
    if arguments.profile:
        print_profiles(
            arguments.profile,
            {"single": report.single, "batch": report.batch},
            arguments.workers,
            wall_clock=arguments.profile_wall_clock,
        )
    say(
        f"done in {time.monotonic() - started:.0f} s; targets "
        + ("met" if report.met_all() else "NOT met")
    )
    if problems:
        for problem in problems:
            say(f"FAILED: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
