"""The tenant dashboard's design tools: a rule's test against a sample event, a
template's live preview, and its test send through the real delivery path."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django_tenants.utils import tenant_context

from channels_delivery.models import Message, MessageStatus
from channels_delivery.services.delivery import message_deliver
from channels_delivery.services.integrations import integration_create
from dashboard.roles import Role, tenant_user_create
from rules_engine.models import Event, EventStatus, EventType, Rule, Subscriber, Template
from rules_engine.services.event_types import event_type_save
from rules_engine.services.pipeline import event_process
from rules_engine.services.rules import rule_create
from rules_engine.services.subscribers import SubscriberProfile, subscriber_upsert
from rules_engine.services.templates import template_create
from rules_engine.services.test_send import TEST_SUBSCRIBER_PREFIX
from rules_engine.templating import TemplateSyntaxProblem, validate_template
from tenants.models import Tenant
from tests.channels_delivery.conftest import Published
from tests.channels_delivery.test_email_provider import Sink, start_server
from tests.conftest import TENANT_PASSWORD

pytestmark = pytest.mark.django_db

OWNER = "admin@alpha.example.com"
SAMPLE = {"order": "A-1", "total": 120}
SCHEMA = {"type": "object", "required": ["order"], "properties": {"order": {"type": "string"}}}
SUBJECT = "Order {{ event.payload.order }} shipped"
HTML = "<p>Hi {{ subscriber.name }}, order {{ event.payload.order }} is on its way.</p>"
BAD_JINJA = "Order {{ event.payload.order"


def login(slug: str, username: str) -> Client:
    client = Client(HTTP_HOST=f"{slug}.localhost")
    response = client.post("/admin/login/", {"username": username, "password": TENANT_PASSWORD})
    assert response.status_code == 302, f"{username} could not sign in on {slug}"
    return client


def design(tenant: Tenant) -> dict[str, int]:
    """An event type with a sample, email and SMS templates, two subscribers and
    a rule sending both channels for big orders."""
    with tenant_context(tenant):
        event_type_save(key="order.shipped", payload_schema=SCHEMA, sample_payload=SAMPLE)
        email = template_create(
            key="shipped-email",
            channel="email",
            variants={"en": {"subject": SUBJECT, "html": HTML}},
            created_by="t",
        ).template
        sms = template_create(
            key="shipped-sms",
            channel="sms",
            variants={"en": {"text": "{{ event.payload.order }} shipped"}},
            created_by="t",
        ).template
        rule = rule_create(
            name="Big orders",
            event_type_key="order.shipped",
            condition="event.payload.total > 100",
            actions=[
                {"channel": "email", "template": "shipped-email"},
                {"channel": "sms", "template": "shipped-sms"},
            ],
            recipients={"kind": "event"},
            created_by="t",
        ).rule
        subscriber_upsert(
            profile=SubscriberProfile(
                external_id="ann", email="ann@example.com", phone="+447700900123", name="Ann"
            )
        )
        subscriber_upsert(
            profile=SubscriberProfile(external_id="bob", email="bob@example.com", name="Bob")
        )
        return {"rule": rule.pk, "email": email.pk, "sms": sms.pk}


@pytest.fixture
def alpha(tenant_a: Tenant) -> Client:
    return login("alpha", OWNER)


@pytest.fixture
def ids(tenant_a: Tenant) -> dict[str, int]:
    return design(tenant_a)


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Publishing to the delivery queues, recorded instead of sent (as in
    tests/channels_delivery/conftest.py)."""
    from channels_delivery.services import dispatch

    sent = Published()
    monkeypatch.setattr(dispatch, "publish_to_delivery", sent.record)
    return sent


@pytest.fixture
def smtp(settings: Any) -> Iterator[tuple[Sink, int]]:
    settings.HERALD_ALLOW_LOOPBACK_URLS = True  # the sink listens on 127.0.0.1
    sink = Sink()
    controller, port = start_server(sink)
    yield sink, port
    controller.stop()


def url(model: str, action: str, pk: int) -> str:
    return reverse(f"tenant_admin:rules_engine_{model}_{action}", args=[pk])


