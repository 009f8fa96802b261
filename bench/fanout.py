"""Fan-out benchmark: one event to a topic of 100,000 subscribers, into Message rows.

    .venv/bin/python bench/fanout.py [--subscribers 100000] [--runs 3] [--write-docs]

Measures ``rules_engine.services.pipeline.event_process`` in this process (as a
Celery worker runs it, without the broker) on its own database
``herald_bench_fanout`` (on the PostgreSQL server of DATABASE_URL, default
127.0.0.1:5432), with Redis database 10 as cache and broker. The target: at
most 20 s for 100,000 subscribers.

Setup, not measured: ``migrate_schemas``, a tenant ``fanout``, an event type, an
email template (English and German, subject and text using ``subscriber.name``
and ``event.payload``), a rule sending it to the topic ``everyone``, and N
subscribers (a quarter with locale ``de``) put in the topic with COPY and one
INSERT … SELECT. Each measured run processes a fresh event, and checks that
exactly N messages were stored, each rendered in the subscriber's language.

References from the same run: COPY of the same N message rows (taken from the
last run) into a scratch table with the Message table's columns and indexes,
preformatted (what PostgreSQL needs to write them at all), with the Message
table's foreign keys added, and from Python tuples through psycopg (as
``messages_copy`` writes them). Where the time goes: one run with the
pipeline's stages timed (resolution, rendering, COPY, commit), and one run
under py-spy (function-level profile, wall clock).

Exit status: 0 when every run stored one message per subscriber (whether or
not the target was met; messages whose render failed are counted and shown in
the report, since storing them as failed is the pipeline's own behaviour), 1 on
a failed run or an error, 2 when py-spy is missing (``--no-profile`` skips
it), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    CLOCK_TICKS,
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    MANAGE,
    ROOT,
    BenchError,
    CpuAccounting,
    CpuBreakdown,
    Figure,
    cpu_busy_percent,
    ensure_database,
    environment_configure,
    find_executable,
    libpq_url,
    load_average,
    machine_info,
    markdown_table,
    postgres_version,
    process_command_line,
    profile_categories,
    profile_summary,
    report_publish,
    run,
    run_guarded,
    say,
    sql,
    utc_now,
    with_database,
    with_redis_db,
)

# bench/cel.py is named like the CEL library the pipeline imports: keep this
# folder off sys.path once _common is imported, so that `import cel` finds the library.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH]

BENCH_DATABASE = "herald_bench_fanout"
BENCH_REDIS_DB = 10
TENANT_SLUG = "fanout"
TENANT_NAME = "Bench Shop"
PLAN_NAME = "bench-fanout"
EVENT_TYPE = "collection.launched"
TOPIC = "everyone"
TEMPLATE_KEY = "collection-email"
RULE_NAME = "Announce the collection to everyone"
REFERENCE_BARE_TABLE = "bench_fanout_ref_bare"
REFERENCE_TABLE = "bench_fanout_ref"
REFERENCE_FK_TABLE = "bench_fanout_ref_fk"
REFERENCE_TABLES = f"{REFERENCE_BARE_TABLE}, {REFERENCE_TABLE}, {REFERENCE_FK_TABLE}"
TARGET_SECONDS = 20.0
DEFAULT_SUBSCRIBERS = 100_000
GERMAN_EVERY = 4  # every 4th subscriber reads German
PROFILE_RATE = 200  # py-spy samples per second
NONE = "-"

PAYLOAD = {
    "collection": "Spring 2026",
    "summary": "Forty new pieces, from linen shirts to trail shoes, in stores and online now.",
    "url": "https://shop.example.com/collections/spring-2026",
    "campaign": "spring-2026-launch",
}
VARIANTS = {
    "en": {
        "subject": "{{ event.payload.collection }} is here, {{ subscriber.name }}",
        "text": "Hi {{ subscriber.name }},\n\n{{ event.payload.summary }}\n\n"
        "See it all: {{ event.payload.url }}\n\nThe {{ tenant.name }} team",
    },
    "de": {
        "subject": "{{ event.payload.collection }} ist da, {{ subscriber.name }}",
        "text": "Hallo {{ subscriber.name }},\n\n{{ event.payload.summary }}\n\n"
        "Alles ansehen: {{ event.payload.url }}\n\nDein {{ tenant.name }}-Team",
    },
}
FIRST_NAMES = ("Ann", "Bob", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jule", "Kai")
LAST_NAMES = ("Adler", "Brandt", "Costa", "Dubois", "Engel", "Fischer", "Garcia", "Huber", "Ito")


def subscriber_name(number: int) -> str:
    first = FIRST_NAMES[number % len(FIRST_NAMES)]
    last = LAST_NAMES[(number // len(FIRST_NAMES)) % len(LAST_NAMES)]
    return f"{first} {last}"


def external_id(number: int) -> str:
    return f"user-{number:07d}"


def subscriber_locale(number: int) -> str:
    return "de" if number % GERMAN_EVERY == 0 else "en"


def expected_content(number: int) -> dict[str, str]:
    """What the template must render for subscriber ``number`` (checked after each run)."""
    name = subscriber_name(number)
    payload = PAYLOAD
    if subscriber_locale(number) == "de":
        return {
            "subject": f"{payload['collection']} ist da, {name}",
            "text": f"Hallo {name},\n\n{payload['summary']}\n\n"
            f"Alles ansehen: {payload['url']}\n\nDein {TENANT_NAME}-Team",
        }
    return {
        "subject": f"{payload['collection']} is here, {name}",
        "text": f"Hi {name},\n\n{payload['summary']}\n\n"
        f"See it all: {payload['url']}\n\nThe {TENANT_NAME} team",
    }


# --- The environment and the data ---------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Scenario:
    tenant: Any  # tenants.models.Tenant (imported once Django is set up)
    schema: str
    subscribers: int
    german: int
    message_table: str
    event_table: str


def table(model: Any) -> str:
    from django.db import connection

    return str(connection.ops.quote_name(model._meta.db_table))


def prepare(env: dict[str, str], *, subscribers: int) -> Scenario:
    """Migrate, then make the tenant, its rule and template, and ``subscribers`` members
    of the topic (everything of the tenant's from earlier runs is deleted first)."""
    say(f"migrating {BENCH_DATABASE} (public schema and tenant schemas)")
    run(
        [sys.executable, str(MANAGE), "migrate_schemas", "--noinput", "-v", "0"],
        env=env,
        timeout=900,
    )

    import django

    django.setup()
    from django.db import connection
    from django_tenants.utils import tenant_context

    from channels_delivery.models import Message
    from rules_engine.event_types import event_types_forget
    from rules_engine.models import Event, Subscriber, Topic, TopicMembership
    from rules_engine.services.event_types import event_type_save
    from rules_engine.services.rules import rule_create
    from rules_engine.services.templates import template_create
    from rules_engine.services.topics import topic_create
    from tenants.models import Plan, Tenant
    from tenants.services import public_tenant_ensure, tenant_create

    public_tenant_ensure(domains=["localhost"])
    plan, _ = Plan.objects.update_or_create(
        name=PLAN_NAME,
        defaults={
            "events_per_month": 2_000_000_000,
            "api_requests_per_second": 1_000_000,
            "max_subscribers": 2_000_000_000,
            "retention_days": 1,
        },
    )
    tenant = Tenant.objects.filter(slug=TENANT_SLUG).first()
    if tenant is None:
        say(f"creating tenant {TENANT_SLUG!r}")
        tenant = tenant_create(
            slug=TENANT_SLUG, name=TENANT_NAME, admin_email="bench@example.com", plan=plan
        ).tenant
    tenant.name, tenant.plan, tenant.is_active = TENANT_NAME, plan, True
    tenant.save(update_fields=["name", "plan", "is_active"])

    with tenant_context(tenant):
        say("emptying the tenant's rules, templates, events, messages, subscribers and topics")
        from rules_engine.models import EventType, Layout, Preference, Rule, Template

        models = (
            Message, Event, TopicMembership, Topic, Preference, Subscriber, Rule, Template,
            Layout, EventType,
        )  # fmt: skip
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {REFERENCE_TABLES}")
            cursor.execute(f"TRUNCATE {', '.join(table(model) for model in models)} CASCADE")
        event_type_save(key=EVENT_TYPE, name="Collection launched", category="marketing")
        event_types_forget(schema_name=tenant.schema_name)
        template_create(
            key=TEMPLATE_KEY,
            channel="email",
            variants=VARIANTS,
            fallback_locale="en",
            name="New collection",
            created_by="bench",
        )
        rule_create(
            name=RULE_NAME,
            event_type_key=EVENT_TYPE,
            actions=[{"channel": "email", "template": TEMPLATE_KEY}],
            recipients={"kind": "topic", "topic": TOPIC},
            created_by="bench",
        )
        topic = topic_create(key=TOPIC, name="Everyone")

        say(f"writing {subscribers:,} subscribers with COPY and adding them to {TOPIC!r}")
        started = time.perf_counter()
        columns = "external_id, email, phone, name, locale, timezone, data, channels, "
        columns += "created_at, updated_at"
        with (
            connection.cursor() as cursor,
            cursor.cursor.copy(f"COPY {table(Subscriber)} ({columns}) FROM STDIN") as copy,
        ):
            for number in range(subscribers):
                german = subscriber_locale(number) == "de"
                copy.write_row(
                    (
                        external_id(number),
                        f"user{number}@example.com",
                        "",
                        subscriber_name(number),
                        subscriber_locale(number),
                        "Europe/Berlin" if german else "America/New_York",
                        '{"plan": "%s"}' % ("pro" if number % 10 == 0 else "free"),
                        "{}",
                        "now",
                        "now",
                    )
                )
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table(TopicMembership)} (topic_id, subscriber_id, created_at) "  # noqa: S608
                f"SELECT %s, id, now() FROM {table(Subscriber)} ORDER BY id",
                [topic.pk],
            )
            for model in (Subscriber, TopicMembership, Topic):
                cursor.execute(f"VACUUM ANALYZE {table(model)}")
        say(f"  {time.perf_counter() - started:.1f} s")
        members = TopicMembership.objects.filter(topic=topic).count()
        if members != subscribers:
            raise BenchError(f"the topic has {members:,} members, not {subscribers:,}")
        german_count = Subscriber.objects.filter(locale="de").count()
    return Scenario(
        tenant=tenant,
        schema=tenant.schema_name,
        subscribers=subscribers,
        german=german_count,
        message_table=Message._meta.db_table,
        event_table=Event._meta.db_table,
    )


