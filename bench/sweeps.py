"""Beat sweeps over many tenants: what visiting an idle tenant costs.

    .venv/bin/python bench/sweeps.py [--tenants 200] [--rounds 5] [--write-docs]

Celery beat runs four tasks that visit every tenant's schema (events sweep,
messages and callbacks sweep, digests, analytics fold; every 10-15 s). Most
tenants have nothing due most of the time, so what a platform with many
tenants pays is the cost of an idle visit. Each task first asks one
``SELECT EXISTS (...) OR ...`` per tenant (tenants.sweeps) and runs its
service only where it answers true. The same-run reference is the same task
with that probe switched off (every tenant's service runs, as before the
probe existed): the ratio is what the probe saves.

Measured in this process (as the beat's worker runs the tasks, without the
broker) on its own database ``herald_bench_sweeps`` (PostgreSQL server of
DATABASE_URL, default 127.0.0.1:5432) with Redis database 13. Setup, not
measured, kept between runs: ``migrate_schemas``, a tenant ``base``, and
N tenants cloned from its schema (django-tenants' clone_schema, about a
second each; a progress line every 25). Figures: milliseconds per tenant of
one beat cycle (all four tasks), wall clock and this process's CPU; and how
many idle tenants one beat worker keeps swept at the 15 s beat interval.

Exit status: 0 when it ran, 1 on an error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    ROOT,
    BenchError,
    Figure,
    ensure_database,
    environment_configure,
    machine_info,
    markdown_table,
    postgres_version,
    report_publish,
    run_guarded,
    say,
    utc_now,
    with_database,
    with_redis_db,
)

BENCH_DATABASE = "herald_bench_sweeps"
BENCH_REDIS_DB = 13
BASE_SLUG = "base"
BEAT_INTERVAL_S = 15.0


@dataclass(frozen=True, kw_only=True)
class Timing:
    wall_ms: float  # per tenant, median over the rounds
    cpu_ms: float


@dataclass(frozen=True, kw_only=True)
class Report:
    command: str
    date: str
    machine: str
    postgres: str
    tenants: int
    rounds: int
    probed: dict[str, Timing]
    unprobed: dict[str, Timing]

    def cycle(self, timings: dict[str, Timing]) -> Timing:
        return Timing(
            wall_ms=sum(t.wall_ms for t in timings.values()),
            cpu_ms=sum(t.cpu_ms for t in timings.values()),
        )

    def figures(self) -> list[Figure]:
        probed, unprobed = self.cycle(self.probed), self.cycle(self.unprobed)
        return [
            Figure(
                name="idle beat cycle per tenant (4 sweeps, wall)",
                value=probed.wall_ms,
                unit="ms",
                reference="the same without the probe",
                reference_value=unprobed.wall_ms,
            ),
            Figure(
                name=f"idle tenants one beat worker sweeps every {BEAT_INTERVAL_S:.0f} s",
                value=BEAT_INTERVAL_S * 1000 / probed.wall_ms,
                unit="tenants",
                reference="the same without the probe",
                reference_value=BEAT_INTERVAL_S * 1000 / unprobed.wall_ms,
            ),
        ]

    def markdown(self) -> str:
        rows = []
        for task in self.probed:
            with_probe, without = self.probed[task], self.unprobed[task]
            rows.append(
                [
                    f"`{task}`",
                    f"{with_probe.wall_ms:.2f}",
                    f"{with_probe.cpu_ms:.2f}",
                    f"{without.wall_ms:.2f}",
                    f"{without.cpu_ms:.2f}",
                    f"{without.wall_ms / with_probe.wall_ms:.1f}x",
                ]
            )
        probed, unprobed = self.cycle(self.probed), self.cycle(self.unprobed)
        rows.append(
            [
                "**one beat cycle**",
                f"**{probed.wall_ms:.2f}**",
                f"**{probed.cpu_ms:.2f}**",
                f"{unprobed.wall_ms:.2f}",
                f"{unprobed.cpu_ms:.2f}",
                f"{unprobed.wall_ms / probed.wall_ms:.1f}x",
            ]
        )
        header = [
            "Task",
            "ms/tenant wall",
            "ms/tenant CPU",
            "without probe: wall",
            "without probe: CPU",
            "saved",
        ]
        return "\n".join(
            [
                f"Run {self.date} on {self.machine}; PostgreSQL {self.postgres}.",
                f"Command: `{self.command}`",
                "",
                f"{self.tenants} idle tenants (nothing due), each task run {self.rounds} times;"
                " the median per tenant. CPU is this process's (the beat worker's), not"
                " PostgreSQL's. At the 15 s beat interval, one beat worker (the tasks run one"
                f" after another) keeps **{BEAT_INTERVAL_S * 1000 / probed.wall_ms:,.0f} idle"
                " tenants** swept"
                f" ({BEAT_INTERVAL_S * 1000 / unprobed.wall_ms:,.0f} without the probe).",
                "",
                markdown_table(header, rows),
            ]
        )


def tenants_prepare(count: int) -> None:
    """Migrations, the base tenant and ``count`` clones of it (kept between runs)."""
    from django.core.management import call_command
    from django_tenants.clone import CloneSchema

    from tenants.models import Tenant
    from tenants.services import (
        plan_get_default,
        public_tenant_ensure,
        schema_name_for,
        tenant_create,
    )

    say(f"migrating {BENCH_DATABASE}")
    call_command("migrate_schemas", shared=True, verbosity=0)
    public_tenant_ensure(domains=["localhost"])
    if not Tenant.objects.filter(slug=BASE_SLUG).exists():
        # Nobody logs in: the generated password is not kept.
        tenant_create(slug=BASE_SLUG, name="Base", admin_email="admin@base.example.com")
    have = set(Tenant.objects.values_list("slug", flat=True))
    wanted = [f"idle-{number:05d}" for number in range(count - 1)]
    missing = [slug for slug in wanted if slug not in have]
    for done, slug in enumerate(missing, start=1):
        schema = schema_name_for(slug)
        CloneSchema().clone_schema(BASE_SLUG, schema, clone_mode="NODATA")
        tenant = Tenant(slug=slug, name=slug, schema_name=schema, plan=plan_get_default())
        tenant.auto_create_schema = False
        tenant.save()
        if done % 25 == 0 or done == len(missing):
            say(f"cloned {done}/{len(missing)} tenant schemas")
    surplus = Tenant.objects.filter(slug__startswith="idle-").exclude(slug__in=wanted)
    surplus.update(is_active=False)  # kept for a later, larger run; not visited now
    Tenant.objects.filter(slug__in=wanted).update(is_active=True)


@contextmanager
def probe_off() -> Iterator[None]:
    """Every tenant counts as having work: the tasks as they were before the probe."""
    from tenants import sweeps

    original = sweeps._probe_run
    sweeps._probe_run = lambda probe: True
    try:
        yield
    finally:
        sweeps._probe_run = original


def timed(task: Callable[[], Any], *, tenants: int, rounds: int) -> Timing:
    task()  # warm: compiled code, connections
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        task()
        walls.append((time.perf_counter() - wall) * 1000 / tenants)
        cpus.append((time.process_time() - cpu) * 1000 / tenants)
    return Timing(wall_ms=statistics.median(walls), cpu_ms=statistics.median(cpus))


def shown_arguments(argv: list[str]) -> list[str]:
    """The arguments as a person would type them: without bench/all.py's --figures file."""
    shown: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--figures":
            skip = True
        elif not argument.startswith("--figures="):
            shown.append(argument)
    return shown