def page(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    return str(response.content.decode())


def template_message(source: str) -> str:
    try:
        validate_template(source)
    except TemplateSyntaxProblem as problem:
        return problem.message
    raise AssertionError(f"{source!r} compiles")


# --- the buttons ----------------------------------------------------------------------


def test_change_pages_offer_the_tools(alpha: Client, ids: dict[str, int]) -> None:
    rule_page = page(alpha.get(url("rule", "change", ids["rule"])))
    assert url("rule", "test_run", ids["rule"]) in rule_page
    assert "Test against sample event" in rule_page
    template_page = page(alpha.get(url("template", "change", ids["email"])))
    assert url("template", "preview", ids["email"]) in template_page
    assert url("template", "send_test", ids["email"]) in template_page
    listing = page(alpha.get(reverse("tenant_admin:rules_engine_rule_changelist")))
    assert url("rule", "test_run", ids["rule"]) in listing


# --- a rule against a sample event ----------------------------------------------------


def test_rule_test_runs_on_the_sample_payload(alpha: Client, ids: dict[str, int]) -> None:
    response = alpha.get(url("rule", "test_run", ids["rule"]))
    assert "Run test" in page(response)
    result = response.context["result"]
    assert result.source == "sample"
    assert result.matched is True  # the sample's total is 120
    # The payload editor starts with the sample.
    assert json.loads(response.context["form"]["payload"].value()) == SAMPLE


def test_rule_test_shows_recipients_rendered_output_and_skips(
    alpha: Client, tenant_a: Tenant, ids: dict[str, int]
) -> None:
    response = alpha.post(
        url("rule", "test_run", ids["rule"]),
        {"payload": json.dumps(SAMPLE), "to": "ann, bob, nobody", "topic": ""},
    )
    content = page(response)
    result = response.context["result"]
    assert result.matched is True
    assert [r.external_id for r in result.recipients] == ["ann", "bob"]
    assert 'data-matched="yes"' in content
    # The recipients table: one row per message, with its channel.
    rows = response.context["recipients_table"]["rows"]
    assert [(row[0], row[2]) for row in rows] == [
        ("ann", "email"),
        ("ann", "sms"),
        ("bob", "email"),
    ]
    # Rendered text as text; the HTML body only inside a sandboxed iframe.
    assert "Order A-1 shipped" in content
    assert "A-1 shipped</pre>" in content  # the SMS
    assert 'sandbox="" referrerpolicy="no-referrer" title="html" srcdoc="&lt;p&gt;Hi Ann' in content
    assert "<p>Hi Ann" not in content
    # Skipped, with reasons.
    skipped = {(s.subscriber, s.channel): s.reason for s in result.skipped}
    assert skipped[("bob", "sms")] == "no phone number"
    assert "nobody" in {s.subscriber for s in result.skipped}
    assert "no phone number" in content
    # Nothing stored, nothing sent.
    with tenant_context(tenant_a):
        assert not Event.objects.exists()
        assert not Message.objects.exists()


def test_rule_test_shows_a_condition_that_can_not_be_evaluated(
    alpha: Client, ids: dict[str, int]
) -> None:
    response = alpha.post(
        url("rule", "test_run", ids["rule"]), {"payload": json.dumps({"order": "A-2"}), "to": "ann"}
    )
    content = page(response)
    result = response.context["result"]
    assert result.matched is False
    assert result.error is not None
    assert result.error.startswith("condition: ")
    assert "data-rule-error" in content
    assert result.error.split(": ", 1)[1].replace("'", "&#x27;") in content


def test_rule_test_names_the_payload_field_the_schema_refuses(
    alpha: Client, ids: dict[str, int]
) -> None:
    response = alpha.post(url("rule", "test_run", ids["rule"]), {"payload": json.dumps({"x": 1})})
    page(response)
    assert response.context["result"] is None
    errors = response.context["form"].errors
    assert any("'order' is a required property" in message for message in errors["payload"])

    response = alpha.post(url("rule", "test_run", ids["rule"]), {"payload": "{not json"})
    page(response)
    assert response.context["result"] is None
    assert response.context["form"].errors["payload"] == ["Enter a valid JSON."]


# --- a template's preview -------------------------------------------------------------


def test_preview_renders_the_saved_version_against_the_sample(
    alpha: Client, ids: dict[str, int]
) -> None:
    response = alpha.get(url("template", "preview", ids["email"]))
    content = page(response)
    preview = response.context["preview"]
    assert preview.error is None
    assert preview.content["subject"] == "Order A-1 shipped"
    assert "Ada Lovelace" in preview.content["html"]  # the sample profile
    assert 'data-field="subject"' in content
    assert 'srcdoc="&lt;p&gt;Hi Ada Lovelace' in content
    assert "<p>Hi Ada" not in content
    # The page refreshes itself as the author types, with the CSRF token.
    assert "setTimeout(refresh, 400)" in content
    assert "X-CSRFToken" in content
    # Admins may send a test from here.
    assert 'id="template-send-form"' in content


def preview_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "variants": json.dumps({"en": {"subject": SUBJECT, "html": HTML}}),
        "fallback_locale": "en",
        "event_type": "order.shipped",
        "payload": json.dumps(SAMPLE),
        "subscriber": "",
        "locale": "",
        "partial": "1",
    }
    data.update(overrides)
    return data