@contextlib.contextmanager
def in_tenant(scenario: Scenario) -> Iterator[None]:
    """The tenant's schema, with the tenant itself on the connection, as the Celery
    task runs (templates see ``tenant.name``)."""
    from django_tenants.utils import tenant_context

    with tenant_context(scenario.tenant):
        yield


def redis_flush(redis_url: str) -> None:
    """Empty the bench's own Redis database: cached event types, and any task the
    pipeline queued (no Celery worker runs here)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError as error:
        raise BenchError(f"Redis at {redis_url} is unusable: {error}") from None
    finally:
        client.close()


# --- One run ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class RunResult:
    label: str
    seconds: float
    messages: int
    failed_renders: int
    render_errors: tuple[str, ...]
    gc: GcPauses
    python_cpu_s: float
    postgres_cpu_s: float
    cpu: CpuBreakdown | None
    event_id: str

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def cpu_split(self) -> str:
        if self.cpu is None:
            return ""
        return (
            f"CPU: this process {self.python_cpu_s:.2f} s, its PostgreSQL backend "
            f"{self.postgres_cpu_s:.2f} s (PostgreSQL in all "
            f"{self.cpu.seconds.get('postgres', 0):.2f} s); other processes "
            f"{self.cpu.percent('other'):.0f}% of the machine; garbage collector "
            f"{self.gc.describe()}"
            + (
                f"; **{self.failed_renders} message(s) failed to render**: "
                + "; ".join(f"`{error}`" for error in self.render_errors)
                if self.failed_renders
                else ""
            )
        )


@dataclass(kw_only=True)
class GcPauses:
    """Python's garbage collections during a block: a full one walks every object
    the fan-out holds, and stops the pipeline meanwhile."""

    collections: int = 0
    full: int = 0
    seconds: float = 0.0
    longest_full_s: float = 0.0

    def describe(self) -> str:
        return (
            f"{self.seconds:.2f} s in {self.collections:,} collections, {self.full} full "
            f"(longest {1000 * self.longest_full_s:.0f} ms)"
        )


@contextlib.contextmanager
def gc_pauses(into: GcPauses) -> Iterator[None]:
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
            return
        if not started:
            return
        pause = time.perf_counter() - started[0]
        into.collections += 1
        into.seconds += pause
        if info.get("generation") == 2:
            into.full += 1
            into.longest_full_s = max(into.longest_full_s, pause)

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)


def backend_ticks(pid: int) -> int:
    """CPU ticks a PostgreSQL backend has used so far (it runs on this machine)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path(f"/proc/{pid}/stat").read_text()
        rest = text[text.rindex(")") + 2 :].split()
        return int(rest[11]) + int(rest[12])
    return 0


