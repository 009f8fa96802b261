"""Helpers shared by Herald's benchmarks: processes, the stack, wrk, pgbench, docs.

Nothing here imports Django: a benchmark drives Herald from the outside, as a
client would, and starts the server as production does (gunicorn, sync
workers). Every process a benchmark starts is stopped when it ends, also on
Ctrl-C, SIGTERM or an error (see ``Gunicorn`` and ``signals_as_interrupt``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from glob import glob
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "manage.py"
DOCS = ROOT / "docs" / "benchmarks.md"

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/herald"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

WRK_INSTALL_HINT = "apt-get install -y wrk"


class BenchError(RuntimeError):
    """A problem that stops the benchmark; printed without a traceback."""


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- Processes -----------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` runs."""


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP) into an exception while the benchmark runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(
    command: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its output; kill it on timeout."""
    try:
        result = subprocess.run(  # noqa: S603 - our own fixed commands
            list(command),
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"`{_shown(command)}` did not finish within {timeout:g} s") from error
    if check and result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-25:])
        raise BenchError(f"`{_shown(command)}` failed with status {result.returncode}:\n{tail}")
    return result


def _shown(command: Sequence[str]) -> str:
    # `manage.py shell -c <program>` would print the whole program.
    return " ".join(part if len(part) < 80 else part[:60] + "…" for part in command)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_executable(name: str, *, extra_globs: Sequence[str] = ()) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for pattern in extra_globs:
        matches = sorted(glob(pattern), reverse=True)  # newest version first
        if matches:
            return matches[0]
    return None


def find_pgbench() -> str | None:
    return find_executable("pgbench", extra_globs=["/usr/lib/postgresql/*/bin/pgbench"])


def tool_version(command: Sequence[str]) -> str:
    try:
        result = run(command, timeout=10, check=False)
    except (BenchError, OSError):
        return "unknown"
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


class Gunicorn:
    """gunicorn serving Herald's WSGI app, in its own process group.

    Use it as a context manager: leaving the block (normally, on an error or on
    Ctrl-C) sends SIGTERM to the whole group, and SIGKILL to whatever is left
    after ``grace`` seconds, so no worker outlives the benchmark.
    """

    def __init__(
        self,
        *,
        workers: int,
        env: dict[str, str],
        worker_class: str = "sync",
        threads: int = 1,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        grace: float = 10.0,
        extra_args: Sequence[str] = (),
        app: str = "herald.wsgi:application",
    ) -> None:
        self.app = app
        self.workers = workers
        self.worker_class = worker_class
        self.threads = threads
        self.env = env
        self.host = host
        self.port = port or free_port(host)
        self.grace = grace
        self.extra_args = list(extra_args)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"herald-bench-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "gunicorn", self.app,
            "--workers", str(self.workers), "--worker-class", self.worker_class,
            "--threads", str(self.threads),
            "--bind", f"{self.host}:{self.port}", "--log-level", "warning",
            *self.extra_args,
        ]  # fmt: skip

    def __enter__(self) -> Gunicorn:
        say(f"starting gunicorn: {' '.join(self.command[1:])}")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own fixed command
                self.command,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the gunicorn arbiter)."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            return [int(pid) for pid in children.read_text().split()]
        return []

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_healthy(self, *, timeout: float = 60.0) -> None:
        """Wait until /healthz answers 200 (so Django and the database are up)."""
        if self.process is None:
            raise BenchError("gunicorn was not started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"gunicorn exited with status {self.process.returncode} before it was "
                    f"healthy:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, urllib.error.URLError):
                status, _, _ = http_request(f"{self.url}/healthz", timeout=2)
                if status == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"gunicorn was not healthy within {timeout:g} s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"gunicorn died during the run:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            say("gunicorn did not stop in time; killing it")
        # Workers are in the arbiter's group even if the arbiter already exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        say("gunicorn stopped")


def http_request(
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with the standard library: (status, headers, body).

    A 4xx or 5xx response is returned, not raised.
    """
    if not url.startswith(("http://", "https://")):
        raise BenchError(f"not an HTTP URL: {url}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), dict(error.headers.items()), error.read()


# --- Data stores -----------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    """``url`` (a PostgreSQL URL) pointing at database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def herald_environment(
    *, database_url: str, redis_url: str, settings_module: str = "herald.settings"
) -> dict[str, str]:
    """This process's environment with what every benchmark runs Herald with: its
    own database and Redis (the broker too), development mode without DEBUG
    (Django's query log would cost time on every query), warnings only, no Sentry."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        HERALD_ENV="development",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE=settings_module,
    )
    env.pop("SENTRY_DSN", None)
    return env


def environment_configure(*, database_url: str, redis_url: str) -> dict[str, str]:
    """``herald_environment`` for Herald run in this process (Django reads it when
    it starts); returned too, for the child processes it starts (migrate_schemas)."""
    env = herald_environment(database_url=database_url, redis_url=redis_url)
    os.environ.clear()
    os.environ.update(env)
    return env


def libpq_url(url: str) -> str:
    """A URL libpq and psycopg accept (Django's ``postgres://`` works too, but be explicit)."""
    for scheme in ("postgres://", "pgsql://", "postgis://"):
        if url.startswith(scheme):
            return "postgresql://" + url[len(scheme) :]
    return url


def ensure_database(url: str) -> bool:
    """Create the database ``url`` names when it is missing; True when it was created."""
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise BenchError(f"refusing the database name {name!r}")
    admin = libpq_url(with_database(url, "postgres"))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                return False
            conn.execute(f'CREATE DATABASE "{name}"')
            return True
    except psycopg.OperationalError as error:
        raise BenchError(f"PostgreSQL at {urlsplit(url).netloc} is unreachable: {error}") from None


def sql(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement in autocommit mode; the rows it returned (if any)."""
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(statement, list(params))
        return cursor.fetchall() if cursor.description else []


def postgres_version(url: str) -> str:
    try:
        return str(sql(url, "SHOW server_version")[0][0])
    except Exception as error:  # only a label in the report
        return f"unknown ({type(error).__name__})"


# --- The machine -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Machine:
    cpus: int
    cpu_model: str
    ram_gib: float
    kernel: str

    def describe(self) -> str:
        return (
            f"{self.cpus} CPUs ({self.cpu_model}), {self.ram_gib:.1f} GiB RAM, Linux {self.kernel}"
        )


def machine_info() -> Machine:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
                break
    return Machine(
        cpus=len(os.sched_getaffinity(0)),
        cpu_model=model,
        ram_gib=ram_kib / 1024 / 1024,
        kernel=platform.release(),
    )


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # without guest time, which is already in user
    return total - idle, total


def cpu_busy_percent(seconds: float) -> float:
    """How busy all CPUs were, in percent, over the next ``seconds``."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return 100.0 * (busy1 - busy0) / max(1, total1 - total0)


@dataclass(kw_only=True)
class CpuMeter:
    """CPU busy percent between ``start()`` and ``stop()`` (the whole machine)."""

    busy: int = 0
    total: int = 0
    percent: float = 0.0

    def start(self) -> None:
        self.busy, self.total = _cpu_times()

    def stop(self) -> float:
        busy, total = _cpu_times()
        self.percent = 100.0 * (busy - self.busy) / max(1, total - self.total)
        return self.percent


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_ticks() -> dict[int, tuple[str, int, int]]:
    """Every process: pid -> (command name, process group, CPU ticks used so far)."""
    found: dict[int, tuple[str, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # it exited meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        rest = text[text.rindex(")") + 2 :].split()
        # After the name: state ppid pgrp session tty tpgid flags minflt cminflt
        # majflt cmajflt utime stime …
        found[int(entry.name)] = (name, int(rest[2]), int(rest[11]) + int(rest[12]))
    return found


def process_command_line(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(kw_only=True)
class CpuBreakdown:
    """Where the machine's CPU went during one measured run, in CPU-seconds."""

    wall_s: float
    cpus: int
    seconds: dict[str, float]

    def percent(self, label: str) -> float:
        """``label``'s share of the machine's capacity (cpus x wall time)."""
        return 100.0 * self.seconds.get(label, 0.0) / max(1e-9, self.wall_s * self.cpus)

    def describe(self, labels: Sequence[str]) -> str:
        return ", ".join(f"{label} {self.percent(label):.0f}%" for label in labels)


class CpuAccounting:
    """Split the machine's CPU time over a block by process kind.

    ``classify(pid, name, process_group)`` names the kind of a process alive at
    the end of the block ("" for none). Children that the block started and
    waited for (the load generator) are counted as ``loadgen``, and everything
    else busy on the machine (other people's test suites, processes that ended
    within the block) as ``other``, so ``other`` measures the noise.
    """

    def __init__(self, classify: Callable[[int, str, int], str]) -> None:
        self.classify = classify
        self.result: CpuBreakdown | None = None

    def __enter__(self) -> CpuAccounting:
        self._start = time.monotonic()
        self._machine = _cpu_times()
        self._children = _children_cpu_seconds()
        self._processes = _process_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        processes = _process_ticks()
        children = _children_cpu_seconds()
        machine = _cpu_times()
        wall = time.monotonic() - self._start
        seconds: dict[str, float] = {}
        for pid, (name, group, ticks) in processes.items():
            before = self._processes.get(pid)
            # A process started during the block (a new database connection,
            # say) used all its CPU time within it.
            used = ticks if before is None or before[0] != name else ticks - before[2]
            label = self.classify(pid, name, group)
            seconds[label] = seconds.get(label, 0.0) + used / CLOCK_TICKS
        seconds.pop("", None)
        seconds["loadgen"] = seconds.get("loadgen", 0.0) + children - self._children
        busy = (machine[0] - self._machine[0]) / CLOCK_TICKS
        total = (machine[1] - self._machine[1]) / CLOCK_TICKS
        seconds["other"] = max(0.0, busy - sum(seconds.values()))
        seconds["idle"] = max(0.0, total - busy)
        self.result = CpuBreakdown(wall_s=wall, cpus=os.cpu_count() or 1, seconds=seconds)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- wrk -------------------------------------------------------------------------------

# Appended to every wrk script: counts responses whose status is not the
# expected one (wrk's own "Non-2xx or 3xx" count misses 3xx and 1xx), and
# prints one JSON line with exact percentiles, parsed by ``wrk_run``.
WRK_REPORT_LUA = r"""
local __threads = {}

function setup(thread)
  thread:set("thread_index", #__threads + 1)
  table.insert(__threads, thread)
end

unexpected = 0
first_unexpected = ""

function response(status, headers, body)
  if status ~= expected_status then
    unexpected = unexpected + 1
    if first_unexpected == "" then
      first_unexpected = status .. " " .. string.sub(body or "", 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local bad, sample = 0, ""
  for _, thread in ipairs(__threads) do
    bad = bad + thread:get("unexpected")
    local s = thread:get("first_unexpected")
    if sample == "" and s ~= nil then sample = s end
  end
  local e = summary.errors
  local p = {}
  for _, q in ipairs({50, 75, 90, 99, 99.9}) do
    table.insert(p, string.format('"%s":%d', tostring(q), latency:percentile(q)))
  end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"unexpected":%d,"mean_us":%f,"max_us":%d,' ..
    '"percentiles_us":{%s},"sample":"%s"}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, bad, latency.mean, latency.max, table.concat(p, ","),
    string.gsub(string.gsub(sample, '[%c"\\]', " "), "%s+", " ")))
end
"""


@dataclass(frozen=True, kw_only=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes_read: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx_3xx: int
    unexpected_status: int
    unexpected_sample: str
    mean_ms: float
    max_ms: float
    percentiles_ms: dict[str, float]
    raw_output: str = field(repr=False)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    def p(self, quantile: str) -> float:
        return self.percentiles_ms[quantile]


def wrk_run(
    *,
    url: str,
    lua: str,
    duration: float,
    connections: int,
    threads: int,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run wrk with ``lua`` (which must set ``expected_status``) plus the report script."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError(f"wrk is not installed: {WRK_INSTALL_HINT}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="herald-bench-") as script:
        script.write(lua + "\n" + WRK_REPORT_LUA)
        script.flush()
        command = [
            wrk, "--latency", "--threads", str(threads), "--connections", str(connections),
            "--duration", f"{max(1, round(duration))}s", "--timeout", f"{timeout_s:g}s",
            "--script", script.name, url,
        ]  # fmt: skip
        result = run(command, timeout=duration + timeout_s + 60)
    return parse_wrk_output(result.stdout)


def parse_wrk_output(output: str) -> WrkResult:
    match = re.search(r"^WRK_JSON (.*)$", output, re.MULTILINE)
    if match is None:
        raise BenchError(f"wrk printed no report:\n{output}")
    data = json.loads(match.group(1))
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        bytes_read=int(data["bytes"]),
        connect_errors=int(data["connect"]),
        read_errors=int(data["read"]),
        write_errors=int(data["write"]),
        timeouts=int(data["timeout"]),
        non_2xx_3xx=int(data["status"]),
        unexpected_status=int(data["unexpected"]),
        unexpected_sample=str(data["sample"]).strip(),
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        percentiles_ms={q: us / 1000 for q, us in data["percentiles_us"].items()},
        raw_output=output,
    )


# --- pgbench ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PgbenchResult:
    tps: float
    latency_ms: float
    transactions: int
    command: str


def pgbench_run(
    *,
    url: str,
    script: str,
    duration: float,
    connections: int,
    threads: int,
) -> PgbenchResult:
    pgbench = find_pgbench()
    if pgbench is None:
        raise BenchError("pgbench is not installed (Debian: apt-get install -y postgresql-client)")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="herald-bench-") as file:
        file.write(script)
        file.flush()
        command = [
            pgbench, "-n", "-c", str(connections), "-j", str(min(threads, connections)),
            "-T", str(max(1, round(duration))), "-f", file.name, libpq_url(url),
        ]  # fmt: skip
        result = run(command, timeout=duration + 120)
    output = result.stdout
    tps = re.search(r"^tps = ([\d.]+)", output, re.MULTILINE)
    latency = re.search(r"^latency average = ([\d.]+) ms", output, re.MULTILINE)
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    if tps is None or latency is None or processed is None:
        raise BenchError(f"could not read pgbench's output:\n{output}\n{result.stderr}")
    if failed is not None and int(failed.group(1)) > 0:
        raise BenchError(f"pgbench had failed transactions:\n{output}")
    shown = " ".join(["pgbench", *command[1:-1], "<database>"]).replace(file.name, "<script>")
    return PgbenchResult(
        tps=float(tps.group(1)),
        latency_ms=float(latency.group(1)),
        transactions=int(processed.group(1)),
        command=shown,
    )


# --- docs/benchmarks.md ------------------------------------------------------------------

DOCS_HEADER = """# Benchmarks

Measured figures for Herald, each with the command that produced it, the
machine, and a same-run reference so that a figure can be judged against what
the machine itself can do. Each benchmark has its own section; a section's
block between its `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`
markers is rewritten by the benchmark's `--write-docs`, and the notes around
the block are written by hand.
"""


def docs_write_section(*, name: str, title: str, generated: str, path: Path = DOCS) -> None:
    """Replace the generated block of section ``name``, creating file or section as needed."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{generated.strip()}\n{end}"
    text = path.read_text() if path.exists() else DOCS_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- Profiles ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProfileLine:
    function: str
    inclusive: float
    """Share of the samples with this function anywhere on the stack."""
    own: float
    """Share of the samples with this function at the top of the stack."""


def _frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` without the line number and the long path."""
    match = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", frame.strip())
    if match is None:
        return frame.strip()
    function, path = match.groups()
    for marker in ("site-packages/", "lib/python3", "/work/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{function} ({path})"


def profile_summary(paths: Sequence[Path], *, top: int = 30) -> tuple[int, list[ProfileLine]]:
    """Read py-spy's raw (collapsed) stacks; the total samples and the busiest functions."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_frame_name(frame) for frame in stack.split(";")]
            for name in set(frames):
                inclusive[name] = inclusive.get(name, 0) + count
            own[frames[-1]] = own.get(frames[-1], 0) + count
    ranked = sorted(inclusive, key=lambda name: -inclusive[name])[:top]
    return total, [
        ProfileLine(
            function=name,
            inclusive=inclusive[name] / max(1, total),
            own=own.get(name, 0) / max(1, total),
        )
        for name in ranked
    ]


def profile_categories(
    paths: Sequence[Path], categories: Sequence[tuple[str, Sequence[str]]]
) -> tuple[int, dict[str, int]]:
    """Samples per category: the first category any of whose markers (substrings
    of a frame) is on a sample's stack takes the sample; the rest is "other"."""
    counts: dict[str, int] = {label: 0 for label, _ in categories}
    counts["other"] = 0
    total = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            for label, markers in categories:
                if any(marker in stack for marker in markers):
                    counts[label] += count
                    break
            else:
                counts["other"] += count
    return total, counts


# --- Supervised processes and their memory ------------------------------------------------


def wait_for_quiet(max_wait: float, *, busy_below: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine is less than ``busy_below``% busy;
    returns the last busy percentage seen."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy_percent(2.0)
    while busy >= busy_below and time.monotonic() < deadline:
        say(f"machine {busy:.0f}% busy (others' work); waiting for it to calm down")
        time.sleep(8.0)
        busy = cpu_busy_percent(2.0)
    return busy


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


def process_children(pid: int) -> list[int]:
    """The direct children of ``pid`` (a prefork pool's processes, gunicorn's workers)."""
    with contextlib.suppress(OSError):
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    return []


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set size (VmHWM) in KiB; None once it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


class Supervised:
    """A long-running child (a Celery worker, a sink) in its own process group,
    its output in ``log_path``. As a context manager it is stopped however the
    block ends: SIGTERM to the group, SIGKILL to what is left after ``grace``."""

    def __init__(
        self,
        *,
        name: str,
        command: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        grace: float = 15.0,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = env
        self.log_path = log_path
        self.grace = grace
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Supervised:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        say(f"starting {self.name}: {' '.join(self.command[1:])}")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own fixed command
                self.command,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_for_log(self, marker: str, *, timeout: float = 60.0) -> None:
        """Wait until ``marker`` appears in the output (a worker's "ready.")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                if marker in self.log_path.read_text(errors="replace"):
                    return
            time.sleep(0.2)
        raise BenchError(
            f"{self.name} did not log {marker!r} within {timeout:g} s:\n{self.log_tail()}"
        )

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            status = self.process.returncode if self.process else None
            raise BenchError(f"{self.name} is not running (status {status}):\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop in time; killing it")
        # Pool children are in the group even if the leader already exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        say(f"{self.name} stopped")


# --- Tenants set up for a run ---------------------------------------------------------------

# Run by `manage.py shell -c` after a first line that sets ``options``, a dict
# literal (see ``tenants_setup``): Herald's own services make the tenants, as an operator's
# commands would, while the benchmark itself never imports Django.
TENANTS_SETUP_PROGRAM = """
import json
from django.core.management import call_command
from django.db import connection
from django_tenants.utils import schema_context
from channels_delivery.models import DeliveryAttempt, Message, WebhookEndpoint
from channels_delivery.services.webhooks import endpoint_create, endpoint_secret
from rules_engine.event_types import event_types_forget
from rules_engine.models import Event, Rule, Subscriber, Template
from rules_engine.services.event_types import event_type_save
from rules_engine.services.rules import rule_create
from rules_engine.services.templates import template_create
from tenants.models import ApiKey, ApiScope, Plan, Tenant
from tenants.services import api_key_create, api_key_revoke, public_tenant_ensure, tenant_create

if options["migrate"]:
    call_command("migrate_schemas", "--noinput", verbosity=0)
public_tenant_ensure(domains=options["domains"])
plan = None
if options["plan"] is not None:
    plan, _ = Plan.objects.update_or_create(
        name=options["plan"],
        defaults={
            "events_per_month": 2_000_000_000,
            "api_requests_per_second": 1_000_000,
            "max_subscribers": 2_000_000_000,
            "retention_days": 1,
        },
    )
ready = []
for wanted in options["tenants"]:
    tenant = Tenant.objects.filter(slug=wanted["slug"]).first()
    if tenant is None:
        tenant = tenant_create(
            slug=wanted["slug"], name=wanted["name"], admin_email=wanted["admin_email"], plan=plan
        ).tenant
    if plan is not None:
        tenant.plan = plan
    tenant.is_active = True
    tenant.strict_event_types = False
    tenant.save(update_fields=["plan", "is_active", "strict_event_types"])
    for stale in ApiKey.objects.filter(tenant=tenant, name=options["key_name"], revoked_at=None):
        api_key_revoke(api_key=stale)
    token = api_key_create(
        tenant=tenant, name=options["key_name"], scopes=[ApiScope.EVENTS_WRITE]
    ).token
    with schema_context(tenant.schema_name):
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {Event._meta.db_table} CASCADE")
        event_type_save(key=options["event_type"], **options["event_type_fields"])
        event_types_forget(schema_name=tenant.schema_name)
        if not Template.objects.filter(key=options["template"]).exists():
            template_create(
                key=options["template"],
                channel="webhook",
                variants={"en": {"body": options["body"]}},
                fallback_locale="en",
                created_by=options["created_by"],
            )
        if not Rule.objects.filter(name=options["rule"]).exists():
            rule_create(
                name=options["rule"],
                event_type_key=options["event_type"],
                actions=[{"channel": "webhook", "template": options["template"]}],
                recipients={"kind": "event"},
                created_by=options["created_by"],
            )
        subscribers = [f"user-{n}" for n in range(options["subscribers"])]
        known = set(
            Subscriber.objects.filter(external_id__in=subscribers).values_list(
                "external_id", flat=True
            )
        )
        Subscriber.objects.bulk_create(
            [Subscriber(external_id=x, name=f"User {x[5:]}") for x in subscribers if x not in known]
        )
        # The sink's port changes every run: fresh endpoints, nothing left from before.
        WebhookEndpoint.objects.all().delete()
        secrets = {}
        for path in wanted["endpoint_paths"]:
            endpoint = endpoint_create(
                url=options["sink_url"] + path, event_types=[options["event_type"]]
            )
            secrets[path] = endpoint_secret(endpoint=endpoint)
    ready.append(
        {"slug": tenant.slug, "schema": tenant.schema_name, "token": token, "secrets": secrets}
    )
print(options["mark"] + json.dumps({
    "tenants": ready,
    "events": Event._meta.db_table,
    "messages": Message._meta.db_table,
    "attempts": DeliveryAttempt._meta.db_table,
    "endpoints": WebhookEndpoint._meta.db_table,
}))
"""
TENANTS_SETUP_MARK = "TENANTS_SETUP "


@dataclass(frozen=True, kw_only=True)
class TenantWanted:
    """A tenant ``tenants_setup`` makes (once; later runs find it by its slug),
    with a webhook endpoint at the sink's URL plus each of ``endpoint_paths``."""

    slug: str
    name: str
    admin_email: str
    endpoint_paths: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TenantReady:
    slug: str
    schema: str
    token: str
    """A fresh ``events:write`` key."""
    secrets: dict[str, str]
    """Each endpoint's signing secret, by its path."""


@dataclass(frozen=True, kw_only=True)
class TenantsReady:
    """The tenants, and the names of the tables every tenant schema has."""

    tenants: tuple[TenantReady, ...]
    events: str
    messages: str
    attempts: str
    endpoints: str


def tenants_setup(
    env: dict[str, str],
    *,
    tenants: Sequence[TenantWanted],
    sink_url: str,
    event_type: str,
    event_type_fields: dict[str, str],
    template: str,
    body: str,
    rule: str,
    key_name: str,
    created_by: str,
    plan: str | None = None,
    subscribers: int = 0,
    domains: Sequence[str] = ("localhost",),
    migrate: bool = False,
    timeout: float,
) -> TenantsReady:
    """In a child Django process with ``env``: the tenants with their flow, ready to load.

    With ``migrate``, ``migrate_schemas`` runs first. Each tenant is put on
    ``plan`` (made or updated with limits no run reaches, so that the limiter
    runs but never refuses; None leaves the default plan), gets a fresh key
    named ``key_name`` (its earlier ones are revoked), loses its events and
    their messages, and has the event type (saved with ``event_type_fields``),
    a webhook template rendering ``body``, a rule sending each event to its
    recipients on the webhook channel, ``subscribers`` subscribers ``user-0``
    … and new webhook endpoints in place of its old ones.
    """
    options = {
        "mark": TENANTS_SETUP_MARK,
        "tenants": [asdict(wanted) for wanted in tenants],
        "sink_url": sink_url,
        "event_type": event_type,
        "event_type_fields": event_type_fields,
        "template": template,
        "body": body,
        "rule": rule,
        "key_name": key_name,
        "created_by": created_by,
        "plan": plan,
        "subscribers": subscribers,
        "domains": list(domains),
        "migrate": migrate,
    }
    program = f"options = {options!r}\n{TENANTS_SETUP_PROGRAM}"
    result = run([sys.executable, str(MANAGE), "shell", "-c", program], env=env, timeout=timeout)
    for line in result.stdout.splitlines():
        if line.startswith(TENANTS_SETUP_MARK):
            data = json.loads(line.removeprefix(TENANTS_SETUP_MARK))
            return TenantsReady(
                tenants=tuple(TenantReady(**found) for found in data.pop("tenants")), **data
            )
    raise BenchError(f"the setup printed no result:\n{result.stdout}\n{result.stderr}")


# --- The summary of every benchmark (bench/all.py) ------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Figure:
    """One headline figure of a benchmark, with its target and the same-run
    reference it is judged against (ratio = value / reference)."""

    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    reference: str = ""
    reference_value: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.reference_value:
            return self.value / self.reference_value
        return None


def figures_write(
    path: str | Path, *, bench: str, command: str, date: str, machine: str, figures: list[Figure]
) -> None:
    """What ``--figures PATH`` asks of a benchmark: its headline figures as JSON."""
    Path(path).write_text(
        json.dumps(
            {
                "bench": bench,
                "command": command,
                "date": date,
                "machine": machine,
                "figures": [{**figure.__dict__, "ratio": figure.ratio} for figure in figures],
            },
            indent=2,
        )
    )


class BenchReport(Protocol):
    """What a benchmark's report gives ``report_publish``."""

    @property
    def command(self) -> str: ...

    @property
    def date(self) -> str: ...

    @property
    def machine(self) -> str: ...

    def markdown(self) -> str: ...

    def figures(self) -> list[Figure]: ...


Report = TypeVar("Report")


def run_guarded(
    benchmark: Callable[[], Report], *, interrupted: str = "interrupted"
) -> Report | int:
    """Runs ``benchmark`` with SIGTERM and SIGHUP as interrupts. Its result, or
    the exit status of a failed run: 1 for a BenchError (printed without a
    traceback), 130 when interrupted (``interrupted`` is what is said then)."""
    try:
        with signals_as_interrupt():
            return benchmark()
    except BenchError as error:
        say(f"error: {error}")
        return 1
    except KeyboardInterrupt:  # Interrupted, from a signal, is one too
        say(interrupted)
        return 130


def report_publish(
    report: BenchReport,
    *,
    bench: str,
    title: str,
    figures: str | None,
    write_docs: bool,
) -> None:
    """Prints the report; writes its figures for bench/all.py (``--figures PATH``)
    and, with ``write_docs``, its block of docs/benchmarks.md."""
    print(report.markdown())
    if figures:
        figures_write(
            figures,
            bench=bench,
            command=report.command,
            date=report.date,
            machine=report.machine,
            figures=report.figures(),
        )
    if write_docs:
        docs_write_section(name=bench, title=title, generated=report.markdown())
        say(f"wrote the {title} block of docs/benchmarks.md")
