"""The README's run command, end to end, and the embedded data stores.

`python -m herald.devstack run` (what `make run` calls) is started as a real
process against its own database; the test reads the dashboards and the API
it serves, then sends Ctrl-C and checks no process is left behind.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psutil
import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection

from herald import devstack

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0
STOP_TIMEOUT = 40.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_url(database: str) -> str:
    db = connection.settings_dict
    host = quote(db["HOST"] or "127.0.0.1", safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    return f"postgresql://{quote(db['USER'], safe='')}{password}@{host}{port}/{database}"


@pytest.fixture
def scratch_database(django_db_setup: None) -> Iterator[str]:
    name = f"herald_devstack_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def get(url: str, host: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.django_db  # for the test server's address; the stack gets its own database
def test_run_serves_dashboards_and_api_and_ctrl_c_stops_everything(
    scratch_database: str, tmp_path: Path
) -> None:
    port = free_port()
    redis_parts = urlsplit(settings.REDIS_URL)
    env = {
        **os.environ,
        "DATABASE_URL": server_url(scratch_database).replace("postgresql://", "postgres://"),
        # Its own Redis database: its worker must not take the test worker's tasks.
        "REDIS_URL": f"{redis_parts.scheme}://{redis_parts.netloc}/14",
        "HERALD_DATA_DIR": str(tmp_path),
        "HERALD_ENV": "development",
    }
    env.pop("CELERY_BROKER_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "herald.devstack", "run", "--port", str(port), "--concurrency", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    output: list[str] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            output.append(line)
            if "Herald is running" in line or process.poll() is not None:
                break
        assert any("Herald is running" in line for line in output), "".join(output)
        descendants = psutil.Process(process.pid).children(recursive=True)
        assert len(descendants) >= 3  # web, worker (and its pool), beat

        base = f"http://127.0.0.1:{port}"
        status, body = get(f"{base}/admin/login/", f"demo.localhost:{port}")
        assert status == 200
        assert "Demo" in body
        status, body = get(f"{base}/admin/login/", f"localhost:{port}")
        assert status == 200
        assert "Herald platform" in body

        demo = json.loads((tmp_path / "demo.json").read_text())
        assert stat.S_IMODE((tmp_path / "demo.json").stat().st_mode) == 0o600
        status, body = get(
            f"{base}/api/v1/me", f"localhost:{port}", {"Authorization": f"Bearer {demo['api_key']}"}
        )
        assert status == 200
        assert json.loads(body)["tenant"]["slug"] == "demo"
    finally:
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("devstack did not stop after Ctrl-C:\n" + "".join(output))
    everything = "".join(output) + process.stdout.read()
    assert process.returncode == 0, everything
    for expected in (
        f"http://demo.localhost:{port}/admin/",
        f"http://localhost:{port}/admin/",
        demo["admin_password"],
        demo["staff_password"],
        f"curl -s http://localhost:{port}/api/v1/me -H 'Authorization: Bearer {demo['api_key']}'",
    ):
        assert expected in everything
    alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left behind: {alive}"


def test_embedded_postgres_and_redis_serve_when_nothing_else_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_port_answers = devstack.port_answers

    def nothing_on_default_ports(host: str, port: int, **kwargs: Any) -> bool:
        if (host, port) in {("127.0.0.1", 5432), ("127.0.0.1", 6379)}:
            return False
        return real_port_answers(host, port, **kwargs)

    monkeypatch.setattr(devstack, "port_answers", nothing_on_default_ports)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    data_dir = Path(tempfile.mkdtemp(prefix="herald-embedded-"))
    monkeypatch.setenv("HERALD_DATA_DIR", str(data_dir))

    with devstack.services(database="herald", redis_db=0) as found:
        assert found.database_url.startswith("postgres://postgres@%2F")
        dsn = found.database_url.replace("postgres://", "postgresql://", 1)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT current_database()").fetchone()
            assert row == ("herald",)
        assert found.redis_url == f"redis://127.0.0.1:{devstack.EMBEDDED_REDIS_PORT}/0"
        client = redis.Redis.from_url(found.redis_url)
        assert client.ping()
        client.close()
    assert not real_port_answers("127.0.0.1", devstack.EMBEDDED_REDIS_PORT)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3)
    shutil.rmtree(data_dir, ignore_errors=True)


def test_unreachable_database_url_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgres://postgres@127.0.0.1:{free_port()}/herald")
    with pytest.raises(devstack.DevstackError, match="DATABASE_URL is set but PostgreSQL"):
        devstack.resolve_postgres(Path(tempfile.mkdtemp()), database="herald")


def test_unreachable_redis_url_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(devstack.DevstackError, match="REDIS_URL is set but nothing answers"):
        devstack.resolve_redis(Path(tempfile.mkdtemp()), db=0)


@pytest.mark.django_db
def test_database_url_naming_a_missing_database_creates_it(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"herald_missing_{uuid.uuid4().hex[:8]}"
    url = server_url(name).replace("postgresql://", "postgres://")
    monkeypatch.setenv("DATABASE_URL", url)
    try:
        assert devstack.resolve_postgres(Path(tempfile.mkdtemp()), database="unused")[0] == url
        with psycopg.connect(server_url(name)) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
    finally:
        with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


# --- Chromium for the browser tests ----------------------------------------------------

INSTALL = [
    "apt-get", "-o", "DPkg::Lock::Timeout=120",
    "install", "-y", "--no-install-recommends", "chromium",
]  # fmt: skip
UPDATE = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "update"]
STALE = "Reading package lists...\nE: Unable to locate package chromium\n"


class Apt:
    """Stands in for the command runner: answers each command from a script and
    records it; Chromium appears once an install answered 0."""

    def __init__(self, answers: list[devstack.CommandResult], *, appears: bool = True) -> None:
        self.answers = answers
        self.appears = appears
        self.commands: list[list[str]] = []
        self.chromium = False

    def run(self, command: list[str]) -> devstack.CommandResult:
        self.commands.append(command)
        answer = self.answers.pop(0)
        if "install" in command and answer.returncode == 0 and self.appears:
            self.chromium = True
        return answer

    def installed(self) -> bool:
        return self.chromium


def ok(output: str = "") -> devstack.CommandResult:
    return devstack.CommandResult(0, output)


def failure(output: str) -> devstack.CommandResult:
    return devstack.CommandResult(100, output)


def ensure(
    apt: Apt,
    *,
    euid: int = 0,
    programs: tuple[str, ...] = ("apt-get", "sudo"),
) -> str | None:
    ticks = iter([100.0, 142.4, 150.0, 160.0])
    return devstack.chromium_ensure(
        run=apt.run,
        installed=apt.installed,
        which=lambda name: f"/usr/bin/{name}" if name in programs else None,
        euid=lambda: euid,
        clock=lambda: next(ticks),
    )


def test_chromium_already_there_is_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    apt = Apt([])
    apt.chromium = True
    assert ensure(apt) is None
    assert apt.commands == []
    assert capsys.readouterr().out == ""


def test_chromium_is_installed_as_root_and_the_time_it_took_is_said(
    capsys: pytest.CaptureFixture[str],
) -> None:
    apt = Apt([ok("Setting up chromium ...")])
    assert ensure(apt) is None
    assert apt.commands == [INSTALL]
    assert capsys.readouterr().out.splitlines() == [
        "[herald] installing chromium for the browser tests (apt-get)…",
        "[herald] installed chromium in 42 s",
    ]


def test_stale_package_lists_are_updated_and_the_install_retried(
    capsys: pytest.CaptureFixture[str],
) -> None:
    apt = Apt([failure(STALE), ok(), ok()])
    assert ensure(apt) is None
    assert apt.commands == [INSTALL, UPDATE, INSTALL]
    output = capsys.readouterr().out
    assert "updating them (apt-get update)…" in output
    assert "installed chromium in" in output


def test_an_install_failing_otherwise_is_not_retried_and_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = "E: dpkg was interrupted, you must manually run 'dpkg --configure -a'"
    apt = Apt([failure(f"Reading package lists...\n{broken}\n")])
    problem = ensure(apt)
    assert apt.commands == [INSTALL]
    assert problem is not None
    assert "`apt-get install chromium` failed" in problem
    assert broken in problem
    assert broken in capsys.readouterr().out


def test_a_failed_update_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    apt = Apt([failure(STALE), failure("E: Could not resolve 'deb.debian.org'")])
    problem = ensure(apt)
    assert apt.commands == [INSTALL, UPDATE]
    assert problem is not None
    assert "`apt-get update` failed" in problem
    assert "Could not resolve 'deb.debian.org'" in problem


def test_without_root_password_less_sudo_installs() -> None:
    apt = Apt([ok(), ok()])
    assert ensure(apt, euid=1000) is None
    assert apt.commands == [["sudo", "-n", "true"], ["sudo", "-n", *INSTALL]]


@pytest.mark.parametrize(
    ("programs", "sudo_answers"),
    [(("apt-get", "sudo"), [failure("sudo: a password is required")]), (("apt-get",), [])],
)
def test_without_root_or_sudo_nothing_is_installed_and_the_reason_given(
    programs: tuple[str, ...],
    sudo_answers: list[devstack.CommandResult],
    capsys: pytest.CaptureFixture[str],
) -> None:
    apt = Apt(list(sudo_answers))
    problem = ensure(apt, euid=1000, programs=programs)
    assert all("apt-get" not in command for command in apt.commands)
    assert problem is not None
    assert "needs root" in problem
    assert "sudo apt-get install chromium" in problem
    assert problem in capsys.readouterr().out


def test_without_apt_get_nothing_is_installed_and_the_reason_given() -> None:
    apt = Apt([])
    problem = ensure(apt, programs=("sudo",))
    assert apt.commands == []
    assert problem is not None
    assert "no apt-get" in problem


def test_an_install_that_leaves_no_chromium_is_reported() -> None:
    apt = Apt([ok()], appears=False)
    problem = ensure(apt)
    assert problem is not None
    assert f"{devstack.CHROMIUM} is still missing" in problem


def test_the_command_runner_captures_output_and_failures() -> None:
    ran = devstack.run_command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert ran == devstack.CommandResult(3, "out\nerr\n")
    missing = devstack.run_command([f"/nonexistent/{uuid.uuid4().hex}"])
    assert missing.returncode != 0
    assert "No such file" in missing.output


def test_the_test_command_tells_pytest_why_chromium_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only before pytest (the static checks need no browser), and the reason
    reaches the tests, which fail with it in CI (tests/browser.py)."""
    calls: list[tuple[str, dict[str, str]]] = []
    folders: list[Path] = []

    @contextlib.contextmanager
    def no_services(**kwargs: Any) -> Iterator[devstack.Services]:
        yield devstack.Services(database_url="postgres://x/y", redis_url="redis://x/0")

    def record(command: list[str], env: dict[str, str], cwd: Path, **kwargs: Any) -> Any:
        calls.append((" ".join(command[1:4]), dict(env)))
        folders.append(cwd)
        return subprocess.CompletedProcess(command, 0)

    def chromium_ensure() -> str:
        calls.append(("chromium_ensure", {}))
        return "Chromium could not be installed: no network"

    monkeypatch.setattr(devstack, "services", no_services)
    monkeypatch.setattr(devstack.subprocess, "run", record)
    monkeypatch.setattr(devstack, "chromium_ensure", chromium_ensure)
    monkeypatch.setenv(devstack.CHROMIUM_PROBLEM_ENV, "stale reason from the shell")

    assert devstack.main(["test", "-k", "browser"]) == 0

    steps = [name for name, _ in calls]
    assert steps == [
        "-m ruff check",
        "-m ruff format",
        "-m mypy",
        "-m mypy --no-explicit-package-bases",  # bench/, as the top-level modules it imports
        "-m mypy",  # the SDK, strict, with its own settings
        "chromium_ensure",
        "-m pytest -k",
    ]
    assert folders[4] == devstack.ROOT / "clients" / "python"
    assert set(folders) - {folders[4]} == {devstack.ROOT}
    assert calls[-1][1][devstack.CHROMIUM_PROBLEM_ENV] == (
        "Chromium could not be installed: no network"
    )


def test_browser_tests_skip_locally_and_fail_in_ci_without_chromium(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests import browser

    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setenv(devstack.CHROMIUM_PROBLEM_ENV, "apt-get install failed: no network")

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install failed: no network"):
        browser.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run in CI: apt-get install failed"):
        browser.require_chromium()

    (tmp_path / "chromium").touch()
    browser.require_chromium()  # there: neither skipped nor failed