def classifier() -> Callable[[int, str, int], str]:
    me = os.getpid()

    def classify(pid: int, name: str, group: int) -> str:
        if pid == me:
            return "bench"
        if name.startswith("postgres"):
            title = process_command_line(pid)
            is_client = re.search(r"\d\(\d+\)|\[local\]", title) is not None
            # Other people's connections (a test suite's) are not ours; the
            # server's own processes (WAL writer, checkpointer…) serve us too.
            return "" if is_client and BENCH_DATABASE not in title else "postgres"
        return ""

    return classify


def checkpoint(database_url: str) -> None:
    """Write out dirty buffers now, so that the previous run's writes do not slow this one."""
    try:
        sql(database_url, "CHECKPOINT")
    except Exception as error:  # only a way to make runs alike
        say(f"could not CHECKPOINT ({type(error).__name__}); runs may differ more")


def wait_for_quiet(max_wait: float, *, busy_below: float) -> None:
    deadline = time.monotonic() + max_wait
    busy = cpu_busy_percent(2.0)
    while busy >= busy_below and time.monotonic() < deadline:
        say(f"machine {busy:.0f}% busy (others' work); waiting for it to calm down")
        time.sleep(8.0)
        busy = cpu_busy_percent(2.0)


def fresh_event_run(
    *,
    label: str,
    scenario: Scenario,
    database_url: str,
    around: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    quiet_wait: float = 0.0,
    quiet_below: float = 10.0,
) -> RunResult:
    """Empty the messages, make a fresh event, time ``event_process`` on it, check the result."""
    from django.db import connection

    from channels_delivery.models import Message
    from rules_engine.models import Event
    from rules_engine.services.pipeline import event_process

    with in_tenant(scenario):
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {table(Message)} CASCADE")
            cursor.execute("SELECT pg_backend_pid()")
            backend = int(cursor.fetchone()[0])
        event = Event.objects.create(event_type_key=EVENT_TYPE, payload=PAYLOAD)
    checkpoint(database_url)
    if quiet_wait > 0:
        wait_for_quiet(quiet_wait, busy_below=quiet_below)
    gc.collect()  # the previous run's garbage is not this run's cost
    say(f"{label}: processing event {event.id} (load average {load_average()[0]:.2f})")
    with in_tenant(scenario), around():
        ticks = backend_ticks(backend)
        cpu_started = time.process_time()
        pauses = GcPauses()
        with CpuAccounting(classifier()) as accounting, gc_pauses(pauses):
            started = time.perf_counter()
            processed = event_process(event_id=event.id)
            seconds = time.perf_counter() - started
        python_cpu = time.process_time() - cpu_started
        postgres_cpu = (backend_ticks(backend) - ticks) / CLOCK_TICKS
    with in_tenant(scenario):
        checked = check_run(event_id=event.id, processed=processed, scenario=scenario)
    result = RunResult(
        label=label,
        seconds=seconds,
        messages=checked.messages,
        failed_renders=checked.failed,
        render_errors=checked.errors,
        gc=pauses,
        python_cpu_s=python_cpu,
        postgres_cpu_s=postgres_cpu,
        cpu=accounting.result,
        event_id=str(event.id),
    )
    say(f"{label}: {seconds:.2f} s, {result.per_second:,.0f} messages/s; {result.cpu_split()}")
    if checked.failed:
        say(f"WARNING {label}: {checked.failed} message(s) failed to render: {checked.errors}")
    return result


@dataclass(frozen=True, kw_only=True)
class Checked:
    messages: int
    failed: int  # stored as failed: the render raised (the story counts them too)
    errors: tuple[str, ...]  # the failed messages' distinct errors, a few