def test_preview_as_you_type_answers_with_the_result_only(
    alpha: Client, ids: dict[str, int]
) -> None:
    edited = {"en": {"subject": "Now {{ event.payload.order|lower }}!", "html": "<b>x</b>"}}
    response = alpha.post(
        url("template", "preview", ids["email"]),
        preview_form(variants=json.dumps(edited), payload=json.dumps({"order": "B-7"})),
    )
    content = page(response)
    assert content.lstrip().startswith('<div class="flex flex-col gap-4" data-preview-result>')
    assert "<html" not in content
    assert "Now b-7!" in content
    # The edit is previewed, not saved.
    response = alpha.get(url("template", "preview", ids["email"]))
    assert response.context["preview"].content["subject"] == "Order A-1 shipped"


def test_preview_equals_what_the_pipeline_renders(
    alpha: Client, tenant_a: Tenant, ids: dict[str, int], delivered: Published
) -> None:
    payload = {"order": "C-3", "total": 500}
    with tenant_context(tenant_a):
        event = Event.objects.create(
            event_type_key="order.shipped",
            payload=payload,
            recipients=["ann"],
            status=EventStatus.QUEUED,
        )
        event_process(event_id=event.id)
        sent = Message.objects.get(event=event, channel="email")
    response = alpha.post(
        url("template", "preview", ids["email"]),
        preview_form(payload=json.dumps(payload), subscriber="ann"),
    )
    page(response)
    preview = response.context["preview"]
    assert preview.error is None
    assert (preview.locale, dict(preview.content)) == (sent.locale, sent.content)


def test_preview_shows_template_errors_at_their_field(alpha: Client, ids: dict[str, int]) -> None:
    response = alpha.post(
        url("template", "preview", ids["email"]),
        preview_form(variants=json.dumps({"en": {"subject": BAD_JINJA, "html": HTML}})),
    )
    content = page(response)
    (subject,) = [f for f in response.context["fields"] if f["name"] == "subject"]
    assert subject["errors"] == [f"en/subject: {template_message(BAD_JINJA)}"]
    assert 'data-field="subject"' in content
    assert template_message(BAD_JINJA).replace("'", "&#x27;") in content

    # A render error (strict, a missing value) lands at its field too.
    strict = {"en": {"subject": SUBJECT, "html": "{{ subscriber.data.plan.name }}"}}
    response = alpha.post(
        url("template", "preview", ids["email"]),
        preview_form(variants=json.dumps(strict), strict="on"),
    )
    content = page(response)
    preview = response.context["preview"]
    assert preview.error_field == "html"
    assert preview.error
    (html,) = [f for f in response.context["fields"] if f["name"] == "html"]
    assert html["errors"] == [preview.error]
    assert "data-field-error" in content


