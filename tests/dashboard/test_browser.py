"""Both dashboards in a real Chromium, against a running Herald.

What a tenant admin and platform staff do, through the pages as they render:
the login forms, a rule refused with the CEL compiler's message at its field
and then saved, the staff's tenant list, and a tenant admin kept out of the
staff dashboard. Every step leaves a full-page screenshot (the folder is
printed). A new scenario takes the ``tenant_dashboard`` or ``staff_dashboard``
fixture (a logged-in page on that host) and, for data, a committed seed that it
removes again, as ``rule_setup`` does.

Playwright's sync API runs an event loop in this thread while a browser is
open, where Django refuses database calls: the tests and their fixtures reach
the database only through ``in_own_connection`` (which also commits, so the
server sees it), never through fixtures such as ``tenant_a``, which could be
set up after the browser.
"""

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from rules_engine.cel import CelCompileError, validate_expression
from rules_engine.models import EventType, Rule, RuleVersion, Template
from rules_engine.services.event_types import event_type_delete, event_type_save
from rules_engine.services.rules import rule_delete
from rules_engine.services.templates import template_create, template_delete
from tenants.models import Tenant
from tests.browser import (
    Screenshots,
    chromium,
    herald_server,
    new_page,
    require_chromium,
    screenshot_if_failed,
)
from tests.conftest import TENANT_PASSWORD
from tests.ports import free_port
from tests.threads import in_own_connection

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.django_db

TENANT_ADMIN = "admin@alpha.example.com"
RULES = "/admin/rules_engine/rule/"
BAD_CEL = "event.payload.total >"
GOOD_CEL = "event.payload.total > 100"


@dataclass
class Dashboard:
    """A page of one dashboard (tenant or staff), and where its steps are shot."""

    page: "Page"
    base: str
    screenshots: Screenshots

    def open(self, path: str) -> None:
        self.page.goto(f"{self.base}{path}")

    def shot(self, step: str) -> None:
        self.screenshots.take(self.page, step)


