"""Shared fixtures: a real PostgreSQL test database with two committed tenants.

Creating a tenant runs its schema's migrations, so ``alpha`` and ``beta`` are
made once per session, committed (so worker processes see them too), and every
test runs inside a transaction that is rolled back, as pytest-django does.
"""

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import sentry_sdk
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from herald.limits import event_quota_key, limits_redis, month_bounds
from herald.sentry import sentry_init
from tenants.authentication import api_key_cache
from tenants.db import tenant_connection
from tenants.models import Tenant
from tenants.services import public_tenant_ensure, tenant_create
from tests.factories import api_key_issue

TENANT_PASSWORD = "correct-horse-battery-staple-42"
EXIT_WATCHDOG_SECONDS = 60.0

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread a test left blocked (an event loop that never finishes cancelling,
    say) keeps the interpreter from exiting after the summary, turning one failure
    into a run that never ends. A watchdog that dies with a normal exit ends such
    a run: it prints every thread's stack and exits with the run's own status."""

    def watchdog() -> None:
        time.sleep(EXIT_WATCHDOG_SECONDS)
        print(
            f"\n[tests] still running {EXIT_WATCHDOG_SECONDS:.0f} s after the run ended;"
            " these threads did not finish:",
            file=sys.stderr,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1] if _exit_status else 1)

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: pytest.FixtureRequest) -> None:
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        public_tenant_ensure(domains=["localhost", "testserver"])
        for slug in ("alpha", "beta"):
            if not Tenant.objects.filter(slug=slug).exists():
                tenant_create(
                    slug=slug,
                    name=slug.capitalize(),
                    admin_email=f"admin@{slug}.example.com",
                    admin_password=TENANT_PASSWORD,
                )


@pytest.fixture(autouse=True)
def _rate_limit_only_where_tested(request: pytest.FixtureRequest, settings: Any) -> None:
    """Tests send bursts of requests; the limiter is on only for tests marked rate_limited."""
    settings.HERALD_RATE_LIMIT_ENABLED = request.node.get_closest_marker("rate_limited") is not None


@pytest.fixture(autouse=True)
def _publish_at_commit(settings: Any) -> None:
    """Events are published in the committing thread, not gathered by a background
    one (tests/rules_engine/test_dispatch.py tests that)."""
    settings.HERALD_PIPELINE_PUBLISH_MS = 0


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """What the pipeline publisher sends: (schema name, event ids) per task."""
    from rules_engine.services.dispatch import pipeline_publisher

    sent: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(
        pipeline_publisher, "publish", lambda schema, ids: sent.append((schema, list(ids)))
    )
    return sent


@pytest.fixture(autouse=True)
def _fresh_event_quota() -> None:
    """The quota counters live in Redis, outside the rolled-back transaction."""
    month_start, _ = month_bounds(timezone.now())
    limits_redis().delete(*(event_quota_key(slug, month_start) for slug in ("alpha", "beta")))


@pytest.fixture(autouse=True)
def _public_schema_and_cold_cache() -> Iterator[None]:
    from channels_delivery.services.callbacks import callback_subscriptions_forget

    tenant_connection.set_schema_to_public()
    api_key_cache.clear()
    # Which endpoints take status callbacks is cached per process; a rolled-back
    # test's endpoints must not outlive it there.
    callback_subscriptions_forget()
    yield
    tenant_connection.set_schema_to_public()
    api_key_cache.clear()
    callback_subscriptions_forget()


@pytest.fixture
def tenant_a(db: None) -> Tenant:
    return Tenant.objects.get(slug="alpha")


@pytest.fixture
def tenant_b(db: None) -> Tenant:
    return Tenant.objects.get(slug="beta")


class ApiClient(Client):
    """A test client that sends one tenant's API key with every request."""

    def __init__(self, token: str) -> None:
        super().__init__(headers={"Authorization": f"Bearer {token}"})
        self.token = token


@pytest.fixture
def api_client_for(db: None) -> Callable[..., ApiClient]:
    """``api_client_for(tenant, scopes=[...])``: a client with a fresh key of that tenant."""

    def make(tenant: Tenant, scopes: Iterable[str] = ("admin",)) -> ApiClient:
        return ApiClient(api_key_issue(tenant=tenant, scopes=scopes).token)

    return make


@pytest.fixture
def api_a(api_client_for: Callable[..., ApiClient], tenant_a: Tenant) -> ApiClient:
    return api_client_for(tenant_a)


@pytest.fixture
def api_b(api_client_for: Callable[..., ApiClient], tenant_b: Tenant) -> ApiClient:
    return api_client_for(tenant_b)


@pytest.fixture
def in_tenant_a(tenant_a: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant_a):
        yield tenant_a


class CapturingTransport(Transport):
    """Keeps Sentry's events in memory: nothing leaves the process."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            if item.type == "event" and item.payload.json is not None:
                self.events.append(item.payload.json)


@pytest.fixture
def sentry_events() -> Iterator[CapturingTransport]:
    """Sentry initialised as production does it, its events kept here."""
    transport = CapturingTransport()
    sentry_init(dsn="http://public@127.0.0.1:9/1", environment="test", transport=transport)
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # no DSN: disabled again
