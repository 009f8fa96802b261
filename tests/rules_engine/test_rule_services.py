"""Rules, templates and layouts: the services and selectors, without HTTP.

Versioning (an edit makes version n+1 and keeps the old ones), validation
(every error names its field as a JSON pointer), what refuses deletion, the
pipeline's one-query selectors, and two concurrent edits in two connections.
"""

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message
from rules_engine.cel import CelCompileError, validate_expression
from rules_engine.models import (
    Event,
    EventType,
    Layout,
    Rule,
    RuleVersion,
    Template,
    TemplateVersion,
    VersionImmutable,
)
from rules_engine.selectors.rules import rules_for_event_type
from rules_engine.selectors.templates import template_versions_current
from rules_engine.services.event_types import EventTypeInUse, event_type_delete, event_type_save
from rules_engine.services.rules import RuleSaved, rule_create, rule_delete, rule_update
from rules_engine.services.subscribers import InvalidInput
from rules_engine.services.templates import (
    InUse,
    TemplateExists,
    layout_delete,
    layout_save,
    template_create,
    template_delete,
    template_update,
)
from rules_engine.templating import TemplateSyntaxProblem, validate_template
from tenants.models import Tenant
from tests.threads import in_own_connection

pytestmark = pytest.mark.django_db

EMAIL = {"subject": "Your order {{ event.payload.order_id }}", "html": "<p>Shipped</p>"}
LAYOUT_HTML = "<html><body>{{ content }}</body></html>"


@pytest.fixture
def setup(in_tenant_a: Tenant) -> None:
    """An event type, an email and an SMS template in tenant alpha."""
    event_type_save(key="order.shipped")
    template_create(
        key="shipped-email", channel=Channel.EMAIL, variants={"en": EMAIL}, created_by="test"
    )
    template_create(
        key="shipped-sms",
        channel=Channel.SMS,
        variants={"en": {"text": "Shipped"}},
        created_by="test",
    )


def make_rule(**overrides: Any) -> RuleSaved:
    fields: dict[str, Any] = {
        "name": "Shipping notice",
        "event_type_key": "order.shipped",
        "actions": [{"channel": "email", "template": "shipped-email"}],
        "recipients": {"kind": "event"},
        "created_by": "api:hk_test_abcdefgh",
    }
    return rule_create(**{**fields, **overrides})


def compiler_message(source: str) -> str:
    try:
        validate_expression(source)
    except CelCompileError as error:
        return error.message
    raise AssertionError(f"{source!r} compiles")


def template_message(source: str, *, html: bool = False) -> str:
    try:
        validate_template(source, html=html)
    except TemplateSyntaxProblem as problem:
        return problem.message
    raise AssertionError(f"{source!r} compiles")


def refused(call: Callable[[], Any]) -> dict[str, str]:
    """The field errors ``call`` is refused with, by pointer."""
    with pytest.raises(InvalidInput) as raised:
        call()
    return {error.pointer: error.detail for error in raised.value.errors}


# --- rules: create and read ------------------------------------------------------


def test_create_makes_version_1(setup: None) -> None:
    saved = make_rule(
        condition="event.payload.total > 100",
        delay_seconds=60,
        digest={"window_seconds": 3600},
        throttle={"limit": 3, "window_seconds": 86400},
        send_window={"start": "22:00", "end": "06:00"},
        order=5,
    )
    assert saved.new_version
    rule = Rule.objects.get(pk=saved.rule.pk)
    assert (rule.name, rule.event_type.key, rule.enabled, rule.order) == (
        "Shipping notice",
        "order.shipped",
        True,
        5,
    )
    assert rule.current_version == 1
    version = RuleVersion.objects.get(rule=rule)
    assert version.version == 1
    assert version.condition == "event.payload.total > 100"
    assert version.actions == [{"channel": "email", "template": "shipped-email"}]
    assert version.recipients == {"kind": "event"}
    assert version.delay_seconds == 60
    assert version.digest == {"key": "", "window_seconds": 3600}
    assert version.throttle == {"limit": 3, "window_seconds": 86400}
    assert version.send_window == {"start": "22:00", "end": "06:00"}
    assert version.created_by == "api:hk_test_abcdefgh"