def check_run(*, event_id: Any, processed: Any, scenario: Scenario) -> Checked:
    """One message per subscriber: queued and rendered in their language, or failed
    with the render's error (which the report shows; the pipeline's own choice)."""
    from django.db import connection

    from channels_delivery.models import Message
    from rules_engine.models import EventStatus

    if processed is None or processed.status != EventStatus.PROCESSED:
        status = getattr(processed, "status", "gone")
        raise BenchError(f"event {event_id} ended {status}: {getattr(processed, 'outcome', '')}")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), count(DISTINCT subscriber_id) FROM {table(Message)} "  # noqa: S608
            "WHERE event_id = %s",
            [event_id],
        )
        total, distinct = (int(value) for value in cursor.fetchone())
        cursor.execute(
            f"SELECT status, locale, count(*) FROM {table(Message)} "  # noqa: S608
            "WHERE event_id = %s GROUP BY status, locale",
            [event_id],
        )
        groups = {(status, locale): int(n) for status, locale, n in cursor.fetchall()}
        cursor.execute(
            f"SELECT DISTINCT content->>'error' FROM {table(Message)} "  # noqa: S608
            "WHERE event_id = %s AND status = 'failed' LIMIT 3",
            [event_id],
        )
        errors = tuple(str(error) for (error,) in cursor.fetchall())
    if total != scenario.subscribers or distinct != total:
        raise BenchError(
            f"event {event_id}: {total:,} messages stored for {distinct:,} subscribers, "
            f"not one each for {scenario.subscribers:,}"
        )
    failed = sum(n for (status, _), n in groups.items() if status == "failed")
    queued = {locale: n for (status, locale), n in groups.items() if status == "queued"}
    expected = {"de": scenario.german, "en": scenario.subscribers - scenario.german}
    unexpected = set(queued) - set(expected) or {
        locale for locale, n in queued.items() if n > expected[locale]
    }
    if unexpected or sum(queued.values()) + failed != total:
        raise BenchError(
            f"event {event_id}: messages by status and locale {groups}, expected {expected}"
        )
    story = processed.outcome
    story_failed = sum(rule.get("failed_renders", 0) for rule in story.get("rules", []))
    if story.get("messages") != total or story_failed != failed:
        raise BenchError(
            f"event {event_id}: the story counts {story.get('messages')} messages and "
            f"{story_failed} failed renders; stored {total}, {failed} failed"
        )
    # Two subscribers rendered in full: the first (German) and the second (English).
    stored = Message.objects.filter(event_id=event_id, status="queued")
    for number in range(min(2, scenario.subscribers)):
        message = stored.filter(subscriber__external_id=external_id(number)).first()
        if message is not None and message.content != expected_content(number):
            raise BenchError(
                f"event {event_id}: subscriber {number} got {message.content!r}, "
                f"expected {expected_content(number)!r}"
            )
    return Checked(messages=total, failed=failed, errors=errors)


# --- Stage timing (the pipeline's functions wrapped in this process) ---------------------

STAGE_FUNCTIONS = (
    ("event_plan", "event_plan"),
    ("recipients_resolve", "resolution"),
    ("render_message", "rendering"),
    ("messages_copy", "COPY"),
)


@dataclass(kw_only=True)
class StageTimes:
    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    longest: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