@pytest.fixture(scope="module")
def herald_port(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One server for the module: starting uvicorn costs seconds, and the tests
    share nothing through it but committed rows they remove again."""
    require_chromium()  # before the server starts for nothing
    port = free_port()
    log = tmp_path_factory.mktemp("herald") / "uvicorn.log"
    with herald_server(port, log):
        yield port


@pytest.fixture
def browser(db: None) -> Iterator["Browser"]:
    # After `db`: the test's transaction opens before Playwright's event loop runs.
    with chromium() as browser:
        yield browser


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Screenshots:
    return Screenshots(request.node.name)


def tenant_base(port: int) -> str:
    return f"http://alpha.localhost:{port}"


def staff_base(port: int) -> str:
    return f"http://localhost:{port}"


def log_in(dashboard: Dashboard, *, username: str, password: str) -> None:
    """Through the login form, as a person would."""
    page = dashboard.page
    dashboard.open("/admin/")
    page.wait_for_url(re.compile(r"/admin/login/"))
    page.get_by_label(re.compile("username|email", re.IGNORECASE)).fill(username)
    page.get_by_label(re.compile("password", re.IGNORECASE)).fill(password)
    page.locator("form button[type=submit], form input[type=submit]").first.click()
    page.wait_for_load_state()


@dataclass(frozen=True)
class StaffUser:
    username: str
    password: str


@pytest.fixture
def staff_user() -> Iterator[StaffUser]:
    """A platform staff member in the public schema, committed for the server."""
    staff = StaffUser(username=f"ops-{uuid.uuid4().hex[:8]}", password=TENANT_PASSWORD)
    in_own_connection(
        lambda: User.objects.create_superuser(username=staff.username, password=staff.password)
    )
    try:
        yield staff
    finally:
        in_own_connection(lambda: User.objects.filter(username=staff.username).delete())


def logged_in(
    request: pytest.FixtureRequest, dashboard: Dashboard, *, username: str, password: str
) -> Iterator[Dashboard]:
    from playwright.sync_api import expect

    with screenshot_if_failed(request, dashboard.page, dashboard.screenshots):
        log_in(dashboard, username=username, password=password)
        expect(dashboard.page).to_have_url(f"{dashboard.base}/admin/")
        yield dashboard


@pytest.fixture
def tenant_dashboard(
    request: pytest.FixtureRequest, browser: "Browser", herald_port: int, screenshots: Screenshots
) -> Iterator[Dashboard]:
    """Alpha's dashboard, its admin logged in."""
    dashboard = Dashboard(new_page(browser), tenant_base(herald_port), screenshots)
    yield from logged_in(request, dashboard, username=TENANT_ADMIN, password=TENANT_PASSWORD)


@pytest.fixture
def staff_dashboard(
    request: pytest.FixtureRequest,
    browser: "Browser",
    herald_port: int,
    screenshots: Screenshots,
    staff_user: StaffUser,
) -> Iterator[Dashboard]:
    """The staff dashboard on the public host, a staff member logged in."""
    dashboard = Dashboard(new_page(browser), staff_base(herald_port), screenshots)
    yield from logged_in(
        request, dashboard, username=staff_user.username, password=staff_user.password
    )


@dataclass(frozen=True)
class RuleSetup:
    event_type: str
    event_type_id: int
    template: str
    rule_name: str


def in_alpha(work: Callable[[], Any]) -> Any:
    """Run ``work`` in alpha's schema, in its own committing connection."""

    def run() -> Any:
        with tenant_context(Tenant.objects.get(slug="alpha")):
            return work()

    return in_own_connection(run)


@pytest.fixture
def rule_setup() -> Iterator[RuleSetup]:
    """What a rule needs in alpha (an event type, an SMS template), committed,
    with names of this run; the rules made on it are removed with it."""
    run = uuid.uuid4().hex[:8]
    event_type, template = f"browser.order_{run}", f"browser-sms-{run}"

    def seed() -> int:
        saved = event_type_save(key=event_type, name="Order placed (browser test)")
        template_create(
            key=template,
            channel=Channel.SMS,
            variants={"en": {"text": "Big order: {{ event.payload.total }}"}},
            created_by="tests",
        )
        return saved.pk

    def unseed() -> None:
        for rule in Rule.objects.filter(event_type__key=setup.event_type):
            rule_delete(rule=rule)
        for template in Template.objects.filter(key=setup.template):
            template_delete(template=template)
        for event_type in EventType.objects.filter(key=setup.event_type):
            event_type_delete(event_type=event_type)

    setup = RuleSetup(
        event_type=event_type,
        event_type_id=in_alpha(seed),
        template=template,
        rule_name=f"VIP orders {run}",
    )
    try:
        yield setup
    finally:
        in_alpha(unseed)


def compiler_message(source: str) -> str:
    try:
        validate_expression(source)
    except CelCompileError as error:
        return error.message
    raise AssertionError(f"{source!r} compiles")


# --- the tenant dashboard --------------------------------------------------------------


def test_a_tenant_admin_logs_in_through_the_form_and_lands_on_the_dashboard(
    browser: "Browser", herald_port: int, screenshots: Screenshots
) -> None:
    from playwright.sync_api import expect

    dashboard = Dashboard(new_page(browser), tenant_base(herald_port), screenshots)
    page = dashboard.page
    dashboard.open("/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/admin/$"))
    dashboard.shot("login page")

    log_in(dashboard, username=TENANT_ADMIN, password=TENANT_PASSWORD)

    expect(page).to_have_url(f"{dashboard.base}/admin/")
    expect(page.get_by_text("Alpha · Herald").first).to_be_visible()
    # The sidebar leads to the rules.
    expect(page.locator(f"a[href='{RULES}']").first).to_be_attached()
    dashboard.shot("dashboard home")


