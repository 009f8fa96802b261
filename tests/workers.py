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


@contextmanager
def celery_worker(
    *, queues: str, include: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A worker consuming ``queues`` (comma-separated), started and ready before the
    block and stopped after it. Its output is drained so that it never blocks on
    a full pipe."""
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
            *included, "-Q", queues, "--concurrency", "1",
            "--without-mingle", "--without-gossip", "--loglevel", "INFO",
        ],
        cwd=ROOT, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    output: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        output.append(line)
        if " ready." in line:
            break
        if process.poll() is not None:
            pytest.fail("worker exited:\n" + "".join(output))
    else:
        process.kill()
        pytest.fail("worker did not start in time:\n" + "".join(output))
    stream = process.stdout
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