def test_preview_names_an_unknown_subscriber_and_a_refused_payload(
    alpha: Client, ids: dict[str, int]
) -> None:
    response = alpha.post(
        url("template", "preview", ids["email"]),
        preview_form(subscriber="ghost", payload=json.dumps({"total": 1})),
    )
    content = page(response)
    assert response.context["preview"] is None
    assert "&#x27;order&#x27; is a required property" in content


# --- sending a test -------------------------------------------------------------------


def test_send_test_to_an_address_is_delivered_for_real(
    alpha: Client,
    tenant_a: Tenant,
    ids: dict[str, int],
    delivered: Published,
    smtp: tuple[Sink, int],
    django_capture_on_commit_callbacks: Any,
) -> None:
    sink, port = smtp
    with tenant_context(tenant_a):
        integration_create(
            channel="email",
            provider="smtp",
            name="main",
            config={
                "host": "127.0.0.1",
                "port": port,
                "security": "none",
                "from_email": "Alpha <no-reply@alpha.example>",
                "timeout": 3,
            },
        )
    with django_capture_on_commit_callbacks(execute=True):
        response = alpha.post(
            url("template", "send_test", ids["email"]),
            {
                "event_type": "order.shipped",
                "payload": json.dumps({"order": "T-9"}),
                "subscriber": "",
                "address": "qa@example.com",
            },
        )
    content = page(response)
    sent = response.context["sent"]
    assert sent is not None, response.context["form"].errors
    assert "data-sent" in content
    assert response.context["message_url"] in content
    with tenant_context(tenant_a):
        message = Message.objects.select_related("subscriber", "event").get()
        assert message.subscriber is not None
        assert message.subscriber.external_id == f"{TEST_SUBSCRIBER_PREFIX}qa@example.com"
        assert message.subscriber.email == "qa@example.com"
        assert (message.status, message.channel) == (MessageStatus.QUEUED, "email")
        assert message.content["subject"] == "Order T-9 shipped"
        assert message.template_version is not None
        event = message.event
        assert event.status == EventStatus.PROCESSED
        assert event.event_type_key == "order.shipped"
        assert event.outcome["reason"] == f"test send from the dashboard by {OWNER}"
        # Handed to delivery once committed, like any message...
        assert delivered == [(tenant_a.schema_name, [str(message.id)], 0.0)]
        # ...and the delivery worker sends it.
        report = message_deliver(message_id=message.id)
        assert (report.status, report.outcome) == ("sent", "accepted")
    assert [envelope.rcpt_tos for envelope in sink.received] == [["qa@example.com"]]
    assert b"Order T-9 shipped" in (sink.received[0].original_content or b"")


def test_send_test_to_a_subscriber_and_its_errors(
    alpha: Client, tenant_a: Tenant, ids: dict[str, int], delivered: Published
) -> None:
    target = url("template", "send_test", ids["sms"])
    base = {"event_type": "order.shipped", "payload": json.dumps(SAMPLE)}

    response = alpha.post(target, {**base, "subscriber": "", "address": ""})
    page(response)
    errors = response.context["form"].errors
    assert errors["subscriber"] == ["give a subscriber's id or an address to send to"]
    assert errors["address"] == errors["subscriber"]

    response = alpha.post(target, {**base, "subscriber": "ghost", "address": ""})
    page(response)
    assert response.context["form"].errors["subscriber"] == ["no subscriber 'ghost' in this tenant"]

    response = alpha.post(target, {**base, "subscriber": "bob", "address": ""})
    page(response)
    assert response.context["form"].errors["subscriber"] == ["bob can not get sms: no phone number"]

    response = alpha.post(target, {**base, "subscriber": "", "address": "not-a-phone"})
    page(response)
    assert "is not an E.164 number" in response.context["form"].errors["address"][0]
    with tenant_context(tenant_a):
        assert not Message.objects.exists()
        assert not Event.objects.exists()

    response = alpha.post(target, {**base, "subscriber": "ann", "address": ""})
    page(response)
    assert response.context["sent"] is not None
    with tenant_context(tenant_a):
        message = Message.objects.get()
        assert message.subscriber is not None
        assert message.subscriber.external_id == "ann"
        assert message.content == {"text": "A-1 shipped"}


