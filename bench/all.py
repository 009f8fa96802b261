"""Every benchmark in one run, and the summary table of docs/benchmarks.md.

    make bench                      # .venv/bin/python bench/all.py
    .venv/bin/python bench/all.py [--only ingest,cel] [--quick]

Runs ingest, CEL, fan-out, delivery, dashboard and beat sweeps one after
another (each in its own process, each with its own same-run references:
pgbench INSERTs, a minimal Django view, a Python function, a COPY, the login
page, the sweeps without their probe), lets each
rewrite its own section of docs/benchmarks.md, and writes the summary at the
top: every headline figure with its target, reference, ratio, machine, date
and the command that produced it. Each benchmark's figures are kept in
docs/benchmark-figures/NAME.json, so ``--only`` reruns some and the summary
still shows the others' figures from their last run (with that run's date).
``--quick`` runs smaller sizes, to check the machinery; its figures are marked
as such, are no verdict, and are not kept.

Exit status: 0 when every benchmark ran (targets met or not), 1 when one
failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOCS, DOCS_HEADER, ROOT, find_pgbench, markdown_table, say, utc_now

BENCH = Path(__file__).resolve().parent
KEPT = ROOT / "docs" / "benchmark-figures"


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


BENCHES = (
    Bench("ingest", "ingest.py", quick=("--duration", "5", "--warmup", "2")),
    Bench("cel", "cel.py", quick=("--duration", "1")),
    Bench("fanout", "fanout.py", quick=("--subscribers", "5000", "--runs", "1")),
    Bench(
        "delivery",
        "delivery.py",
        quick=("--events", "1000", "--latency-duration", "5"),
    ),
    Bench("dashboard", "dashboard.py", quick=("--messages", "20000", "--requests", "5")),
    Bench("sweeps", "sweeps.py", quick=("--tenants", "10", "--rounds", "2")),
)
SUMMARY_BEGIN, SUMMARY_END = "<!-- bench:summary:begin -->", "<!-- bench:summary:end -->"


def run_one(bench: Bench, *, quick: bool, folder: Path) -> dict[str, object] | None:
    figures = folder / f"{bench.name}.json"
    command = [
        sys.executable,
        str(BENCH / bench.script),
        *(bench.quick if quick else bench.full),
        "--figures",
        str(figures),
    ]
    if not quick:
        command.append("--write-docs")
    say(f"=== {bench.name}: {' '.join(command[1:])}")
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, check=False)  # noqa: S603 - our own scripts
    say(f"=== {bench.name}: exit {result.returncode} after {time.monotonic() - started:.0f} s")
    if result.returncode != 0 or not figures.exists():
        return None
    loaded: dict[str, object] = json.loads(figures.read_text())
    if not quick:
        KEPT.mkdir(parents=True, exist_ok=True)
        (KEPT / f"{bench.name}.json").write_text(json.dumps(loaded, indent=2) + "\n")
    return loaded


def kept(name: str) -> dict[str, object] | None:
    """The figures of ``name``'s last full run, if one was kept."""
    path = KEPT / f"{name}.json"
    if not path.exists():
        return None
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def shown_command(command: str) -> str:
    """The command as a person would type it: without the temporary --figures file."""
    return re.sub(r" --figures \S+", "", command)


def number(value: float, unit: str) -> str:
    if unit in ("ms", "s"):
        return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{value:,.0f} {unit}"


def summary(results: dict[str, dict[str, object] | None], *, quick: bool) -> str:
    rows = []
    machines = set()
    for name, result in results.items():
        if result is None:
            rows.append([name, "**the benchmark failed**", "", "", "", "", "", ""])
            continue
        machines.add(str(result["machine"]))
        for figure in result["figures"]:  # type: ignore[attr-defined]
            met = figure["met"]
            ratio = figure["ratio"]
            reference = figure["reference"]
            if figure["reference_value"] is not None:
                reference = f"{reference}: {figure['reference_value']:,.1f}"
            rows.append(
                [
                    name,
                    figure["name"],
                    number(figure["value"], figure["unit"]),
                    figure["target"] or "",
                    "" if met is None else ("met" if met else "**missed**"),
                    reference or "",
                    f"{ratio:.2f}" if ratio is not None else "",
                    f"{result['date']}, `{shown_command(str(result['command']))}`",
                ]
            )
    header = [
        "Benchmark",
        "Figure",
        "Value",
        "Target",
        "",
        "Same-run reference",
        "Ratio",
        "Date, command",
    ]
    kind = "--quick: sizes too small for a verdict" if quick else "full run"
    machine = "; ".join(sorted(machines)) or "unknown"
    lines = [
        f"Written by `make bench` ({kind}) on {utc_now()}; machine: {machine}. Ratio is the "
        "figure over its reference; each benchmark's own section below has the details.",
        "",
        markdown_table(header, rows),
    ]
    return "\n".join(lines)


def write_summary(text: str) -> None:
    block = f"{SUMMARY_BEGIN}\n{text}\n{SUMMARY_END}"
    docs = DOCS.read_text() if DOCS.exists() else DOCS_HEADER
    if SUMMARY_BEGIN in docs:
        head, rest = docs.split(SUMMARY_BEGIN, 1)
        _, tail = rest.split(SUMMARY_END, 1)
        docs = head + block + tail
    else:
        first = docs.find("\n## ")
        section = f"\n## Summary\n\n{block}\n"
        docs = docs + section if first == -1 else docs[:first] + "\n" + section + docs[first:]
    DOCS.write_text(docs)


def tools_ensure() -> list[str]:
    """wrk and pgbench, installed from Debian's packages when missing and allowed
    (as `make test` installs Chromium); the problems of those that are not."""
    import shutil

    from herald.devstack import apt_ensure

    problems = []
    for binary, package in (("wrk", "wrk"), ("pgbench", "postgresql-client")):
        found = (
            shutil.which(binary) or find_pgbench() if binary == "pgbench" else shutil.which(binary)
        )
        if found:
            continue

        def installed(name: str = binary) -> bool:
            return shutil.which(name) is not None

        problem = apt_ensure(
            package=package,
            display=binary,
            purpose="the benchmarks",
            installed=installed,
            binary=binary,
        )
        if problem:
            problems.append(problem)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", help="comma-separated: " + ",".join(b.name for b in BENCHES))
    parser.add_argument("--quick", action="store_true", help="small sizes; no verdict, no docs")
    arguments = parser.parse_args(argv)
    chosen = [b for b in BENCHES if not arguments.only or b.name in arguments.only.split(",")]
    for problem in tools_ensure():
        say(problem)
    results: dict[str, dict[str, object] | None] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="herald-bench-") as folder:
            for bench in chosen:
                results[bench.name] = run_one(bench, quick=arguments.quick, folder=Path(folder))
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    if not arguments.quick:  # the benchmarks not run now: their last full run's figures
        for bench in BENCHES:
            if bench.name not in results and (earlier := kept(bench.name)) is not None:
                results[bench.name] = earlier
        results = {b.name: results[b.name] for b in BENCHES if b.name in results}
    text = summary(results, quick=arguments.quick)
    print(text)
    if not arguments.quick:
        write_summary(text)
        say(f"wrote the summary of {DOCS.relative_to(ROOT)}")
    return 0 if all(results.get(bench.name) is not None for bench in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