def benchmark(arguments: argparse.Namespace, argv: list[str]) -> Report:
    database_url = with_database(
        os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL, BENCH_DATABASE
    )
    redis_url = with_redis_db(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL, BENCH_REDIS_DB)
    if ensure_database(database_url):
        say(f"created the database {BENCH_DATABASE}")
    environment_configure(database_url=database_url, redis_url=redis_url)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from channels_delivery.tasks import messages_sweep_all, stats_fold_all
    from rules_engine.tasks import digests_flush_all, events_sweep_all
    from tenants.models import Tenant

    tenants_prepare(arguments.tenants)
    visited = Tenant.objects.filter(is_active=True).exclude(schema_name="public").count()
    if visited != arguments.tenants:
        raise BenchError(f"expected {arguments.tenants} active tenants, found {visited}")
    tasks = {
        task.name: task
        for task in (events_sweep_all, messages_sweep_all, digests_flush_all, stats_fold_all)
    }
    # The analytics fold visits suspended tenants too (a larger earlier run's surplus).
    everyone = Tenant.objects.exclude(schema_name="public").count()
    probed, unprobed = {}, {}
    for name, task in tasks.items():
        say(f"timing {name}")
        visits = everyone if task is stats_fold_all else visited
        with probe_off():
            unprobed[name] = timed(task, tenants=visits, rounds=arguments.rounds)
        probed[name] = timed(task, tenants=visits, rounds=arguments.rounds)
    return Report(
        command=shlex.join([".venv/bin/python", "bench/sweeps.py", *shown_arguments(argv)]),
        date=utc_now(),
        machine=machine_info().describe(),
        postgres=postgres_version(database_url),
        tenants=visited,
        rounds=arguments.rounds,
        probed=probed,
        unprobed=unprobed,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tenants", type=int, default=200, help="idle tenants (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each task (default 5)")
    parser.add_argument("--write-docs", action="store_true", help="rewrite its docs section")
    parser.add_argument(
        "--figures", metavar="PATH", help="also write the headline figures as JSON (bench/all.py)"
    )
    arguments = parser.parse_args(argv)
    if arguments.tenants < 2 or arguments.rounds < 1:
        parser.error("--tenants must be at least 2 and --rounds at least 1")
    os.chdir(ROOT)
    report = run_guarded(lambda: benchmark(arguments, argv))
    if isinstance(report, int):
        return report
    report_publish(
        report,
        bench="sweeps",
        title="Beat sweeps",
        figures=arguments.figures,
        write_docs=arguments.write_docs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