# --- who may use them -----------------------------------------------------------------


def test_another_tenants_rules_and_templates_are_not_found(
    alpha: Client, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    beta = design(tenant_b)
    with tenant_context(tenant_a):
        assert not Rule.objects.filter(pk=beta["rule"]).exists()
        assert not Template.objects.filter(pk__in=[beta["email"], beta["sms"]]).exists()
    assert alpha.get(url("rule", "test_run", beta["rule"])).status_code == 404
    assert alpha.post(url("rule", "test_run", beta["rule"]), {"payload": "{}"}).status_code == 404
    assert alpha.get(url("template", "preview", beta["email"])).status_code == 404
    assert alpha.post(url("template", "preview", beta["email"]), preview_form()).status_code == 404
    assert alpha.get(url("template", "send_test", beta["email"])).status_code == 404
    response = alpha.post(
        url("template", "send_test", beta["email"]),
        {"event_type": "order.shipped", "payload": "{}", "address": "x@example.com"},
    )
    assert response.status_code == 404
    with tenant_context(tenant_b):
        assert not Message.objects.exists()


def test_a_viewer_may_test_and_preview_but_not_send(tenant_a: Tenant, ids: dict[str, int]) -> None:
    with tenant_context(tenant_a):
        viewer: User = tenant_user_create(
            email="viewer@alpha.example.com", password=TENANT_PASSWORD, role=Role.VIEWER
        )
        assert not viewer.has_perm("rules_engine.change_template")
    client = login("alpha", viewer.username)
    assert client.get(url("rule", "test_run", ids["rule"])).status_code == 200
    preview = page(client.get(url("template", "preview", ids["email"])))
    assert 'id="template-send-form"' not in preview
    # The rule's page shows its current version to the reader, as text.
    rule_page = page(client.get(url("rule", "change", ids["rule"])))
    assert "event.payload.total &gt; 100" in rule_page
    assert "sms with template shipped-sms" in rule_page
    assert "The subscribers the event names" in rule_page
    change_page = page(client.get(url("template", "change", ids["email"])))
    assert "en · subject" in change_page
    assert "Order {{ event.payload.order }} shipped" in change_page
    assert "&lt;p&gt;Hi {{ subscriber.name }}" in change_page
    assert url("template", "send_test", ids["email"]) not in change_page
    assert client.get(url("template", "send_test", ids["email"])).status_code == 403
    response = client.post(
        url("template", "send_test", ids["email"]),
        {"event_type": "order.shipped", "payload": "{}", "address": "x@example.com"},
    )
    assert response.status_code == 403
    with tenant_context(tenant_a):
        assert not Message.objects.exists()
        assert not Subscriber.objects.filter(external_id__startswith=TEST_SUBSCRIBER_PREFIX)


# --- the forms the tools depend on ----------------------------------------------------


def test_an_event_types_sample_must_match_its_schema(
    alpha: Client, tenant_a: Tenant, ids: dict[str, int]
) -> None:
    with tenant_context(tenant_a):
        event_type_id = EventType.objects.get(key="order.shipped").pk
    form = {
        "name": "Order shipped",
        "description": "",
        "category": "",
        "payload_schema": json.dumps(SCHEMA),
        "sample_payload": json.dumps({"order": 7}),
        "_save": "Save",
    }
    response = alpha.post(
        reverse("tenant_admin:rules_engine_eventtype_change", args=[event_type_id]), form
    )
    page(response)
    assert response.context["adminform"].form.errors["sample_payload"] == [
        "order: 7 is not of type 'string'"
    ]
    with tenant_context(tenant_a):
        assert EventType.objects.get(pk=event_type_id).sample_payload == SAMPLE


def test_a_rules_unset_options_show_as_empty_boxes(alpha: Client, ids: dict[str, int]) -> None:
    form = page(alpha.get(url("rule", "change", ids["rule"])))
    for name in ("digest", "throttle", "send_window"):
        start = form.index(f'name="{name}"')
        box = form[start : form.index("</textarea>", start)]
        assert box.rstrip().endswith(">"), f"{name} shows {box[box.rindex('>') + 1 :]!r}"