@pytest.mark.parametrize(
    ("recipients", "stored"),
    [
        ({"kind": "event"}, {"kind": "event"}),
        (
            {"kind": "topic", "topic": "project:42.watchers"},
            {"kind": "topic", "topic": "project:42.watchers"},
        ),
        ({"kind": "broadcast"}, {"kind": "broadcast", "filter": ""}),
        (
            {"kind": "broadcast", "filter": 'subscriber.locale == "de"'},
            {"kind": "broadcast", "filter": 'subscriber.locale == "de"'},
        ),
    ],
)
def test_recipient_selectors(
    setup: None, recipients: dict[str, str], stored: dict[str, str]
) -> None:
    assert make_rule(recipients=recipients).version.recipients == stored


def test_rules_for_event_type_is_one_query_in_evaluation_order(
    setup: None, django_assert_num_queries: Any
) -> None:
    late = make_rule(name="late", order=10).rule
    first = make_rule(name="first", order=-1).rule
    tie_a = make_rule(name="tie a", order=3).rule
    tie_b = make_rule(name="tie b", order=3).rule
    make_rule(name="off", enabled=False)
    event_type_save(key="other.type")
    make_rule(name="elsewhere", event_type_key="other.type")
    rule_update(rule=tie_a, condition="true", created_by="test")  # now at version 2

    with django_assert_num_queries(1):
        found = rules_for_event_type("order.shipped")
        names = [(rule.name, version.version, version.condition) for rule, version in found]
    assert [rule.pk for rule, _ in found] == [first.pk, tie_a.pk, tie_b.pk, late.pk]
    assert names == [("first", 1, ""), ("tie a", 2, "true"), ("tie b", 1, ""), ("late", 1, "")]
    assert rules_for_event_type("nothing.here") == []


# --- rules: versioning -----------------------------------------------------------


def test_editing_what_the_rule_does_makes_a_new_version(setup: None) -> None:
    rule = make_rule(condition="event.payload.total > 100").rule
    saved = rule_update(
        rule=rule,
        condition="event.payload.total > 200",
        actions=[
            {"channel": "email", "template": "shipped-email"},
            {"channel": "sms", "template": "shipped-sms"},
        ],
        created_by="admin:ada",
    )
    assert saved.new_version
    assert saved.version.version == 2
    assert saved.rule.current_version == 2
    versions = {v.version: v for v in RuleVersion.objects.filter(rule=rule)}
    assert versions[1].condition == "event.payload.total > 100"
    assert versions[1].actions == [{"channel": "email", "template": "shipped-email"}]
    assert versions[2].condition == "event.payload.total > 200"
    assert len(versions[2].actions) == 2
    assert versions[2].recipients == {"kind": "event"}  # unchanged fields carried over
    assert versions[2].created_by == "admin:ada"
    assert Rule.objects.get(pk=rule.pk).current_version == 2


def test_plain_fields_and_unchanged_values_make_no_version(setup: None) -> None:
    rule = make_rule(condition="true").rule
    saved = rule_update(
        rule=rule, name="Renamed", enabled=False, order=7, condition="true", created_by="t"
    )
    assert not saved.new_version
    assert saved.version.version == 1
    rule.refresh_from_db()
    assert (rule.name, rule.enabled, rule.order, rule.current_version) == ("Renamed", False, 7, 1)
    assert RuleVersion.objects.filter(rule=rule).count() == 1