def test_a_rule_with_an_invalid_condition_shows_the_compilers_message_then_saves_fixed(
    tenant_dashboard: Dashboard, rule_setup: RuleSetup
) -> None:
    from playwright.sync_api import expect

    dashboard, page = tenant_dashboard, tenant_dashboard.page
    dashboard.open(f"{RULES}add/")
    page.locator("#id_name").fill(rule_setup.rule_name)
    page.locator("#id_event_type").select_option(str(rule_setup.event_type_id))
    page.locator("#id_condition").fill(BAD_CEL)
    page.locator("#id_actions").fill(
        json.dumps([{"channel": "sms", "template": rule_setup.template}])
    )
    dashboard.shot("new rule with an invalid condition")
    page.locator("button[name=_save]").click()

    # Still the form, the compiler's message at the condition field.
    expect(page).to_have_url(re.compile(re.escape(f"{RULES}add/")))
    condition_row = page.locator(".errors", has=page.locator("#id_condition"))
    expect(condition_row).to_contain_text(compiler_message(BAD_CEL))
    expect(condition_row.get_by_text(compiler_message(BAD_CEL))).to_be_visible()
    dashboard.shot("the compiler's error at the condition")

    page.locator("#id_condition").fill(GOOD_CEL)
    page.locator("button[name=_save]").click()

    expect(page).to_have_url(re.compile(re.escape(RULES) + r"$"))
    expect(page.get_by_text("was added successfully")).to_be_visible()
    expect(page.locator("#result_list").get_by_text(rule_setup.rule_name)).to_be_visible()
    dashboard.shot("the rule saved and listed")

    saved = in_alpha(
        lambda: list(
            RuleVersion.objects.filter(rule__name=rule_setup.rule_name).values_list(
                "condition", flat=True
            )
        )
    )
    assert saved == [GOOD_CEL]


# --- the staff dashboard ---------------------------------------------------------------


