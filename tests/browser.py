"""What the browser tests share: a Herald server process, Chromium, screenshots.

The browser tests drive Debian's Chromium through Playwright against Herald's
ASGI application under uvicorn, on the test database, so whatever a test shows
the server must be committed (``tests.threads.in_own_connection``) and removed
afterwards. ``python -m herald.devstack test`` installs Chromium when it is
missing and may; when it could not, it says why in ``HERALD_CHROMIUM_PROBLEM``.
Without Chromium the browser tests skip with that reason, except in CI, where
they fail with it: CI must run them.
"""

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from django.conf import settings

from tests.workers import ROOT, database_url

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
# The variable devstack's test command sets when it could not install Chromium.
CHROMIUM_PROBLEM_ENV = "HERALD_CHROMIUM_PROBLEM"
TRUE_VALUES = {"true", "yes", "y", "on", "ok", "1"}  # as for Herald's own settings
SERVER_START_TIMEOUT = 60.0
LAUNCH_TIMEOUT_MS = 30_000
# Every wait in a browser test is bounded: a broken page fails in seconds, not at
# pytest's global timeout.
ACTION_TIMEOUT_MS = 10_000
NAVIGATION_TIMEOUT_MS = 20_000


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def herald_server(port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Herald's ASGI application under uvicorn (HTTP and WebSocket, as the demo
    runs it), on the test database and Redis; ready before the block. Its output
    goes to ``log`` (appended), shown if it does not start."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "HERALD_ENV": "test",
    }
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "herald.asgi:application",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in TRUE_VALUES


def chromium_unavailable() -> str | None:
    """Why the browser tests can not run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return os.environ.get(CHROMIUM_PROBLEM_ENV) or (
            f"Chromium is not installed ({CHROMIUM} is missing): `make test` installs it "
            "when it may, or run `apt-get install chromium`"
        )
    return None


def require_chromium() -> None:
    """Skip the calling test without Chromium, or fail it in CI, with the reason."""
    problem = chromium_unavailable()
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"the browser tests must run in CI: {problem}", pytrace=False)
    pytest.skip(problem)


@contextmanager
def chromium() -> Iterator["Browser"]:
    """Headless Debian Chromium, driven by Playwright; the test is skipped (or,
    in CI, failed) when either is missing."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


def launch(playwright: "Playwright") -> "Browser":
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT_MS
    )


def new_page(browser: "Browser") -> "Page":
    """A page in a fresh context (its own cookies), with bounded waits."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
    return context.new_page()


def screenshots_folder() -> Path:
    folder = Path(os.environ.get("HERALD_SCREENSHOTS") or ROOT / ".artifacts" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Screenshots:
    """Numbered full-page screenshots of one test, named after it and the step.

    The folder is printed, so it shows with ``-s`` and in a failed test's
    captured output; the test's screenshots from an earlier run are removed
    first, so the folder never mixes two runs of a test."""

    def __init__(self, test_name: str, folder: Path | None = None) -> None:
        self.folder = folder or screenshots_folder()
        self.prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
        self.taken: list[Path] = []
        for old in self.folder.glob(f"{self.prefix}--*.png"):
            old.unlink()
        print(f"[browser] screenshots in {self.folder}")

    def take(self, page: "Page", step: str) -> Path:
        name = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-")
        path = self.folder / f"{self.prefix}--{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@contextmanager
def screenshot_if_failed(
    request: pytest.FixtureRequest, page: "Page", screenshots: Screenshots
) -> Iterator[None]:
    """Around a fixture's yield: the page as it was when its test failed. The
    call's report is counted before fixtures are torn down."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        with contextlib.suppress(Exception):  # the page may have crashed with the test
            screenshots.take(page, "where the test failed")