@contextlib.contextmanager
def timed_stages(into: StageTimes) -> Iterator[None]:
    """Wrap the pipeline module's stage functions (and the connection's commit) with
    timers for the block; Herald's code is not changed. A function the pipeline no
    longer has is reported, not guessed."""
    from rules_engine.services import pipeline

    def timer(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                took = time.perf_counter() - started
                into.seconds[name] = into.seconds.get(name, 0.0) + took
                into.calls[name] = into.calls.get(name, 0) + 1
                into.longest[name] = max(into.longest.get(name, 0.0), took)

        return timed

    originals: dict[str, Any] = {}
    for name, _ in STAGE_FUNCTIONS:
        function = getattr(pipeline, name, None)
        if function is None:
            into.missing.append(name)
            continue
        originals[name] = function
        setattr(pipeline, name, timer(name, function))
    # Atomic.__exit__ calls the DatabaseWrapper's commit() (django.db.connection
    # is only a proxy to it): the deferred foreign-key checks of the COPY run there.
    from django.db import connections

    database = connections["default"]
    database.commit = timer("commit", database.commit)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(pipeline, name, function)
        del database.commit  # the class's method again


# --- Profile (py-spy on this process) ------------------------------------------------------


@contextlib.contextmanager
def py_spy(output: Path, py_spy_path: str) -> Iterator[None]:
    """py-spy records this process (every thread, idle too: wall clock) during the block.

    Not ``--nonblocking``: reading the stacks of a running process drops the samples
    whose stack changed meanwhile, a third of them here, nearly all in rendering's
    fast-changing Python frames, which made waits on PostgreSQL look twice as large.
    Pausing the process for each sample costs about 3% of the run instead."""
    command = [
        py_spy_path, "record", "--pid", str(os.getpid()), "--rate", str(PROFILE_RATE), "--idle",
        "--threads", "--format", "raw", "--output", str(output),
    ]  # fmt: skip
    recorder = subprocess.Popen(  # noqa: S603 - fixed command
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # py-spy prints its "Sampling process" line once attached (or an error and exits).
    line = recorder.stdout.readline() if recorder.stdout is not None else ""
    if "Sampling" not in line:
        recorder.kill()
        rest, _ = recorder.communicate(timeout=30)
        raise BenchError(f"py-spy did not start: {line.strip()} {rest[-500:]}")
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        try:
            tail, _ = recorder.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
            tail = ""
        if not output.exists():
            raise BenchError(f"py-spy wrote no profile: {tail.strip()[-500:]}")


def pipeline_stacks(raw: Path, output: Path) -> None:
    """Keep the main thread's stacks inside ``event_process`` (the timed call), from
    that frame down: the benchmark's own frames above it are on every stack."""
    marker = f"thread ({threading.main_thread().native_id})"
    lines = []
    for line in raw.read_text(errors="replace").splitlines():
        first, _, rest = line.partition(";")
        if not first.startswith(marker):
            continue
        frames = rest.split(";")
        for index, frame in enumerate(frames):
            if frame.startswith("event_process ("):
                lines.append(";".join(frames[index:]))
                break
    output.write_text("\n".join(lines) + "\n")


# A sample goes to the first category with a marker (a substring of a frame) on
# its stack, so the more specific categories come first.
PROFILE_STAGES: list[tuple[str, list[str]]] = [
    (
        "resolution (`recipients_resolve`: topic members query, rows to dicts)",
        ["recipients_resolve ("],
    ),
    ("rendering (`render_message`: Jinja2 sandbox, subject and text)", ["render_message ("]),
    ("COPY (`messages_copy`: rows to PostgreSQL)", ["messages_copy ("]),
    ("commit (deferred foreign-key checks of the rows)", ["Atomic.__exit__ ("]),
    ("`message_send_after`", ["message_send_after ("]),
    ("preferences (`PreferenceResolver.allows`)", ["PreferenceResolver.allows ("]),
    (
        "per recipient: `subscriber_variables`, `RenderContext`, `NewMessage`, `uuid4`, "
        "`dataclasses.replace`",
        ["subscriber_variables (", "__create_fn__", "uuid4 (", "replace ("],
    ),
    ("the event's story (`RuleStory.as_dict`, `Event.save`)", ["as_dict (", "Model.save ("]),
    ("rest of the per-recipient loop (`event_plan` itself)", ["event_plan ("]),
]


@dataclass(frozen=True, kw_only=True)
class Profile:
    seconds: float  # the profiled run's wall time
    samples: int
    stages: dict[str, int]
    functions: list[tuple[str, float, float]]  # function, inclusive share, own share
    directory: Path


def profile_run(
    *,
    scenario: Scenario,
    database_url: str,
    directory: Path,
    py_spy_path: str,
    quiet_wait: float,
    quiet_below: float,
) -> tuple[RunResult, Profile]:
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "fanout-raw.txt"
    main = directory / "fanout-event-process.txt"
    result = fresh_event_run(
        label="profiled run (py-spy)",
        scenario=scenario,
        database_url=database_url,
        around=lambda: py_spy(raw, py_spy_path),
        quiet_wait=quiet_wait,
        quiet_below=quiet_below,
    )
    pipeline_stacks(raw, main)
    total, stages = profile_categories([main], PROFILE_STAGES)
    if total == 0:
        raise BenchError(f"py-spy recorded no sample inside event_process ({raw})")
    _, lines = profile_summary([main], top=60)
    functions = [(line.function, line.inclusive, line.own) for line in lines]
    return result, Profile(
        seconds=result.seconds,
        samples=total,
        stages=stages,
        functions=functions,
        directory=directory,
    )


# --- The reference: COPY of the same rows ----------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Reference:
    rows: int
    indexes: int
    foreign_keys: int
    bare_s: float
    preformatted_s: float
    with_foreign_keys_s: float
    write_row_s: float
    bytes: int


def reference_copy(*, database_url: str, scenario: Scenario, event_id: str) -> Reference:
    """COPY the last run's N message rows into scratch tables: without indexes, with
    the Message table's indexes, with its foreign keys too, and (with its indexes)
    from Python tuples."""
    import psycopg

    message = scenario.message_table
    columns = [
        "id", "event_id", "subscriber_id", "channel", "status", "content", "rule_version_id",
        "template_version_id", "locale", "send_after", "created_at", "updated_at",
    ]  # fmt: skip
    column_list = ", ".join(columns)
    options = f"-c search_path={scenario.schema},public"
    with psycopg.connect(libpq_url(database_url), options=options, connect_timeout=5) as conn:
        with conn.cursor() as cursor:
            say("reference: reading the last run's messages")
            buffer = io.BytesIO()
            with cursor.copy(
                f"COPY (SELECT {column_list} FROM {message} WHERE event_id = %s) TO STDOUT",  # noqa: S608
                [event_id],
            ) as copy:
                for data in copy:
                    buffer.write(data)
            text = buffer.getvalue()
            cursor.execute(
                f"SELECT {column_list.replace('content', 'content::text')} "  # noqa: S608
                f"FROM {message} WHERE event_id = %s",
                [event_id],
            )
            tuples = cursor.fetchall()
            cursor.execute(f"DROP TABLE IF EXISTS {REFERENCE_TABLES}")
            cursor.execute(
                f"CREATE TABLE {REFERENCE_BARE_TABLE} (LIKE {message} INCLUDING DEFAULTS)"
            )
            for name in (REFERENCE_TABLE, REFERENCE_FK_TABLE):
                cursor.execute(
                    f"CREATE TABLE {name} (LIKE {message} INCLUDING DEFAULTS INCLUDING INDEXES)"
                )
            cursor.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype = 'f'",
                [message],
            )
            foreign_keys = [definition for (definition,) in cursor.fetchall()]
            for definition in foreign_keys:
                cursor.execute(f"ALTER TABLE {REFERENCE_FK_TABLE} ADD {definition}")
            cursor.execute("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass", [message])
            indexes = int(cursor.fetchone()[0])  # type: ignore[index]
        conn.commit()

        def timed_copy(target: str, write: Callable[[Any], None]) -> float:
            checkpoint(database_url)
            gc.collect()
            with conn.cursor() as cursor:
                started = time.perf_counter()
                with cursor.copy(f"COPY {target} ({column_list}) FROM STDIN") as copy:
                    write(copy)
                conn.commit()  # the deferred foreign-key checks run here
                return time.perf_counter() - started

        def chunks(copy: Any) -> None:
            view = memoryview(text)
            for offset in range(0, len(view), 1 << 20):
                copy.write(view[offset : offset + (1 << 20)])

        def rows(copy: Any) -> None:
            for row in tuples:
                copy.write_row(row)

        say(f"reference: COPY of {len(tuples):,} rows, preformatted, no indexes")
        bare = timed_copy(REFERENCE_BARE_TABLE, chunks)
        say(f"  {bare:.2f} s; the same with the Message table's {indexes} indexes")
        preformatted = timed_copy(REFERENCE_TABLE, chunks)
        with conn.cursor() as cursor:
            cursor.execute(f"TRUNCATE {REFERENCE_TABLE}")
        conn.commit()
        say(f"  {preformatted:.2f} s; the same with its {len(foreign_keys)} foreign keys too")
        with_keys = timed_copy(REFERENCE_FK_TABLE, chunks)
        say(f"  {with_keys:.2f} s; from Python tuples with write_row, indexes, no foreign keys")
        write_row = timed_copy(REFERENCE_TABLE, rows)
        say(f"  {write_row:.2f} s")
        with conn.cursor() as cursor:
            cursor.execute(f"DROP TABLE {REFERENCE_TABLES}")
        conn.commit()
    return Reference(
        rows=len(tuples),
        indexes=indexes,
        foreign_keys=len(foreign_keys),
        bare_s=bare,
        preformatted_s=preformatted,
        with_foreign_keys_s=with_keys,
        write_row_s=write_row,
        bytes=len(text),
    )


# --- Report -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Report:
    command: str
    date: str
    machine: str
    versions: dict[str, str]
    code: str
    scenario: Scenario
    runs: list[RunResult]
    reference: Reference
    stages: StageTimes | None
    stage_run: RunResult | None
    profile: Profile | None
    profile_run: RunResult | None
    load: tuple[float, float, float]
    background: float
    peak_rss_mib: float

    def figures(self) -> list[Figure]:
        n = self.scenario.subscribers
        return [
            Figure(
                name=f"One event to {n:,} subscribers (event_process, median)",
                value=self.median_s,
                unit="s",
                target=f"≤ {TARGET_SECONDS:g} s",
                met=self.met(),
                reference="COPY of the same rows into a table like Message's, s",
                reference_value=self.reference.with_foreign_keys_s,
            )
        ]

    @property
    def median_s(self) -> float:
        return statistics.median(run_.seconds for run_ in self.runs)

    def met(self) -> bool:
        return self.median_s <= TARGET_SECONDS

    def all_runs(self) -> list[RunResult]:
        extra = (run_ for run_ in (self.stage_run, self.profile_run) if run_ is not None)
        return [*self.runs, *extra]

    def failed_renders(self) -> int:
        return sum(run_.failed_renders for run_ in self.all_runs())

    def table(self) -> str:
        n = self.scenario.subscribers
        ref = self.reference
        median = self.median_s
        each = ", ".join(f"{run_.seconds:.2f}" for run_ in self.runs)

        def rate(seconds: float) -> str:
            return f"{n / seconds:,.0f}/s" if seconds else NONE

        rows = [
            [
                f"One event to {n:,} subscribers: `event_process`, median of {len(self.runs)}",
                f"{median:.2f} s (runs: {each} s)",
                f"≤ {TARGET_SECONDS:g} s",
                "yes" if self.met() else "**no**",
                f"{ref.with_foreign_keys_s:.2f} s: COPY of the same rows into a table like "
                "Message's",
                f"{ref.with_foreign_keys_s / median:.0%}",
            ],
            [
                "Messages stored per second (median run)",
                f"{n / median:,.0f}",
                NONE,
                NONE,
                f"{rate(ref.with_foreign_keys_s)} (COPY, table like Message's)",
                f"{ref.with_foreign_keys_s / median:.0%}",
            ],
        ]
        every = self.all_runs()
        failed = self.failed_renders()
        errors = sorted({error for run_ in every for error in run_.render_errors})
        rows.append(
            [
                f"Messages that failed to render, all {len(every)} runs",
                f"{failed:,} of {n * len(every):,}",
                "0",
                "yes" if failed == 0 else "**no**",
                "; ".join(f"`{error}`" for error in errors) if errors else NONE,
                NONE,
            ]
        )
        longest = max(run_.gc.longest_full_s for run_ in every)
        rows.append(
            [
                "Longest full garbage collection within a run (it stops the pipeline)",
                f"{1000 * longest:.0f} ms",
                NONE,
                NONE,
                f"{settings_render_timeout_ms()} ms: a render's wall-clock deadline",
                NONE,
            ]
        )
        for label, seconds in (
            ("no indexes, no foreign keys (the heap alone)", ref.bare_s),
            (f"the Message table's {ref.indexes} indexes, no foreign keys", ref.preformatted_s),
            (
                f"its {ref.indexes} indexes and {ref.foreign_keys} foreign keys (deferred, "
                "checked at commit)",
                ref.with_foreign_keys_s,
            ),
            (
                f"from Python tuples (psycopg `write_row`, as `messages_copy`), {ref.indexes} "
                "indexes, no foreign keys",
                ref.write_row_s,
            ),
        ):
            rows.append(
                [
                    f"Reference: COPY of the same rows, {label}",
                    f"{seconds:.2f} s",
                    NONE,
                    NONE,
                    rate(seconds),
                    f"{seconds / median:.0%}",
                ]
            )
        return markdown_table(
            ["Figure", "Measured", "Target", "Met", "Reference (same run)", "Ratio"], rows
        )

    def stage_table(self) -> str:
        if self.stages is None or self.stage_run is None:
            return ""
        seconds = self.stages.seconds
        calls = self.stages.calls
        total = self.stage_run.seconds
        plan = seconds.get("event_plan", 0.0)
        resolve = seconds.get("recipients_resolve", 0.0)
        render = seconds.get("render_message", 0.0)
        rows: list[list[str]] = []

        def add(label: str, value: float, note: str = "") -> None:
            rows.append([label, f"{value:.2f} s", f"{value / total:.0%}", note])

        add(
            "resolution (`recipients_resolve`)",
            resolve,
            f"{calls.get('recipients_resolve', 0)} call(s)",
        )
        count = calls.get("render_message", 0)
        add(
            "rendering (`render_message`)",
            render,
            f"{count:,} calls, {1e6 * render / max(1, count):.0f} µs each, the slowest "
            f"{1000 * self.stages.longest.get('render_message', 0.0):.0f} ms",
        )
        add(
            "the rest of `event_plan` (per recipient: context, send_after, preferences, "
            "`NewMessage`)",
            plan - resolve - render,
            f"{1e6 * (plan - resolve - render) / self.scenario.subscribers:.0f} µs per recipient",
        )
        add("COPY (`messages_copy`)", seconds.get("messages_copy", 0.0), "one statement")
        add("commit (deferred foreign-key checks)", seconds.get("commit", 0.0), "")
        accounted = plan + seconds.get("messages_copy", 0.0) + seconds.get("commit", 0.0)
        add("everything else (lock the event, load rules, save its story)", total - accounted, "")
        rows.append(["**total (timed run)**", f"**{total:.2f} s**", "100%", ""])
        if self.stages.missing:
            rows.append(
                ["not timed (not in the pipeline module)", ", ".join(self.stages.missing), "", ""]
            )
        return markdown_table(["Stage", "Seconds", "Share", "Note"], rows)

    def profile_tables(self) -> str:
        if self.profile is None:
            return ""
        profile = self.profile
        per_sample = profile.seconds / max(1, profile.samples)
        stage_rows = [
            [label, f"{count * per_sample:.2f} s", f"{count / max(1, profile.samples):.0%}"]
            for label, count in sorted(profile.stages.items(), key=lambda item: -item[1])
            if count
        ]
        function_rows = [
            [f"`{name}`", f"{inclusive * profile.seconds:.2f} s", f"{own * profile.seconds:.2f} s"]
            for name, inclusive, own in profile.functions[:25]
        ]
        return (
            f"py-spy, wall clock ({PROFILE_RATE} samples/s; {profile.samples:,} samples inside "
            f"`event_process`, which took {profile.seconds:.2f} s, so "
            f"{profile.seconds * PROFILE_RATE:,.0f} expected; a sample goes to the first "
            "matching line):"
            "\n\n"
            + markdown_table(["Where", "Seconds", "Share"], stage_rows)
            + "\n\nBusiest functions (inclusive: on the stack; own: at the top):\n\n"
            + markdown_table(["Function", "Inclusive", "Own"], function_rows)
        )

    def details(self) -> str:
        scenario = self.scenario
        lines = [
            f"- **Command:** `{self.command}`",
            f"- **Date:** {self.date}",
            f"- **Machine:** {self.machine}; PostgreSQL on the same machine",
            "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
            f"- **Code:** {self.code}",
            f"- **Data:** {scenario.subscribers:,} subscribers in topic `{TOPIC}`, "
            f"{scenario.german:,} with locale `de`; one rule (`kind: topic`, no condition) with "
            "one email action; the template has `en` and `de` variants, subject and text with "
            "`subscriber.name`, `event.payload` and `tenant.name`; one message per subscriber",
            "- **Each run:** the Message table emptied, a fresh event created, a `CHECKPOINT`, "
            "then `event_process(event_id=…)` timed in this process (its transaction and "
            "commit included); afterwards checked: one message per subscriber, either queued "
            "and rendered in the subscriber's language (two compared in full) or failed with "
            "its render's error (counted above); the event's story agrees",
            f"- **Peak memory of the process:** {self.peak_rss_mib:,.0f} MiB (max RSS)",
            "- **Noise:** load average "
            + " / ".join(f"{value:.2f}" for value in self.load)
            + f" at the start; machine {self.background:.0f}% busy before the first run",
        ]
        for run_ in self.all_runs():
            lines.append(f"- **{run_.label}:** {run_.seconds:.2f} s; {run_.cpu_split()}")
        ref = self.reference
        lines.append(
            f"- **Reference:** the last run's {ref.rows:,} rows ({ref.bytes / 1e6:.1f} MB as COPY "
            "text), read back and written with `COPY … FROM STDIN` in one transaction (commit "
            "included) into scratch tables `LIKE` the Message table: its columns only; its "
            "columns and indexes; those and its foreign keys; then, with the indexes, from "
            "Python tuples with psycopg's `write_row`. The ratio is the reference's time as a "
            "share of the median run's"
        )
        if self.stage_run is not None:
            lines.append(
                f"- **Stages:** a separate run ({self.stage_run.seconds:.2f} s) with the "
                "pipeline module's `event_plan`, `recipients_resolve`, `render_message`, "
                "`messages_copy` and the connection's `commit` wrapped in timers"
            )
        if self.profile_run is not None and self.profile is not None:
            lines.append(
                f"- **Profile:** a separate run under py-spy ({self.profile_run.seconds:.2f} s; "
                f"raw stacks in `{self.profile.directory}`)"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        parts = [self.table(), self.details()]
        stages = self.stage_table()
        if stages:
            parts.append("Time per stage (timed run):\n\n" + stages)
        profile = self.profile_tables()
        if profile:
            parts.append(profile)
        return "\n\n".join(parts)


def settings_render_timeout_ms() -> int:
    from django.conf import settings

    return int(getattr(settings, "HERALD_TEMPLATE_RENDER_TIMEOUT_MS", 0))


def versions(database_url: str) -> dict[str, str]:
    found = {"Python": sys.version.split()[0]}
    for package, label in (
        ("django", "Django"),
        ("jinja2", "Jinja2"),
        ("psycopg", "psycopg"),
        ("django-tenants", "django-tenants"),
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[label] = metadata.version(package)
    found["PostgreSQL"] = postgres_version(database_url)
    return found


def git_state() -> str:
    """The commit, whether the application code differs from it, and whether the
    pipeline's own files do (another engineer may be editing them)."""
    try:
        commit = run(["git", "rev-parse", "--short", "HEAD"], timeout=10).stdout.strip()
        changed = run(["git", "status", "--porcelain"], timeout=30).stdout.splitlines()
    except (BenchError, OSError):
        return "unknown"
    app = [line[3:] for line in changed if not line[3:].startswith(("bench/", "docs/"))]
    if not app:
        return f"commit {commit}"
    pipeline = [path for path in app if path.startswith(("rules_engine/", "channels_delivery/"))]
    note = f" (among them {', '.join(sorted(pipeline)[:5])})" if pipeline else ""
    return f"commit {commit} plus uncommitted changes to {len(app)} application paths{note}"


# --- Main -------------------------------------------------------------------------------------


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/fanout.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--subscribers", type=int, default=DEFAULT_SUBSCRIBERS, help="members of the topic"
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs (fresh events)")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the stage-timed and py-spy runs"
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "herald-bench-fanout",
        help="where py-spy's raw stacks go",
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
        "--write-docs", action="store_true", help="rewrite the Fan-out block of docs/benchmarks.md"
    )
    parser.add_argument(
        "--figures", metavar="PATH", help="also write the headline figures as JSON (bench/all.py)"
    )
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.subscribers <= 5_000_000:
        parser.error("--subscribers must be between 1 and 5,000,000")
    if not 1 <= arguments.runs <= 20:
        parser.error("--runs must be between 1 and 20")
    return arguments


def benchmark(arguments: argparse.Namespace, argv: list[str], py_spy_path: str | None) -> Report:
    machine = machine_info()
    load = load_average()
    say(f"machine: {machine.describe()}; load average {load[0]:.2f}")
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    database_url = with_database(server_url, BENCH_DATABASE)
    redis_url = with_redis_db(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL, BENCH_REDIS_DB)
    if ensure_database(database_url):
        say(f"created database {BENCH_DATABASE}")
    env = environment_configure(database_url=database_url, redis_url=redis_url)
    redis_flush(redis_url)
    try:
        return measure(
            arguments,
            argv,
            py_spy_path,
            database_url=database_url,
            env=env,
            machine=machine.describe(),
            load=load,
        )
    finally:
        with contextlib.suppress(BenchError):
            redis_flush(redis_url)


def measure(
    arguments: argparse.Namespace,
    argv: list[str],
    py_spy_path: str | None,
    *,
    database_url: str,
    env: dict[str, str],
    machine: str,
    load: tuple[float, float, float],
) -> Report:
    scenario = prepare(env, subscribers=arguments.subscribers)

    stages: StageTimes | None = None
    stage_run = profiled = profile = None
    if not arguments.no_profile:
        # First, so that it also warms this process's caches (compiled template,
        # CEL program, event types) for the measured runs.
        stages = StageTimes()
        times = stages
        stage_run = fresh_event_run(
            label="stage-timed run",
            scenario=scenario,
            database_url=database_url,
            around=lambda: timed_stages(times),
            quiet_wait=arguments.wait_quiet,
            quiet_below=arguments.quiet_below,
        )
        if py_spy_path is None:
            raise BenchError("py-spy is missing")
        profiled, profile = profile_run(
            scenario=scenario,
            database_url=database_url,
            directory=arguments.profile_dir,
            py_spy_path=py_spy_path,
            quiet_wait=arguments.wait_quiet,
            quiet_below=arguments.quiet_below,
        )
    say("sampling the machine's background CPU for 3 s")
    background = cpu_busy_percent(3.0)
    runs = [
        fresh_event_run(
            label=f"Run {number}",
            scenario=scenario,
            database_url=database_url,
            quiet_wait=arguments.wait_quiet,
            quiet_below=arguments.quiet_below,
        )
        for number in range(1, arguments.runs + 1)
    ]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reference = reference_copy(
        database_url=database_url, scenario=scenario, event_id=runs[-1].event_id
    )
    return Report(
        command=".venv/bin/python bench/fanout.py " + " ".join(shlex.quote(p) for p in argv),
        date=utc_now(),
        machine=machine,
        versions=versions(database_url),
        code=git_state(),
        scenario=scenario,
        runs=runs,
        reference=reference,
        stages=stages,
        stage_run=stage_run,
        profile=profile,
        profile_run=profiled,
        load=load,
        background=background,
        peak_rss_mib=peak,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    py_spy_path = find_executable(
        "py-spy", extra_globs=[str(Path(sys.executable).parent / "py-spy")]
    )
    if py_spy_path is None and not arguments.no_profile:
        print(
            "py-spy is not installed (.venv/bin/pip install py-spy), or pass --no-profile",
            file=sys.stderr,
        )
        return 2
    os.chdir(ROOT)
    started = time.monotonic()
    report = run_guarded(lambda: benchmark(arguments, argv, py_spy_path))
    if isinstance(report, int):
        return report
    report_publish(
        report,
        bench="fanout",
        title="Fan-out",
        figures=arguments.figures,
        write_docs=arguments.write_docs,
    )
    say(
        f"done in {time.monotonic() - started:.0f} s; median {report.median_s:.2f} s, target "
        + ("met" if report.met() else "NOT met")
        + ("" if report.failed_renders() == 0 else f"; {report.failed_renders()} FAILED RENDERS")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
