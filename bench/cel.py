"""CEL benchmark: evaluations per second of rule conditions, on one core.

    .venv/bin/python bench/cel.py [--duration 3] [--cpu N] [--write-docs]

Measures ``rules_engine.cel`` in this process (no server, no database): a
typical condition evaluated against an activation built once per event (the
figure with the target, at least 100,000 evaluations/s), the same condition
written as a plain Python function (the same-run reference), and where the
rest of the time goes: building the activation (converting the event for the
library), evaluating with a plain dict (which converts on every call),
compiling, and a comprehension condition, which runs in the helper process.

The process (and the helper process it starts) is pinned to one CPU. Exit
status: 0 when every measurement ran (whether or not the target was met), 1
on an error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    ROOT,
    BenchError,
    Figure,
    load_average,
    machine_info,
    markdown_table,
    report_publish,
    run_guarded,
    say,
    utc_now,
)

# This file is named like the library it measures: keep its folder off
# sys.path, so that `import cel` (in rules_engine.cel) finds the library.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")

TARGET_PER_SECOND = 100_000
RULES_PER_EVENT = 10
TYPICAL = 'event.payload.total.amount > 10000 && subscriber.locale.startsWith("de")'
COMPREHENSION = 'event.payload.items.exists(i, i.sku == "SKU-2290" && i.qty >= 2)'
NONE = "-"
# The ingest benchmark's shipped order, about 230 bytes of JSON.
PAYLOAD_TEMPLATE = (
    '{"order_id":"ord_%08d","carrier":"UPS","tracking_number":"1Z999AA10123456784",'
    '"items":[{"sku":"SKU-1042","name":"Trail running shoes","qty":1},'
    '{"sku":"SKU-2290","name":"Merino socks","qty":2}],'
    '"total":{"amount":12999,"currency":"EUR"},"eta":"2025-06-03",'
    '"address":{"city":"Lyon","country":"FR"}}'
)


def typical_python(variables: dict[str, Any]) -> bool:
    """``TYPICAL`` as a plain Python function: the reference."""
    return bool(
        variables["event"]["payload"]["total"]["amount"] > 10000
        and variables["subscriber"]["locale"].startswith("de")
    )


def comprehension_python(variables: dict[str, Any]) -> bool:
    return any(
        item["sku"] == "SKU-2290" and item["qty"] >= 2
        for item in variables["event"]["payload"]["items"]
    )


def sample_variables(number: int) -> dict[str, Any]:
    """An order.shipped event (the ingest benchmark's payload), a subscriber, a tenant."""
    return {
        "event": {
            "id": f"0192f0c2-7d7e-7000-8000-{number:012d}",
            "type": "order.shipped",
            "actor": "shop-backend",
            "tenant_data": {"source": "bench"},
            "created_at": datetime(2025, 6, 3, 12, 30, tzinfo=UTC),
            "payload": json.loads(PAYLOAD_TEMPLATE % number),
        },
        "subscriber": {
            "id": f"user-{number}",
            "email": f"user-{number}@example.com",
            "phone": None,
            "locale": "de-DE",
            "timezone": "Europe/Berlin",
            "data": {"tags": ["vip", "beta"], "orders": 12},
        },
        "tenant": {"slug": "bench", "name": "Bench", "plan": "pro"},
    }


@dataclass(frozen=True, kw_only=True)
class Rate:
    calls: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds

    @property
    def micros(self) -> float:
        return 1e6 * self.seconds / self.calls


def measure(function: Callable[[], object], *, duration: float, batch: int = 1000) -> Rate:
    """Call ``function`` in batches until ``duration`` seconds have passed (after a warm-up)."""
    for _ in range(min(batch, 100)):
        function()
    calls = 0
    started = time.perf_counter()
    deadline = started + duration
    while True:
        for _ in range(batch):
            function()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return Rate(calls=calls, seconds=now - started)


@dataclass(frozen=True, kw_only=True)
class Report:
    rates: dict[str, Rate]
    command: str
    date: str
    machine: str
    cpu: int
    versions: dict[str, str]
    code: str
    load: tuple[float, float, float]
    duration: float

    def figures(self) -> list[Figure]:
        typical = self.rates["typical"].per_second
        return [
            Figure(
                name="CEL: a typical rule condition, evaluations/s on one core",
                value=typical,
                unit="evaluations/s",
                target=f"≥ {TARGET_PER_SECOND:,}/s",
                met=typical >= TARGET_PER_SECOND,
                reference="the same condition as a Python function, calls/s",
                reference_value=self.rates["typical_python"].per_second,
            )
        ]

    def met(self) -> bool:
        return self.rates["typical"].per_second >= TARGET_PER_SECOND

    def table(self) -> str:
        r = self.rates

        def n(rate: Rate) -> str:
            return f"{rate.per_second:,.0f}"

        def us(rate: Rate) -> str:
            return f"{rate.micros:.2f} µs"

        def share(rate: Rate, reference: Rate) -> str:
            return f"{100 * rate.per_second / reference.per_second:.0f}%"

        per_event = r["event"]  # one call: an activation and RULES_PER_EVENT evaluations
        rows = [
            [
                "Typical condition, activation built once (evaluations/s)",
                n(r["typical"]),
                f"≥ {TARGET_PER_SECOND:,}",
                "yes" if self.met() else "**no**",
                f"{n(r['typical_python'])} (plain Python function)",
                share(r["typical"], r["typical_python"]),
            ],
            [
                "Same, time per evaluation",
                us(r["typical"]),
                NONE,
                NONE,
                us(r["typical_python"]),
                NONE,
            ],
            [
                "Same condition, a plain dict per call (converted every time)",
                n(r["dict"]),
                NONE,
                NONE,
                f"{us(r['dict'])} per evaluation",
                share(r["dict"], r["typical_python"]),
            ],
            [
                "`build_activation` (converting one event, subscriber, tenant)",
                f"{n(r['activation'])}/s",
                NONE,
                NONE,
                f"{us(r['activation'])} each",
                NONE,
            ],
            [
                f"One event: activation + {RULES_PER_EVENT} typical conditions (events/s)",
                n(per_event),
                NONE,
                NONE,
                f"{us(per_event)} per event",
                NONE,
            ],
            [
                "Comprehension condition, in the helper process (evaluations/s)",
                n(r["comprehension"]),
                NONE,
                NONE,
                f"{n(r['comprehension_python'])} (plain Python function)",
                share(r["comprehension"], r["comprehension_python"]),
            ],
            [
                "`compile_expression` of the typical condition",
                f"{n(r['compile'])}/s",
                NONE,
                NONE,
                f"{us(r['compile'])} each",
                NONE,
            ],
            [
                "`program_for` cache hit",
                f"{n(r['cached'])}/s",
                NONE,
                NONE,
                f"{us(r['cached'])} each",
                NONE,
            ],
        ]
        return markdown_table(
            ["Figure", "Measured", "Target", "Met", "Reference (same run)", "Ratio"], rows
        )

    def details(self) -> str:
        return "\n".join(
            [
                f"- **Command:** `{self.command}`",
                f"- **Date:** {self.date}",
                f"- **Machine:** {self.machine}; pinned to CPU {self.cpu} (the helper process too)",
                "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
                f"- **Code:** {self.code}",
                f"- **Typical condition:** `{TYPICAL}`",
                f"- **Comprehension condition:** `{COMPREHENSION}` (the payload has 2 items); "
                "the same activation for every call, so the helper gets the variables once",
                "- **Variables:** an `order.shipped` event with the ingest benchmark's payload "
                "(about 230 bytes of JSON), a subscriber and a tenant; "
                f"{self.duration:g} s per figure after a warm-up",
                "- **Noise:** load average "
                + " / ".join(f"{value:.2f}" for value in self.load)
                + " at the start",
            ]
        )

    def markdown(self) -> str:
        return self.table() + "\n\n" + self.details()


def benchmark(arguments: argparse.Namespace, argv: list[str]) -> Report:
    import django

    django.setup()
    from rules_engine.cel import build_activation, compile_expression, program_for

    machine = machine_info().describe()  # before pinning, which it would count
    cpus = sorted(os.sched_getaffinity(0))
    cpu = arguments.cpu if arguments.cpu is not None else cpus[-1]
    if cpu not in cpus:
        raise BenchError(f"CPU {cpu} is not available (this process may use {cpus})")
    os.sched_setaffinity(0, {cpu})
    load = load_average()
    duration = arguments.duration

    variables = sample_variables(1)
    activation = build_activation(variables)
    typical = compile_expression(TYPICAL)
    comprehension = compile_expression(COMPREHENSION)
    # Check the answers before measuring them.
    if typical.matches(activation) is not typical_python(variables) or not typical_python(
        variables
    ):
        raise BenchError("the typical condition and its Python reference disagree")
    if comprehension.matches(activation) is not comprehension_python(variables):
        raise BenchError("the comprehension condition and its Python reference disagree")
    rules = [compile_expression(TYPICAL) for _ in range(RULES_PER_EVENT)]

    def one_event() -> None:
        built = build_activation(variables)
        for rule in rules:
            rule.matches(built)

    steps: list[tuple[str, Callable[[], object], int]] = [
        ("typical", lambda: typical.matches(activation), 10_000),
        ("typical_python", lambda: typical_python(variables), 10_000),
        ("dict", lambda: typical.matches(variables), 100),
        ("activation", lambda: build_activation(variables), 100),
        ("event", one_event, 100),
        ("comprehension", lambda: comprehension.matches(activation), 100),
        ("comprehension_python", lambda: comprehension_python(variables), 10_000),
        ("compile", lambda: compile_expression(TYPICAL), 100),
        ("cached", lambda: program_for(("bench", 1), TYPICAL), 10_000),
    ]
    rates = {}
    for name, function, batch in steps:
        say(f"measuring {name} for {duration:g} s")
        rates[name] = measure(function, duration=duration, batch=batch)
        say(f"  {rates[name].per_second:,.0f}/s ({rates[name].micros:.2f} µs)")
    return Report(
        rates=rates,
        command=".venv/bin/python bench/cel.py " + " ".join(shlex.quote(p) for p in argv),
        date=utc_now(),
        machine=machine,
        cpu=cpu,
        versions={
            "Python": sys.version.split()[0],
            "common-expression-language": metadata.version("common-expression-language"),
            "Django": metadata.version("django"),
        },
        code=git_state(),
        load=load,
        duration=duration,
    )


def git_state() -> str:
    """The commit, and whether the application code differs from it."""
    try:

        def git(*args: str) -> str:
            return subprocess.run(  # noqa: S603 - fixed command
                ["git", *args],  # noqa: S607
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout

        commit = git("rev-parse", "--short", "HEAD").strip()
        changed = git("status", "--porcelain").splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    app = [line for line in changed if not line[3:].startswith(("bench/", "docs/"))]
    if not app:
        return f"commit {commit}"
    return f"commit {commit} plus uncommitted changes to {len(app)} application paths"


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per figure")
    parser.add_argument("--cpu", type=int, help="CPU to pin to (default: the last one allowed)")
    parser.add_argument(
        "--write-docs", action="store_true", help="rewrite the CEL block of docs/benchmarks.md"
    )
    parser.add_argument(
        "--figures", metavar="PATH", help="also write the headline figures as JSON (bench/all.py)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    report = run_guarded(lambda: benchmark(arguments, argv))
    if isinstance(report, int):
        return report
    report_publish(
        report, bench="cel", title="CEL", figures=arguments.figures, write_docs=arguments.write_docs
    )
    say("target " + ("met" if report.met() else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