def test_null_clears_an_option_in_a_new_version(setup: None) -> None:
    rule = make_rule(digest={"window_seconds": 600}).rule
    saved = rule_update(rule=rule, digest=None, created_by="t")
    assert saved.version.version == 2
    assert saved.version.digest is None
    assert RuleVersion.objects.get(rule=rule, version=1).digest == {
        "key": "",
        "window_seconds": 600,
    }


def test_a_saved_version_can_not_be_edited(setup: None) -> None:
    version = make_rule().version
    version.condition = "false"
    with pytest.raises(VersionImmutable):
        version.save()
    assert RuleVersion.objects.get(pk=version.pk).condition == ""


def test_messages_keep_the_versions_that_made_them(setup: None) -> None:
    saved = make_rule()
    template_version = template_versions_current(["shipped-email"])["shipped-email"]
    event = Event.objects.create(event_type_key="order.shipped")
    message = Message.objects.create(
        event=event,
        channel=Channel.EMAIL,
        rule_version=saved.version,
        template_version=template_version,
        locale="en",
    )
    rule_update(rule=saved.rule, condition="false", created_by="t")
    template_update(
        template=template_version.template,
        variants={"en": {**EMAIL, "subject": "New subject"}},
        created_by="t",
    )
    message.refresh_from_db()
    assert message.rule_version is not None
    assert message.rule_version.version == 1
    assert message.template_version is not None
    assert message.template_version.version == 1
    assert message.template_version.variants == {"en": EMAIL}

    rule_delete(rule=saved.rule)
    message.refresh_from_db()
    assert message.rule_version is None
    assert message.template_version_id == template_version.pk


# --- rules: validation -----------------------------------------------------------

BAD_CEL = "event.payload.total >"


@pytest.mark.parametrize(
    ("overrides", "pointer", "detail"),
    [
        ({"name": ""}, "/name", "must not be empty"),
        ({"name": "x" * 201}, "/name", "at most 200"),
        ({"order": 1_000_001}, "/order", "-1000000 to 1000000"),
        ({"event_type_key": "no.such.type"}, "/event_type", "no event type 'no.such.type'"),
        ({"actions": []}, "/actions", "at least 1"),
        ({"actions": [{"channel": "fax", "template": "t"}]}, "/actions/0/channel", "'email'"),
        ({"actions": [{"channel": "email"}]}, "/actions/0/template", "Field required"),
        (
            {"actions": [{"channel": "email", "template": "shipped-email", "x": 1}]},
            "/actions/0/x",
            "Extra inputs",
        ),
        (
            {
                "actions": [
                    {"channel": "email", "template": "shipped-email"},
                    {"channel": "email", "template": "shipped-email"},
                ]
            },
            "/actions",
            "actions 0 and 1 both send on 'email'",
        ),
        (
            {"actions": [{"channel": "email", "template": "nope"}]},
            "/actions/0/template",
            "no template 'nope'",
        ),
        (
            {"actions": [{"channel": "email", "template": "shipped-sms"}]},
            "/actions/0/template",
            "template 'shipped-sms' is for the 'sms' channel, not 'email'",
        ),
        ({"recipients": {}}, "/recipients/kind", "Field required"),
        ({"recipients": {"kind": "everyone"}}, "/recipients/kind", "'broadcast'"),
        ({"recipients": {"kind": "topic"}}, "/recipients/topic", "required when kind is 'topic'"),
        (
            {"recipients": {"kind": "topic", "topic": "Not A Key"}},
            "/recipients/topic",
            "is not a topic key",
        ),
        (
            {"recipients": {"kind": "event", "topic": "news"}},
            "/recipients/topic",
            "only allowed when kind is 'topic'",
        ),
        (
            {"recipients": {"kind": "topic", "topic": "news", "filter": "true"}},
            "/recipients/filter",
            "only allowed when kind is 'broadcast'",
        ),
        ({"recipients": {"kind": "event", "x": 1}}, "/recipients/x", "Extra inputs"),
        ({"delay_seconds": -1}, "/delay_seconds", "greater than or equal to 0"),
        ({"delay_seconds": 30 * 86400 + 1}, "/delay_seconds", "less than or equal to 2592000"),
        (
            {"digest": {"window_seconds": 59}},
            "/digest/window_seconds",
            "greater than or equal to 60",
        ),
        ({"digest": {"window_seconds": 7 * 86400 + 1}}, "/digest/window_seconds", "604800"),
        ({"digest": {}}, "/digest/window_seconds", "Field required"),
        (
            {"throttle": {"limit": 0, "window_seconds": 60}},
            "/throttle/limit",
            "greater than or equal to 1",
        ),
        (
            {"throttle": {"limit": 1, "window_seconds": 30 * 86400 + 1}},
            "/throttle/window_seconds",
            "less than or equal to 2592000",
        ),
        ({"send_window": {"start": "24:00", "end": "06:00"}}, "/send_window/start", "HH:MM"),
        ({"send_window": {"start": "22:00", "end": "6:00"}}, "/send_window/end", "HH:MM"),
        ({"send_window": {"start": "09:00", "end": "09:00"}}, "/send_window/end", "must differ"),
        ({"send_window": {"start": "09:00"}}, "/send_window/end", "Field required"),
    ],
)
def test_create_refuses(setup: None, overrides: dict[str, Any], pointer: str, detail: str) -> None:
    errors = refused(lambda: make_rule(**overrides))
    assert pointer in errors, errors
    assert detail in errors[pointer]
    assert not Rule.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "pointer", "source"),
    [
        ({"condition": BAD_CEL}, "/condition", BAD_CEL),
        ({"recipients": {"kind": "broadcast", "filter": BAD_CEL}}, "/recipients/filter", BAD_CEL),
        ({"digest": {"key": BAD_CEL, "window_seconds": 60}}, "/digest/key", BAD_CEL),
        ({"condition": "os.system('ls')"}, "/condition", "os.system('ls')"),
    ],
)
def test_invalid_cel_is_refused_with_the_compilers_message(
    setup: None, overrides: dict[str, Any], pointer: str, source: str
) -> None:
    assert refused(lambda: make_rule(**overrides)) == {pointer: compiler_message(source)}