def test_staff_log_in_on_the_public_host_and_see_the_tenants(staff_dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    dashboard, page = staff_dashboard, staff_dashboard.page
    expect(page.get_by_text("Herald platform").first).to_be_visible()
    dashboard.shot("staff home")

    dashboard.open("/admin/tenants/tenant/")
    rows = page.locator("#result_list tbody tr")
    expect(rows.filter(has_text="alpha")).to_have_count(1)
    expect(rows.filter(has_text="beta")).to_have_count(1)
    dashboard.shot("the tenants")


def test_a_tenant_admin_can_not_reach_the_staff_dashboard(
    tenant_dashboard: Dashboard, browser: "Browser", herald_port: int
) -> None:
    from playwright.sync_api import expect

    # Alpha's session is alpha's host's alone: on the public host it is nobody.
    page = tenant_dashboard.page
    page.goto(f"{staff_base(herald_port)}/admin/tenants/tenant/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    expect(page.locator("#result_list")).to_have_count(0)
    tenant_dashboard.shot("the staff tenants page sends alpha's admin to the login")

    # The staff pages do not exist on a tenant's host.
    answer = page.goto(f"{tenant_base(herald_port)}/admin/tenants/tenant/")
    assert answer is not None
    assert answer.status == 404

    # And alpha's admin is no user of the staff dashboard.
    staff = Dashboard(new_page(browser), staff_base(herald_port), tenant_dashboard.screenshots)
    log_in(staff, username=TENANT_ADMIN, password=TENANT_PASSWORD)
    expect(staff.page).to_have_url(re.compile(r"/admin/login/"))
    expect(staff.page.get_by_text("Please enter the correct")).to_be_visible()
    staff.shot("alpha's credentials refused by the staff login")
    staff.open("/admin/tenants/tenant/")
    expect(staff.page).to_have_url(re.compile(r"/admin/login/"))


@pytest.fixture
def delivered_in_alpha() -> Iterator[str]:
    """Delivered and failed messages in alpha, committed and folded into the
    rollups; the messages go again afterwards (the figures, like history, stay)."""
    from datetime import timedelta

    from django.utils import timezone

    from channels_delivery.models import Message, MessageStatus
    from channels_delivery.services.stats import stats_fold
    from rules_engine.models import Event, Subscriber

    external_id = f"browser-{uuid.uuid4().hex[:8]}"

    def seed() -> None:
        now = timezone.now() - timedelta(minutes=2)
        subscriber = Subscriber.objects.create(external_id=external_id)
        for n in range(12):
            event = Event.objects.create(event_type_key="browser.metrics", created_at=now)
            ok = n % 4 != 0
            Message.objects.create(
                event=event,
                subscriber=subscriber,
                channel=Channel.IN_APP if n % 2 else Channel.WEBHOOK,
                status=MessageStatus.DELIVERED if ok else MessageStatus.FAILED,
                created_at=now,
                sent_at=now if ok else None,
                delivered_at=now + timedelta(milliseconds=80 * (n + 1)) if ok else None,
                failed_at=None if ok else now,
                error="" if ok else "HTTP 503: the receiver is down",
            )
        stats_fold()

    def unseed() -> None:
        Message.objects.filter(subscriber__external_id=external_id).delete()
        Event.objects.filter(event_type_key="browser.metrics").delete()
        Subscriber.objects.filter(external_id=external_id).delete()

    in_alpha(seed)
    try:
        yield external_id
    finally:
        in_alpha(unseed)


def test_the_tenant_home_charts_its_delivery(
    tenant_dashboard: Dashboard, delivered_in_alpha: str
) -> None:
    from playwright.sync_api import expect

    dashboard, page = tenant_dashboard, tenant_dashboard.page
    dashboard.open("/admin/?period=24h")
    kpis = page.locator("[data-testid=kpis]")
    expect(kpis.get_by_text("Delivered")).to_be_visible()
    delivered = page.locator("[data-kpi=Delivered]")
    expect(delivered).not_to_have_text("0")
    expect(page.locator("canvas.chart").first).to_be_visible()
    expect(page.get_by_text("HTTP 503: the receiver is down").first).to_be_visible()
    dashboard.shot("the tenant home with data")


def test_staff_see_the_platforms_metrics(
    staff_dashboard: Dashboard, delivered_in_alpha: str
) -> None:
    from playwright.sync_api import expect

    dashboard, page = staff_dashboard, staff_dashboard.page
    dashboard.open("/admin/?period=24h")
    expect(page.locator("[data-kpi=Delivered]")).not_to_have_text("0")
    expect(page.locator("canvas.chart").first).to_be_visible()
    expect(page.get_by_text("Alpha (alpha)").first).to_be_visible()
    expect(page.get_by_text("Top failing tenants")).to_be_visible()
    expect(page.get_by_text("Queues")).to_be_visible()
    # Figures only: the tenant's failure reasons and subscribers are not shown.
    expect(page.get_by_text("HTTP 503: the receiver is down")).to_have_count(0)
    expect(page.get_by_text(delivered_in_alpha)).to_have_count(0)
    dashboard.shot("the platform's metrics")


@dataclass(frozen=True)
class Pipeline:
    event_type: str
    token: str
    recipient: str
    worker_log: list[str]


@pytest.fixture
def pipeline_in_alpha() -> Iterator[Pipeline]:
    """An in-app rule on an event type of this run, an API key, and the real
    pipeline and delivery workers, all against the committed test database."""
    from channels_delivery.models import Message
    from rules_engine.models import Event, Subscriber
    from rules_engine.services.rules import rule_create
    from tenants.services import api_key_create
    from tests.workers import celery_worker

    run = uuid.uuid4().hex[:8]
    event_type, template = f"browser.shipped_{run}", f"browser-inbox-{run}"
    recipient = f"browser-ann-{run}"

    def seed() -> str:
        event_type_save(key=event_type, name="Order shipped (browser test)")
        template_create(
            key=template,
            channel=Channel.IN_APP,
            variants={"en": {"title": "Order {{ event.payload.order }} shipped"}},
            created_by="tests",
        )
        rule_create(
            name=f"Shipped {run}",
            event_type_key=event_type,
            actions=[{"channel": "in_app", "template": template}],
            recipients={"kind": "event"},
            created_by="tests",
        )
        tenant = Tenant.objects.get(slug="alpha")
        return api_key_create(tenant=tenant, name=f"browser {run}", scopes=["events:write"]).token

    def unseed() -> None:
        Message.objects.filter(event__event_type_key=event_type).delete()
        Event.objects.filter(event_type_key=event_type).delete()
        Subscriber.objects.filter(external_id=recipient).delete()
        for rule in Rule.objects.filter(event_type__key=event_type):
            rule_delete(rule=rule)
        for saved_template in Template.objects.filter(key=template):
            template_delete(template=saved_template)
        for saved_type in EventType.objects.filter(key=event_type):
            event_type_delete(event_type=saved_type)
        from tenants.models import ApiKey

        ApiKey.objects.filter(name=f"browser {run}").delete()

    token = in_alpha(seed)
    try:
        log: list[str] = []
        with celery_worker(queues="pipeline,delivery", concurrency=2, output=log):
            yield Pipeline(event_type=event_type, token=token, recipient=recipient, worker_log=log)
    finally:
        in_alpha(unseed)


def test_an_event_sent_through_the_api_is_found_with_its_timeline(
    tenant_dashboard: Dashboard, pipeline_in_alpha: Pipeline, herald_port: int
) -> None:
    import time

    import httpx
    from playwright.sync_api import expect

    from channels_delivery.models import Message

    answer = httpx.post(
        f"http://127.0.0.1:{herald_port}/api/v1/events",
        headers={"Authorization": f"Bearer {pipeline_in_alpha.token}"},
        json={
            "event": pipeline_in_alpha.event_type,
            "to": [{"id": pipeline_in_alpha.recipient, "name": "Ann"}],
            "payload": {"order": "A-1001"},
        },
        timeout=10,
    )
    assert answer.status_code == 202, answer.text

    def delivered() -> str | None:
        found = (
            Message.objects.filter(event__event_type_key=pipeline_in_alpha.event_type)
            .values_list("id", "status")
            .first()
        )
        return str(found[0]) if found and found[1] == "delivered" else None

    deadline, message_id = time.monotonic() + 30, None
    while message_id is None and time.monotonic() < deadline:
        message_id = in_alpha(delivered)
        time.sleep(0.3)
    if message_id is None:
        status = in_alpha(
            lambda: list(
                Message.objects.filter(
                    event__event_type_key=pipeline_in_alpha.event_type
                ).values_list("status", "error")
            )
        )
        tail = "".join(pipeline_in_alpha.worker_log[-40:])
        pytest.fail(f"not delivered within 30 s (messages: {status}); the workers said:\n{tail}")

    dashboard, page = tenant_dashboard, tenant_dashboard.page
    dashboard.open("/admin/channels_delivery/message/")
    row = page.locator("#result_list tbody tr", has_text=pipeline_in_alpha.recipient)
    expect(row).to_have_count(1)
    dashboard.shot("the message in the log")
    row.locator("a").first.click()
    page.wait_for_load_state()
    expect(page).to_have_url(re.compile(message_id))
    expect(page.get_by_text("Order A-1001 shipped").first).to_be_visible()
    expect(page.get_by_text(re.compile("event received", re.IGNORECASE)).first).to_be_visible()
    expect(page.get_by_text(re.compile("rule matched", re.IGNORECASE)).first).to_be_visible()
    expect(page.get_by_text(re.compile("delivered", re.IGNORECASE)).first).to_be_visible()
    dashboard.shot("the message with its timeline")


def test_a_template_is_previewed_as_it_is_typed(
    tenant_dashboard: Dashboard, rule_setup: RuleSetup
) -> None:
    from playwright.sync_api import expect

    dashboard, page = tenant_dashboard, tenant_dashboard.page
    template_id = in_alpha(lambda: Template.objects.get(key=rule_setup.template).pk)
    dashboard.open(f"/admin/rules_engine/template/{template_id}/preview/")
    page.locator("#id_event_type").select_option(rule_setup.event_type)
    page.locator("#id_payload").fill(json.dumps({"total": 250}))
    page.get_by_role("button", name="Preview", exact=True).click()
    result = page.locator("#preview-result")
    expect(result.get_by_text("Big order: 250")).to_be_visible()
    dashboard.shot("the template rendered for the payload")

    # As the author types, without a button: a change re-renders, an error shows.
    variants = page.locator("#id_variants")
    variants.fill(json.dumps({"en": {"text": "VIP order of {{ event.payload.total }}!"}}))
    expect(result.get_by_text("VIP order of 250!")).to_be_visible()
    variants.fill(json.dumps({"en": {"text": "VIP order of {{ event.payload.total"}}))
    expect(result.locator("[data-field-error], [data-errors]").first).to_be_visible()
    dashboard.shot("a template error shown as it is typed")
