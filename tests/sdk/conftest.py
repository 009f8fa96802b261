"""A live Herald for the SDK's tests, and committed data for it to serve.

The SDK is tested against the real thing, not a mock of it: gunicorn serves
Herald's WSGI app on a free port of 127.0.0.1 (as production does), against the
test database and Redis. The server is another process, so whatever a test
wants it to see (API keys, messages) is written from a connection of its own
and committed; ``live`` removes all of it again afterwards, the analytics
deltas its rows caused included, so later tests find tenants alpha and beta as
they were.
"""

import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest
from django.conf import settings
from django.db.models import Max
from django.utils import timezone
from herald_client import AsyncHerald, Backoff, Herald

from channels_delivery.catalogue import Channel
from channels_delivery.models import InboxSettings, Message, MessageStatus, StatsDelta
from rules_engine.models import Event, Subscriber, Topic
from tenants.models import ApiKey, Tenant
from tests.channels_delivery.test_worker_kill import in_tenant
from tests.factories import api_key_issue
from tests.ports import free_port
from tests.threads import in_own_connection
from tests.workers import ROOT, database_url

T = TypeVar("T")

SERVER_START_TIMEOUT = 60.0
SERVER_STOP_GRACE = 15.0
PREFIX = "sdk-"  # every subscriber, topic and event type a test makes starts with it
# Retries in tests wait milliseconds, not seconds.
FAST_BACKOFF = Backoff(initial=0.01, maximum=0.05)


@contextlib.contextmanager
def herald_server(*, port: int | None = None, **env_overrides: str) -> Iterator[str]:
    """gunicorn (one gthread worker) serving Herald on ``port`` (a free one if
    None) of 127.0.0.1, against the test database and Redis; yields its base URL
    once it is healthy. Given the same port, a later server takes the same URL
    (Herald stopped and started again)."""
    port = port or free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "HERALD_ENV": "test",
        # Tests send bursts; the limiter (and the failed-key limit) stays off,
        # as in the in-process API tests, unless a test turns it on.
        "HERALD_RATE_LIMIT_ENABLED": "false",
        "DATABASE_CONN_MAX_AGE": "0",
        **env_overrides,
    }
    log = tempfile.NamedTemporaryFile(prefix="herald-sdk-server-", suffix=".log")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "herald.wsgi:application",
            "--workers", "1", "--worker-class", "gthread", "--threads", "8",
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "--graceful-timeout", "5",
        ],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def output() -> str:
        log.flush()
        return open(log.name, errors="replace").read()[-5000:]

    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"Herald exited with status {process.returncode}:\n{output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Herald was not healthy within {SERVER_START_TIMEOUT:g} s:\n{output()}"
                )
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=SERVER_STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log.close()


@pytest.fixture(scope="session")
def herald_url(django_db_setup: None) -> Iterator[str]:
    """The base URL of the live Herald the SDK's tests share."""
    with herald_server() as url:
        yield url


def _stats_high_water() -> int:
    return StatsDelta.objects.aggregate(top=Max("id"))["top"] or 0


def _tenant_forget(stats_since: int, inbox_existed: bool) -> None:
    """Runs in a tenant's schema: every row an SDK test made there, and the
    analytics deltas the triggers wrote for them (no worker folds them meanwhile)."""
    Event.objects.filter(event_type_key__startswith=PREFIX).delete()
    Subscriber.objects.filter(external_id__startswith=PREFIX).delete()
    Topic.objects.filter(key__startswith=PREFIX).delete()
    StatsDelta.objects.filter(id__gt=stats_since).delete()
    if not inbox_existed:
        InboxSettings.objects.all().delete()


@dataclass
class Live:
    """Committed data of tenants alpha and beta for the live server, and SDK clients."""

    url: str
    tenant_a: Tenant
    tenant_b: Tenant
    tag: str = field(default_factory=lambda: f"{PREFIX}{uuid.uuid4().hex[:10]}")
    key_ids: list[int] = field(default_factory=list)
    clients: list[Herald] = field(default_factory=list)

    def name(self, suffix: str) -> str:
        """A unique name for a subscriber, topic or event type of this test."""
        return f"{self.tag}-{suffix}"

    def commit(self, tenant: Tenant, work: Callable[[], T]) -> T:
        """``work`` in the tenant's schema, committed, so the server sees it."""
        return in_tenant(tenant, work)

    def token(self, tenant: Tenant, scopes: Iterable[str] = ("admin",)) -> str:
        def issue() -> tuple[int, str]:
            created = api_key_issue(tenant=tenant, scopes=scopes)
            return created.api_key.pk, created.token

        pk, token = in_own_connection(issue)
        self.key_ids.append(pk)
        return token

    def herald(self, tenant: Tenant | None = None, scopes: Iterable[str] = ("admin",)) -> Herald:
        client = Herald(
            self.token(tenant or self.tenant_a, scopes),
            base_url=self.url,
            timeout=15.0,
            backoff=FAST_BACKOFF,
        )
        self.clients.append(client)
        return client

    def async_herald(self, tenant: Tenant | None = None) -> AsyncHerald:
        """Closed by the test (``async with``): it belongs to the test's event loop."""
        return AsyncHerald(
            self.token(tenant or self.tenant_a),
            base_url=self.url,
            timeout=15.0,
            backoff=FAST_BACKOFF,
        )

    def messages(
        self, tenant: Tenant, subscriber_id: str, specs: Iterable[dict[str, Any]]
    ) -> list[str]:
        """Messages to one subscriber, as the pipeline would have made them
        (committed); each spec sets ``channel``, ``status``, ``content``."""

        def create() -> list[str]:
            subscriber, _ = Subscriber.objects.get_or_create(external_id=subscriber_id)
            event = Event.objects.create(event_type_key=f"{self.tag}.made", payload={"n": 1})
            now = timezone.now()
            made: list[str] = []
            for index, spec in enumerate(specs):
                message = Message.objects.create(
                    event=event,
                    subscriber=subscriber,
                    channel=spec.get("channel", Channel.IN_APP),
                    status=spec.get("status", MessageStatus.DELIVERED),
                    content=spec.get("content", {"title": f"note {index}", "body": "hello"}),
                    created_at=now - timedelta(seconds=len(made)),
                )
                made.append(str(message.id))
            return made

        ids: list[str] = self.commit(tenant, create)
        return ids


@pytest.fixture
def live(herald_url: str, tenant_a: Tenant, tenant_b: Tenant) -> Iterator[Live]:
    tenants = (tenant_a, tenant_b)
    before = {
        tenant.pk: in_tenant(tenant, lambda: (_stats_high_water(), InboxSettings.objects.exists()))
        for tenant in tenants
    }
    state = Live(url=herald_url, tenant_a=tenant_a, tenant_b=tenant_b)
    try:
        yield state
    finally:
        for client in state.clients:
            client.close()
        for tenant in tenants:
            stats_since, inbox_existed = before[tenant.pk]
            in_tenant(tenant, functools.partial(_tenant_forget, stats_since, inbox_existed))
        in_own_connection(lambda: ApiKey.objects.filter(pk__in=state.key_ids).delete())