def test_every_error_is_reported_at_once(setup: None) -> None:
    errors = refused(
        lambda: make_rule(
            name="",
            event_type_key="nope",
            condition=BAD_CEL,
            recipients={"kind": "topic"},
        )
    )
    assert set(errors) == {"/name", "/event_type", "/condition", "/recipients/topic"}


def test_update_refuses_and_keeps_the_rule(setup: None) -> None:
    rule = make_rule(condition="true").rule
    errors = refused(
        lambda: rule_update(
            rule=rule, name="", condition=BAD_CEL, throttle={"limit": 0}, created_by="t"
        )
    )
    assert set(errors) == {"/name", "/condition", "/throttle/limit", "/throttle/window_seconds"}
    rule.refresh_from_db()
    assert (rule.name, rule.current_version) == ("Shipping notice", 1)
    assert RuleVersion.objects.get(rule=rule).condition == "true"


def test_update_refuses_unknown_fields(setup: None) -> None:
    rule = make_rule().rule
    with pytest.raises(TypeError, match="event_type_key"):
        rule_update(rule=rule, event_type_key="other", created_by="t")  # type: ignore[call-arg]


# --- deleting what is in use ---------------------------------------------------


def test_a_template_in_a_current_rule_version_can_not_be_deleted(setup: None) -> None:
    rule = make_rule().rule
    template = Template.objects.get(key="shipped-email")
    with pytest.raises(InUse) as raised:
        template_delete(template=template)
    assert raised.value.users == [f"rule:{rule.pk}"]
    assert "Shipping notice" in str(raised.value)

    # Only the current version counts: version 1 keeps naming the template.
    template_create(
        key="other-email", channel=Channel.EMAIL, variants={"en": EMAIL}, created_by="t"
    )
    rule_update(
        rule=rule, actions=[{"channel": "email", "template": "other-email"}], created_by="t"
    )
    template_delete(template=template)
    assert not Template.objects.filter(key="shipped-email").exists()
    assert not TemplateVersion.objects.filter(template_id=template.pk).exists()
    assert RuleVersion.objects.get(rule=rule, version=1).actions[0]["template"] == "shipped-email"


