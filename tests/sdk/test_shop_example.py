"""The example shop (examples/shop) against a live Herald, end to end.

The shop is a Django project of its own (its own processes, settings and
SQLite database) that uses herald_client.django: its orders' signals become
Herald events through the outbox. Herald is gunicorn with real pipeline and
delivery workers; tenant alpha sends every order event to a webhook endpoint on
a local sink. What the tests check is what reaches the sink: each event of each
order once, whether Herald was up when the order changed or down and back
later, and an event Herald refused kept in the outbox until the cause is fixed.
"""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels_delivery.catalogue import Channel
from channels_delivery.models import WebhookEndpoint
from channels_delivery.services.webhooks import endpoint_create
from rules_engine.event_types import event_types_forget
from rules_engine.models import Event, EventType, Rule, Subscriber, Template
from rules_engine.services.event_types import event_type_save
from rules_engine.services.rules import rule_create
from rules_engine.services.templates import template_create
from tenants.models import ApiKey, Tenant
from tests.channels_delivery.sinks import HttpSink, http_sink
from tests.channels_delivery.test_worker_kill import in_tenant
from tests.factories import api_key_issue
from tests.ports import free_port
from tests.reliability.flow import DELIVERY_QUEUE, PIPELINE_QUEUE, WORKER_ENV, wait_for
from tests.sdk.conftest import herald_server
from tests.threads import in_own_connection
from tests.workers import ROOT, celery_worker, queues_purge, routing_reset

pytestmark = [pytest.mark.worker, pytest.mark.django_db, pytest.mark.timeout(300)]

SHOP_DIR = ROOT / "examples" / "shop"
EVENTS = ("order.created", "order.shipped", "order.deleted")
BODY = (
    '{"event": {{ event.type|tojson }}, "order": {{ event.payload.number|tojson }}, '
    '"customer": {{ event.payload.customer.name|tojson }}, "email": {{ subscriber.email|tojson }}}'
)
START_TIMEOUT = 60.0
DELIVERY_TIMEOUT = 60.0


@dataclass(kw_only=True)
class HeraldSide:
    """Tenant alpha's part: the order event types, a webhook template, a rule per
    event type and an endpoint on the sink for all three."""

    tenant: Tenant
    sink: HttpSink
    tag: str
    endpoint_id: int
    token: str
    key_id: int

    @property
    def path(self) -> str:
        return f"/{self.tag}"

    def received(self) -> list[tuple[str, str]]:
        """(event, order number) of every webhook the sink got, in order."""
        found = []
        for request in list(self.sink.requests):
            if request.path == self.path:
                body = json.loads(request.body)
                found.append((body["event"], body["order"]))
        return found

    def events(self) -> list[Event]:
        def query() -> list[Event]:
            return list(Event.objects.filter(event_type_key__in=EVENTS))

        result: list[Event] = in_tenant(self.tenant, query)
        return result

    def order_schema(self, schema: dict[str, Any] | None) -> None:
        """order.created's payload schema, as the tenant edits it in the dashboard."""
        in_tenant(
            self.tenant,
            lambda: event_type_save(key="order.created", category="shop", payload_schema=schema),
        )


def herald_side_create(tenant: Tenant, sink: HttpSink) -> HeraldSide:
    tag = f"shop-{uuid.uuid4().hex[:8]}"

    def create() -> int:
        for key in EVENTS:
            event_type_save(key=key, category="shop")
        template_create(
            key=tag, channel=Channel.WEBHOOK, variants={"en": {"body": BODY}},
            fallback_locale="en", created_by="test",
        )  # fmt: skip
        for key in EVENTS:
            rule_create(
                name=f"{tag} {key}", event_type_key=key,
                actions=[{"channel": "webhook", "template": tag}],
                recipients={"kind": "event"}, created_by="test",
            )  # fmt: skip
        return endpoint_create(url=f"{sink.url}/{tag}", event_types=list(EVENTS)).pk

    endpoint_id = in_tenant(tenant, create)
    event_types_forget(schema_name=tenant.schema_name)
    key = in_own_connection(lambda: api_key_issue(tenant=tenant, scopes=["events:write"]))
    return HeraldSide(
        tenant=tenant, sink=sink, tag=tag, endpoint_id=endpoint_id,
        token=key.token, key_id=key.api_key.pk,
    )  # fmt: skip


