"""A real Celery worker process for tests, against the test database and Redis."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

from herald.celery import app

ROOT = Path(__file__).resolve().parents[1]
WORKER_START_TIMEOUT = 60.0


def database_url() -> str:
    """The test database, as a URL a worker process can be given."""
    db = connection.settings_dict
    host = quote(db["HOST"] or "127.0.0.1", safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    return f"postgres://{quote(db['USER'], safe='')}{password}@{host}{port}/{db['NAME']}"


def routing_reset() -> None:
    """Make the app route by its current task_routes: Celery builds its router once
    and caches it, so a changed setting alone would not reach tasks sent later."""
    app.amqp.flush_routes()
    app.amqp.__dict__.pop("router", None)


def queues_purge(*queues: str) -> None:
    """Drop what waits in these queues of the shared broker: tasks earlier tests
    published with no worker running, which a worker started now would work
    through first (and a test's time bounds would measure)."""
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_purge(queue)


@contextmanager
def celery_worker(
    *,
    queues: str,
    include: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    output: list[str] | None = None,
    own_process_group: bool = False,
    concurrency: int = 1,
) -> Iterator[subprocess.Popen[str]]:
    """A worker consuming ``queues`` (comma-separated), started and ready before the
    block and stopped after it. Its output is drained so that it never blocks on
    a full pipe; every line is appended to ``output`` if given, so a test can
    wait for what the worker logged. ``own_process_group``: the worker leads a
    process group of its own (its pid is the group id), so a test can kill it
    and its pool children at once with ``os.killpg``. ``concurrency``: its pool
    processes (prefork)."""
    worker_env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        **(env or {}),
    }
    included = [argument for module in include for argument in ("--include", module)]
    process = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "herald.celery:app", "worker",
            *included, "-Q", queues, "--concurrency", str(concurrency),
            "--without-mingle", "--without-gossip", "--loglevel", "INFO",
        ],
        cwd=ROOT, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=own_process_group,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if " ready." in line:
            break
        if process.poll() is not None:
            pytest.fail("worker exited:\n" + "".join(lines))
    else:
        process.kill()
        pytest.fail("worker did not start in time:\n" + "".join(lines))
    stream = process.stdout
    if output is not None:
        output.extend(lines)

    def drain() -> None:
        for line in stream:
            if output is not None:
                output.append(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