def test_an_event_type_with_rules_can_not_be_deleted(setup: None) -> None:
    rule = make_rule(enabled=False).rule
    event_type = EventType.objects.get(key="order.shipped")
    with pytest.raises(EventTypeInUse) as raised:
        event_type_delete(event_type=event_type)
    assert raised.value.rule_ids == [rule.pk]
    rule_delete(rule=rule)
    event_type_delete(event_type=event_type)
    assert not EventType.objects.filter(key="order.shipped").exists()


def test_a_layout_in_a_current_template_version_can_not_be_deleted(setup: None) -> None:
    layout = layout_save(key="brand", html=LAYOUT_HTML).layout
    template = Template.objects.get(key="shipped-email")
    template_update(template=template, layout="brand", created_by="t")
    with pytest.raises(InUse) as raised:
        layout_delete(layout=layout)
    assert raised.value.users == ["template:shipped-email"]

    template_update(template=template, layout=None, created_by="t")
    layout_delete(layout=layout)
    assert not Layout.objects.exists()
    # The version that used it stays, without the link.
    assert TemplateVersion.objects.get(template=template, version=2).layout_id is None


# --- templates -------------------------------------------------------------------


def test_template_create_and_update_make_versions(in_tenant_a: Tenant) -> None:
    saved = template_create(
        key="welcome",
        channel=Channel.EMAIL,
        name="Welcome",
        variants={"en": EMAIL, "pt_br": {**EMAIL, "subject": "Olá"}},
        fallback_locale="en",
        created_by="api:hk_test_1",
    )
    assert saved.version.version == 1
    assert saved.version.variants == {"en": EMAIL, "pt-BR": {**EMAIL, "subject": "Olá"}}
    assert saved.version.fallback_locale == "en"
    assert saved.version.strict is False

    renamed = template_update(template=saved.template, name="Hello", created_by="t")
    assert not renamed.new_version
    assert renamed.template.name == "Hello"

    layout_save(key="brand", html=LAYOUT_HTML)
    edited = template_update(
        template=saved.template, strict=True, layout="brand", created_by="admin:ada"
    )
    assert edited.new_version
    assert edited.version.version == 2
    assert edited.version.strict is True
    assert edited.version.layout is not None
    assert edited.version.layout.key == "brand"
    assert edited.version.variants == saved.version.variants
    assert edited.version.created_by == "admin:ada"
    first = TemplateVersion.objects.get(template=saved.template, version=1)
    assert (first.strict, first.layout_id) == (False, None)


def test_a_single_variant_is_its_own_fallback(in_tenant_a: Tenant) -> None:
    saved = template_create(
        key="sms", channel=Channel.SMS, variants={"de": {"text": "Hallo"}}, created_by="t"
    )
    assert saved.version.fallback_locale == "de"


def test_template_key_is_unique(in_tenant_a: Tenant) -> None:
    template_create(key="sms", channel=Channel.SMS, variants={"en": {"text": "a"}}, created_by="t")
    with pytest.raises(TemplateExists):
        template_create(
            key="sms", channel=Channel.SMS, variants={"en": {"text": "b"}}, created_by="t"
        )


BAD_JINJA = "Hello {{ subscriber.name"