def herald_side_forget(side: HeraldSide) -> None:
    def delete() -> None:
        Event.objects.filter(event_type_key__in=EVENTS).delete()
        Subscriber.objects.filter(external_id__startswith="customer-").delete()
        Rule.objects.filter(name__startswith=side.tag).delete()
        Template.objects.filter(key=side.tag).delete()
        EventType.objects.filter(key__in=EVENTS).delete()
        WebhookEndpoint.objects.filter(pk=side.endpoint_id).delete()

    in_tenant(side.tenant, delete)
    event_types_forget(schema_name=side.tenant.schema_name)
    in_own_connection(lambda: ApiKey.objects.filter(pk=side.key_id).delete())


@dataclass(kw_only=True)
class Shop:
    """The example shop's settings (its environment) and ways to drive it."""

    database: Path
    herald_url: str
    api_key: str
    url: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "HERALD_"))},
            "DJANGO_SETTINGS_MODULE": "shop.settings",
            "PYTHONPATH": str(SHOP_DIR),
            "SHOP_DATABASE": str(self.database),
            "HERALD_URL": self.herald_url,
            "HERALD_API_KEY": self.api_key,
            # Retries of a test come within seconds, not minutes.
            "HERALD_OUTBOX_MAX_DELAY": "2",
            **self.extra,
            **overrides,
        }

    def manage(self, *args: str, **env: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=SHOP_DIR, env=self.env(**env),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def order_create(self, number: str, *, name: str, total: str = "12.50") -> None:
        email = f"{name.lower()}@shop.example.com"
        body = {"email": email, "name": name, "number": number, "total": total}
        response = httpx.post(f"{self.url}/orders", json=body, timeout=30)
        assert response.status_code == 201, response.text

    def order_ship(self, number: str) -> None:
        response = httpx.post(f"{self.url}/orders/{number}/ship", timeout=30)
        assert response.status_code == 200, response.text

    def order_delete(self, number: str) -> None:
        response = httpx.delete(f"{self.url}/orders/{number}", timeout=30)
        assert response.status_code == 200, response.text

    def outbox_rows(self) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            return db.execute("SELECT * FROM herald_outbox ORDER BY created_at").fetchall()

    def outbox_put_back(self, row: tuple[Any, ...]) -> None:
        """The row as it was, as if the DELETE after Herald's answer was lost."""
        with contextlib.closing(sqlite3.connect(self.database)) as db, db:
            marks = ", ".join("?" for _ in row)
            db.execute(f"INSERT INTO herald_outbox VALUES ({marks})", row)  # noqa: S608


@contextlib.contextmanager
def background(shop: Shop, command: list[str], *, ready: str | None = None) -> Iterator[Any]:
    """A process of the shop, stopped (SIGTERM) on exit; its output in a file,
    shown when a wait for it fails."""
    log = tempfile.NamedTemporaryFile(prefix="shop-", suffix=".log")  # noqa: SIM115
    process = subprocess.Popen(
        command, cwd=SHOP_DIR, env=shop.env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield lambda: Path(log.name).read_text(errors="replace")[-5000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log.close()


@contextlib.contextmanager
def shop_server(shop: Shop) -> Iterator[str]:
    """The shop's WSGI app under gunicorn on a free port of 127.0.0.1."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "shop.wsgi:application", "--workers", "1",
        "--threads", "4", "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
    ]  # fmt: skip
    with background(shop, command) as output:
        shop.url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{shop.url}/orders", timeout=2).status_code == 200
            return False

        try:
            wait_for("the shop to answer", up, timeout=START_TIMEOUT)
        except pytest.fail.Exception:
            pytest.fail(f"the shop did not start:\n{output()}")
        yield shop.url


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with http_sink() as running:
        yield running


@pytest.fixture
def herald_side(tenant_a: Tenant, sink: HttpSink, settings: Any) -> Iterator[HeraldSide]:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True  # the endpoint is on the sink, 127.0.0.1
    routing_reset()
    queues_purge(PIPELINE_QUEUE, DELIVERY_QUEUE)
    side = herald_side_create(tenant_a, sink)
    try:
        yield side
    finally:
        herald_side_forget(side)


@pytest.fixture
def shop(herald_side: HeraldSide, tmp_path: Path) -> Shop:
    made = Shop(
        database=tmp_path / "shop.sqlite3",
        herald_url=f"http://127.0.0.1:{free_port()}",  # Herald starts there when a test says
        api_key=herald_side.token,
    )
    made.manage("migrate", "--verbosity", "0")
    return made


def herald_at(shop: Shop) -> contextlib.AbstractContextManager[str]:
    """Herald serving at the shop's HERALD_URL (again, after it was stopped)."""
    port = int(shop.herald_url.rsplit(":", 1)[1])
    # Schema edits in a test reach the server at once.
    return herald_server(port=port, HERALD_EVENT_TYPE_CACHE_SECONDS="0")


def test_every_order_event_arrives_once_though_herald_was_down(
    herald_side: HeraldSide, shop: Shop, tenant_b: Tenant
) -> None:
    log: list[str] = []
    runner = [sys.executable, "manage.py", "herald_outbox", "run", "--interval", "0.5"]
    with (
        celery_worker(queues=f"{PIPELINE_QUEUE},{DELIVERY_QUEUE}", env=WORKER_ENV, output=log),
        shop_server(shop),
        background(shop, runner) as runner_output,
    ):
        with herald_at(shop):
            shop.order_create("1001", name="Ann")
            shop.order_ship("1001")
            wait_for(
                "the orders' webhooks while Herald is up",
                lambda: len(herald_side.received()) == 2,
                timeout=DELIVERY_TIMEOUT,
                log=log,
            )
        # Herald is down: the shop goes on taking orders, their events wait.
        started = time.monotonic()
        shop.order_create("1002", name="Bob")
        shop.order_create("1003", name="Bob")
        shop.order_ship("1002")
        shop.order_delete("1003")
        assert time.monotonic() - started < 10, "the shop waited for a Herald that is down"
        listing = shop.manage("herald_outbox", "list")
        assert listing.startswith("4 event(s) waiting"), listing
        assert "Connection refused" in listing, listing
        rows = shop.outbox_rows()
        assert [row[1] for row in rows] == [
            "order.created", "order.created", "order.shipped", "order.deleted",
        ]  # fmt: skip
        lost_delete = rows[0]  # 1002's order.created: sent later, its DELETE "lost"

        with herald_at(shop):
            try:
                wait_for(
                    "every order's webhooks once Herald is back",
                    lambda: len(herald_side.received()) == 6,
                    timeout=DELIVERY_TIMEOUT,
                    log=log,
                )
            except pytest.fail.Exception:
                pytest.fail(f"outbox runner:\n{runner_output()}")
            wait_for(
                "the outbox to be empty",
                lambda: shop.manage("herald_outbox", "list").startswith("0 event(s)"),
                timeout=DELIVERY_TIMEOUT,
            )
            # Sent again (the shop crashed between Herald's answer and the DELETE):
            # Herald answers 2xx with the event it stored under that key, and the
            # row goes; nothing new is stored or delivered.
            shop.outbox_put_back(lost_delete)
            wait_for(
                "the row put back to be sent again",
                lambda: shop.outbox_rows() == [],
                timeout=DELIVERY_TIMEOUT,
            )
            stored = herald_side.events()
            assert len(stored) == 6
            assert len({event.idempotency_key for event in stored}) == 6
            assert f"outbox-{uuid.UUID(lost_delete[0])}" in {e.idempotency_key for e in stored}
            # A later order still goes through, and behind it no second 1002.
            shop.order_create("1004", name="Cy")
            wait_for(
                "the last order's webhook",
                lambda: ("order.created", "1004") in herald_side.received(),
                timeout=DELIVERY_TIMEOUT,
                log=log,
            )

    received = Counter(herald_side.received())
    assert received == Counter(
        {
            ("order.created", "1001"): 1,
            ("order.shipped", "1001"): 1,
            ("order.created", "1002"): 1,
            ("order.shipped", "1002"): 1,
            ("order.created", "1003"): 1,
            ("order.deleted", "1003"): 1,
            ("order.created", "1004"): 1,
        }
    )
    emails = [json.loads(r.body)["email"] for r in herald_side.sink.requests]
    assert set(emails) == {"ann@shop.example.com", "bob@shop.example.com", "cy@shop.example.com"}
    # Tenant beta, whose key the shop does not have, got none of it.
    assert in_tenant(tenant_b, lambda: Event.objects.filter(event_type_key__in=EVENTS).count()) == 0


def test_an_event_herald_refuses_waits_in_the_outbox_until_fixed(
    herald_side: HeraldSide, shop: Shop
) -> None:
    log: list[str] = []
    # The tenant's schema wants totals with cents; the shop sends "30" for 30.
    with_cents = {"type": "string", "pattern": "[.][0-9]{2}$"}
    herald_side.order_schema({"type": "object", "properties": {"total": with_cents}})
    with (
        celery_worker(queues=f"{PIPELINE_QUEUE},{DELIVERY_QUEUE}", env=WORKER_ENV, output=log),
        herald_at(shop),
    ):
        with shop_server(shop):
            shop.order_create("2001", name="Dee", total="30")
        # A wrong key is not the event's fault: that event waits for the right key.
        shop.extra["HERALD_API_KEY"] = "hk_test_wrong"
        with shop_server(shop):
            shop.order_create("2002", name="Eve")
        shop.extra.clear()

        listing = shop.manage("herald_outbox", "list")
        assert listing.startswith("2 event(s) waiting"), listing
        assert "REJECTED" in listing, listing
        assert "/payload/total" in listing, listing
        assert "401" in listing, listing
        refused = shop.manage("herald_outbox", "list", "--rejected")
        assert refused.startswith("1 event(s) waiting (refused by Herald)"), refused
        # With the right key, 2002's event goes; 2001's is not sent again on its
        # own: the same request would be refused again.
        flushed = shop.manage("herald_outbox", "flush", "--all")
        assert flushed.startswith("sent 1, retrying later 0, rejected 0"), flushed

        herald_side.order_schema({"type": "object", "properties": {"total": {"type": "string"}}})
        assert shop.manage("herald_outbox", "retry", "--rejected").startswith("1 event(s) due")
        assert shop.manage("herald_outbox", "flush").startswith("sent 1,")
        wait_for(
            "both orders' webhooks",
            lambda: (
                Counter(herald_side.received())
                == Counter({("order.created", "2001"): 1, ("order.created", "2002"): 1})
            ),
            timeout=DELIVERY_TIMEOUT,
            log=log,
        )
    assert shop.outbox_rows() == []


CHANGES = """
import json
from django.db import transaction
from herald_client.django.models import OutboxEvent
from shop.models import Customer, Order

fay = Customer.objects.create(email="fay@shop.example.com", name="Fay")
order = Order.objects.create(number="3001", customer=fay, total="5.00")
try:
    with transaction.atomic():
        Order.objects.create(number="3002", customer=fay, total="1.00")
        raise RuntimeError("the order and its event roll back together")
except RuntimeError:
    pass
order.total = "6.00"
order.save()  # an update, not a shipping: no event
order = Order.objects.get(number="3001")  # loaded again: compared with what was read
order.status = "shipped"
order.save()
order.save()  # shipped already: not shipped again
print(json.dumps([[row.event, row.body] for row in OutboxEvent.objects.order_by("created_at")]))
"""


def test_only_committed_changes_that_match_become_events(shop: Shop) -> None:
    """No Herald at all here: what the outbox holds is what the mapping made of
    the changes (examples/shop/shop/herald_events.py)."""
    output = shop.manage("shell", "--command", CHANGES)
    made = json.loads(output.strip().splitlines()[-1])
    customer = {"id": "customer-1", "email": "fay@shop.example.com", "name": "Fay"}
    assert made == [
        [
            "order.created",
            {
                "event": "order.created",
                "payload": {"number": "3001", "total": "5.00", "status": "placed",
                            "customer": {"name": "Fay"}},
                "to": [customer],
            },
        ],
        [
            "order.shipped",
            {
                "event": "order.shipped",
                "payload": {"number": "3001", "total": "6.00", "status": "shipped",
                            "customer": {"name": "Fay"}},
                "to": [customer],
            },
        ],
    ]  # fmt: skip


def test_a_wrong_setting_or_mapping_is_named(shop: Shop) -> None:
    """`manage.py check` names a malformed HERALD_URL; a mapping that names no
    model, or a model that does not exist, fails with what to fix."""
    env = shop.env(HERALD_URL="herald.example.com")
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=SHOP_DIR, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "herald_client.E001" in done.stderr
    assert "HERALD_URL must be Herald's http(s) base URL, not 'herald.example.com'" in done.stderr

    no_key = subprocess.run(
        [sys.executable, "manage.py", "herald_outbox", "flush"], cwd=SHOP_DIR,
        env=shop.env(HERALD_API_KEY=""), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert no_key.returncode != 0
    assert "Herald needs an API key" in no_key.stderr

    mappings = """
from django.core.exceptions import ImproperlyConfigured
from herald_client.django import ModelEvents
try:
    class NoModel(ModelEvents):
        created = "thing.created"
except ImproperlyConfigured as error:
    print(error)
try:  # after start-up a mapping is connected as it is defined, and checked then
    class Unknown(ModelEvents):
        model = "shop.Refund"
except ImproperlyConfigured as error:
    print(error)
"""
    said = shop.manage("shell", "--command", mappings).splitlines()[-2:]
    assert said[0] == "NoModel must set `model`"
    assert said[1].startswith("Unknown.model: no model 'shop.Refund'")


LATE_MAPPING = """
import json
from herald_client.django import ModelEvents
from herald_client.django.models import OutboxEvent
from shop.models import Customer

class CustomerEvents(ModelEvents):  # defined after start-up, in a shell
    model = "shop.Customer"
    created = "customer.joined"
    fields = ["name"]

Customer.objects.create(email="gil@shop.example.com", name="Gil")
print(json.dumps([row.body for row in OutboxEvent.objects.all()]))
"""


def test_a_mapping_defined_after_start_up_is_connected_too(shop: Shop) -> None:
    output = shop.manage("shell", "--command", LATE_MAPPING)
    made = json.loads(output.strip().splitlines()[-1])
    assert made == [{"event": "customer.joined", "payload": {"name": "Gil"}}]


BACKLOG = 120


def test_an_outbox_filled_during_an_outage_drains_in_batches(
    herald_side: HeraldSide, shop: Shop
) -> None:
    """Orders made while Herald is down wait; one flush afterwards sends them
    FLUSH_BATCH to a request. An item Herald refuses is kept, the others go."""
    herald_side.order_schema(
        {"type": "object", "properties": {"total": {"type": "string", "pattern": "[.][0-9]{2}$"}}}
    )
    log: list[str] = []
    with shop_server(shop):  # Herald is not running
        for n in range(BACKLOG):
            shop.order_create(str(3000 + n), name="Hal", total="1.50")
        shop.order_create("3999", name="Hal", total="7")  # no cents: refused
    assert len(shop.outbox_rows()) == BACKLOG + 1

    with (
        celery_worker(queues=f"{PIPELINE_QUEUE},{DELIVERY_QUEUE}", env=WORKER_ENV, output=log),
        herald_at(shop),
    ):
        flushed = shop.manage("herald_outbox", "flush", "--all")
        assert flushed.startswith(f"sent {BACKLOG}, retrying later 0, rejected 1"), flushed
        wait_for(
            "every accepted order's webhook",
            lambda: len(herald_side.received()) == BACKLOG,
            timeout=DELIVERY_TIMEOUT,
            log=log,
        )
    assert sorted(number for _, number in herald_side.received()) == [
        str(3000 + n) for n in range(BACKLOG)
    ]
    assert len(herald_side.events()) == BACKLOG
    (kept,) = shop.outbox_rows()
    listing = shop.manage("herald_outbox", "list", "--rejected")
    assert "refused in a batch (validation-failed)" in listing, listing
    assert "/payload/total" in listing, listing
    assert str(uuid.UUID(kept[0])) in listing