@pytest.mark.parametrize(
    ("fields", "pointer", "detail"),
    [
        ({"key": "Not Valid"}, "/key", "1 to 100 characters"),
        ({"channel": "fax"}, "/channel", "'fax' is not a channel"),
        ({"variants": {}}, "/variants", "at least one locale"),
        ({"variants": {"english": EMAIL}}, "/variants/english", "not a locale code"),
        ({"variants": {"en": {"html": "<p>x</p>"}}}, "/variants/en/subject", "required"),
        ({"variants": {"en": {**EMAIL, "body": "x"}}}, "/variants/en/body", "no field 'body'"),
        ({"variants": {"en": EMAIL, "de": EMAIL}}, "/fallback_locale", "required with more"),
        ({"variants": {"en": EMAIL}, "fallback_locale": "fr"}, "/fallback_locale", "not one of"),
        (
            {"variants": {"en": EMAIL, "EN": EMAIL}, "fallback_locale": "en"},
            "/variants/EN",
            "twice",
        ),
        ({"layout": "no-such-layout"}, "/layout", "no layout 'no-such-layout'"),
        ({"name": "x" * 201}, "/name", "at most 200"),
    ],
)
def test_template_create_refuses(
    in_tenant_a: Tenant, fields: dict[str, Any], pointer: str, detail: str
) -> None:
    arguments: dict[str, Any] = {
        "key": "welcome",
        "channel": Channel.EMAIL,
        "variants": {"en": EMAIL},
        "created_by": "t",
    }
    errors = refused(lambda: template_create(**{**arguments, **fields}))
    assert pointer in errors, errors
    assert detail in errors[pointer]
    assert not Template.objects.exists()


def test_template_syntax_errors_name_the_locale_and_field(in_tenant_a: Tenant) -> None:
    errors = refused(
        lambda: template_create(
            key="welcome",
            channel=Channel.EMAIL,
            variants={"en": EMAIL, "de": {"subject": BAD_JINJA, "html": f"<p>{BAD_JINJA}</p>"}},
            fallback_locale="en",
            created_by="t",
        )
    )
    assert errors == {
        "/variants/de/subject": template_message(BAD_JINJA),
        "/variants/de/html": template_message(f"<p>{BAD_JINJA}</p>", html=True),
    }


def test_only_email_templates_have_a_layout(in_tenant_a: Tenant) -> None:
    layout_save(key="brand", html=LAYOUT_HTML)
    errors = refused(
        lambda: template_create(
            key="sms",
            channel=Channel.SMS,
            variants={"en": {"text": "x"}},
            layout="brand",
            created_by="t",
        )
    )
    assert errors == {"/layout": "only email templates have a layout"}


def test_template_update_refuses_and_keeps_the_version(setup: None) -> None:
    template = Template.objects.get(key="shipped-email")
    errors = refused(
        lambda: template_update(
            template=template, variants={"en": {"subject": BAD_JINJA}}, created_by="t"
        )
    )
    assert errors == {
        "/variants/en/subject": template_message(BAD_JINJA),
        "/variants/en/html": "'email' templates need at least one of: html, text",
    }
    template.refresh_from_db()
    assert template.current_version == 1
    assert TemplateVersion.objects.get(template=template).variants == {"en": EMAIL}


def test_template_versions_current_is_one_query(
    setup: None, django_assert_num_queries: Any
) -> None:
    template_update(
        template=Template.objects.get(key="shipped-sms"),
        variants={"en": {"text": "v2"}},
        created_by="t",
    )
    with django_assert_num_queries(1):
        current = template_versions_current(["shipped-email", "shipped-sms", "missing"])
        summary = {
            key: (version.version, version.template.channel, version.layout)
            for key, version in current.items()
        }
    assert summary == {"shipped-email": (1, "email", None), "shipped-sms": (2, "sms", None)}


# --- layouts ---------------------------------------------------------------------


def test_layout_save_creates_then_replaces(in_tenant_a: Tenant) -> None:
    created = layout_save(key="brand", name="Brand", html=LAYOUT_HTML, text="{{ content }}\n--")
    assert created.created
    replaced = layout_save(key="brand", html="<div>{{content}}</div>")
    assert not replaced.created
    layout = Layout.objects.get(key="brand")
    assert (layout.name, layout.html, layout.text) == ("", "<div>{{content}}</div>", "")


@pytest.mark.parametrize(
    ("fields", "pointer", "detail"),
    [
        ({"html": "<p>no content mark</p>"}, "/html", "must contain {{ content }}"),
        ({"html": ""}, "/html", "must be an HTML template"),
        ({"key": "Bad Key"}, "/key", "1 to 100 characters"),
    ],
)
def test_layout_save_refuses(
    in_tenant_a: Tenant, fields: dict[str, Any], pointer: str, detail: str
) -> None:
    errors = refused(lambda: layout_save(**{"key": "brand", "html": LAYOUT_HTML, **fields}))
    assert pointer in errors, errors
    assert detail in errors[pointer]
    assert not Layout.objects.exists()


def test_layout_syntax_errors_are_the_compilers(in_tenant_a: Tenant) -> None:
    html = "<div>{{ content }}{% if %}</div>"
    errors = refused(lambda: layout_save(key="brand", html=html, text=BAD_JINJA))
    assert errors == {
        "/html": template_message(html, html=True),
        "/text": template_message(BAD_JINJA),
    }


# --- two edits at once -------------------------------------------------------------


@pytest.fixture
def committed_rule(tenant_a: Tenant) -> Iterator[int]:
    """A rule committed in tenant alpha (other connections see it), removed afterwards."""

    def make() -> int:
        with tenant_context(tenant_a):
            event_type_save(key="race.type")
            template_create(
                key="race-sms", channel=Channel.SMS, variants={"en": {"text": "x"}}, created_by="t"
            )
            return int(
                make_rule(
                    event_type_key="race.type",
                    actions=[{"channel": "sms", "template": "race-sms"}],
                ).rule.pk
            )

    def clean() -> None:
        with tenant_context(tenant_a):
            Rule.objects.filter(event_type__key="race.type").delete()
            EventType.objects.filter(key="race.type").delete()
            Template.objects.filter(key="race-sms").delete()

    rule_id = in_own_connection(make)
    try:
        yield rule_id
    finally:
        in_own_connection(clean)


def _waiting_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def test_two_concurrent_edits_get_consecutive_versions(
    tenant_a: Tenant, committed_rule: int
) -> None:
    """The second edit reads the rule before the first commits; the row lock
    makes it wait and then build on version 2, not collide with it."""
    first_has_lock = threading.Event()
    release_first = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with tenant_context(tenant_a), transaction.atomic():
                rule = Rule.objects.get(pk=committed_rule)
                rule_update(rule=rule, condition="event.payload.n == 1", created_by="first")
                first_has_lock.set()
                release_first.wait(20)
        except BaseException as error:
            errors.append(error)
            first_has_lock.set()
        finally:
            connection.close()

    def second() -> None:
        try:
            first_has_lock.wait(20)
            with tenant_context(tenant_a):
                rule = Rule.objects.get(pk=committed_rule)
                assert rule.current_version == 1  # the first edit is not committed yet
                rule_update(rule=rule, condition="event.payload.n == 2", created_by="second")
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while not in_own_connection(_waiting_for_a_lock) and time.monotonic() < deadline:
        time.sleep(0.05)
    release_first.set()
    for thread in threads:
        thread.join(30)
    assert not errors, errors

    def versions() -> list[tuple[int, str, str]]:
        with tenant_context(tenant_a):
            return list(
                RuleVersion.objects.filter(rule_id=committed_rule)
                .order_by("version")
                .values_list("version", "condition", "created_by")
            )

    assert in_own_connection(versions) == [
        (1, "", "api:hk_test_abcdefgh"),
        (2, "event.payload.n == 1", "first"),
        (3, "event.payload.n == 2", "second"),
    ]
