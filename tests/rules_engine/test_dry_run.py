"""A rule's dry run: the service and POST /api/v1/rules/{id}/test. Nothing is written."""

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from channels_delivery.models import Message
from rules_engine.event_types import event_types_forget
from rules_engine.models import Event, EventStatus, Rule, Subscriber
from rules_engine.services.dry_run import DryRunNotFound, DryRunResult, rule_dry_run
from rules_engine.services.event_types import event_type_save
from rules_engine.services.pipeline import event_process
from rules_engine.services.preferences import PreferenceSetting, preference_subscriber_set
from rules_engine.services.rules import rule_create, rule_update
from rules_engine.services.subscribers import InvalidInput, SubscriberProfile, subscriber_upsert
from rules_engine.services.templates import template_create
from rules_engine.services.topics import topic_create, topic_subscribers_add
from tenants.models import ApiScope, Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

EMAIL = {
    "en": {
        "subject": "Order {{ event.payload.order }} shipped",
        "text": "Hi {{ subscriber.name }}, order {{ event.payload.order }} is on its way.",
    },
    "de": {"subject": "Bestellung {{ event.payload.order }} versandt", "text": "Hallo!"},
}
SMS = {"en": {"text": "Order {{ event.payload.order }} shipped"}}
SAMPLE = {"order": "S-1"}


def declare(tenant: Tenant, **options: Any) -> None:
    fields: dict[str, Any] = {
        "key": "order.shipped",
        "category": "orders",
        "sample_payload": SAMPLE,
    }
    fields.update(options)
    event_type_save(**fields)
    event_types_forget(schema_name=tenant.schema_name)


@pytest.fixture
def schema(tenant_a: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant_a):
        declare(tenant_a)
        event_type_save(key="order.paid")
        template_create(
            key="shipped-email",
            channel="email",
            variants=EMAIL,
            fallback_locale="en",
            created_by="t",
        )
        template_create(key="shipped-sms", channel="sms", variants=SMS, created_by="t")
        yield tenant_a
        event_types_forget(schema_name=tenant_a.schema_name)


def person(external_id: str, **fields: Any) -> Subscriber:
    return subscriber_upsert(
        profile=SubscriberProfile(external_id=external_id, **fields)
    ).subscriber


def rule(**options: Any) -> Rule:
    fields: dict[str, Any] = {
        "name": "Tell the buyer",
        "event_type_key": "order.shipped",
        "actions": [{"channel": "email", "template": "shipped-email"}],
        "recipients": {"kind": "event"},
        "created_by": "test",
    }
    fields.update(options)
    made: Rule = rule_create(**fields).rule
    return made


def rows() -> dict[str, int]:
    return {
        "events": Event.objects.count(),
        "messages": Message.objects.count(),
        "subscribers": Subscriber.objects.count(),
    }


def writes_during(run: Callable[[], DryRunResult]) -> tuple[DryRunResult, list[str]]:
    """The run's result, and every statement it sent that is not a read."""
    with CaptureQueriesContext(connection) as captured:
        result = run()
    statements = [query["sql"] for query in captured.captured_queries]
    return result, [sql for sql in statements if not sql.lstrip().upper().startswith("SELECT")]


def by_id(result: DryRunResult) -> dict[str, Any]:
    return {recipient.external_id: recipient for recipient in result.recipients}


def reasons(result: DryRunResult) -> dict[tuple[str, str | None], str]:
    return {(skip.subscriber, skip.channel): skip.reason for skip in result.skipped}


# --- the service ------------------------------------------------------------------------


def test_the_sample_payload_matches_and_renders_per_recipient(schema: Tenant) -> None:
    person("ann", email="ann@example.com", name="Ann", locale="de-AT")
    person("bob", email="bob@example.com", name="Bob")
    made = rule(condition="event.payload.order == 'S-1'")
    result = rule_dry_run(rule=made, to=["ann", "bob"])
    assert (result.matched, result.error, result.source) == (True, None, "sample")
    assert (result.rule_id, result.rule_version, result.enabled) == (made.pk, 1, True)
    assert (result.event_type, result.critical, result.event_id) == ("order.shipped", False, None)
    assert [recipient.external_id for recipient in result.recipients] == ["ann", "bob"]
    (ann_email,) = by_id(result)["ann"].messages
    assert (ann_email.channel, ann_email.template, ann_email.template_version) == (
        "email",
        "shipped-email",
        1,
    )
    # de-AT falls back to the template's German variant, as processing would.
    assert (ann_email.locale, ann_email.content["subject"]) == ("de", "Bestellung S-1 versandt")
    assert (ann_email.error, ann_email.send_after) == (None, None)
    (bob_email,) = by_id(result)["bob"].messages
    assert bob_email.content == {
        "subject": "Order S-1 shipped",
        "text": "Hi Bob, order S-1 is on its way.",
    }
    assert by_id(result)["bob"].name == "Bob"
    assert by_id(result)["bob"].saved is True
    assert (result.counts.recipients, result.counts.messages, result.counts.skipped) == (2, 2, 0)
    assert result.truncated is False


def test_a_given_payload_replaces_the_sample_and_a_false_condition_matches_nothing(
    schema: Tenant,
) -> None:
    person("ann", email="ann@example.com")
    made = rule(condition="event.payload.order == 'S-1'")
    result = rule_dry_run(rule=made, payload={"order": "B-2"}, to=["ann"])
    assert (result.matched, result.error, result.source) == (False, None, "payload")
    assert result.recipients == ()
    assert result.counts.messages == 0
    held = rule_dry_run(rule=made, payload={"order": "S-1"}, to=["ann"])
    assert held.matched is True
    assert held.counts.messages == 1


def test_a_condition_that_fails_to_evaluate_is_reported(schema: Tenant) -> None:
    person("ann", email="ann@example.com")
    made = rule(condition="event.payload.missing > 1")
    result = rule_dry_run(rule=made, to=["ann"])
    assert result.matched is False
    assert result.error is not None
    assert result.error.startswith("condition: ")
    assert "missing" in result.error
    assert result.recipients == ()


def test_a_per_recipient_condition_error_is_a_skip_with_its_reason(schema: Tenant) -> None:
    person("ann", email="ann@example.com", data={"tier": 3})
    person("bob", email="bob@example.com")
    made = rule(condition="subscriber.data.tier > 2")
    result = rule_dry_run(rule=made, to=["ann", "bob"])
    assert result.matched is True
    assert [recipient.external_id for recipient in result.recipients] == ["ann"]
    assert reasons(result)[("bob", None)].startswith("condition failed: ")


def test_preferences_and_reachability_skip_with_their_reasons(schema: Tenant) -> None:
    ann = person("ann", email="ann@example.com", phone="+14155550100")
    person("bob", email="bob@example.com")  # no phone
    person("cid", email="cid@example.com", phone="+14155550101")
    preference_subscriber_set(
        subscriber=ann,
        settings=[PreferenceSetting(channel="email", enabled=False, event_type="order.shipped")],
    )
    made = rule(
        actions=[
            {"channel": "email", "template": "shipped-email"},
            {"channel": "sms", "template": "shipped-sms"},
        ]
    )
    result = rule_dry_run(rule=made, to=["ann", "bob", "cid", "nobody"])
    assert reasons(result) == {
        ("ann", "email"): "subscriber opted out (event type, email)",
        ("bob", "sms"): "no phone number",
        ("nobody", None): "no such subscriber",
    }
    channels = {r.external_id: [m.channel for m in r.messages] for r in result.recipients}
    assert channels == {"ann": ["sms"], "bob": ["email"], "cid": ["email", "sms"]}
    assert (result.counts.recipients, result.counts.messages, result.counts.skipped) == (3, 4, 3)

    # A critical event type reaches those who opted out, and the result says why.
    declare(schema, is_critical=True)
    made = Rule.objects.select_related("event_type").get(pk=made.pk)
    critical = rule_dry_run(rule=made, to=["ann"])
    assert critical.critical is True
    assert [m.channel for m in critical.recipients[0].messages] == ["email", "sms"]


def test_a_render_error_is_shown_on_that_message_only(schema: Tenant) -> None:
    person("ann", email="ann@example.com", data={"nickname": "Annie"})
    person("bob", email="bob@example.com")
    template_create(
        key="strict-email",
        channel="email",
        variants={"en": {"subject": "For {{ subscriber.data.nickname }}", "text": "Hi"}},
        strict=True,
        created_by="t",
    )
    made = rule(actions=[{"channel": "email", "template": "strict-email"}])
    result = rule_dry_run(rule=made, to=["ann", "bob"])
    (ann,) = by_id(result)["ann"].messages
    (bob,) = by_id(result)["bob"].messages
    assert (ann.error, ann.content["subject"]) == (None, "For Annie")
    assert bob.content == {}
    assert bob.error is not None
    assert bob.error.startswith("subject: ")
    assert "nickname" in bob.error
    assert (result.counts.messages, result.counts.render_errors) == (2, 1)


def test_inline_profiles_are_shown_as_given_and_nothing_is_written(schema: Tenant) -> None:
    person("ann", email="old@example.com", phone="+14155550100", name="Ann")
    made = rule(
        actions=[
            {"channel": "email", "template": "shipped-email"},
            {"channel": "sms", "template": "shipped-sms"},
        ]
    )
    before = rows()
    result, writes = writes_during(
        lambda: rule_dry_run(
            rule=made,
            to=[
                {"id": "ann", "email": "ann@example.com"},
                {"id": "cid", "email": "cid@example.com", "name": "Cid", "locale": "de_de"},
                {"id": "bad", "email": "not-an-address"},
            ],
        )
    )
    assert writes == []
    assert rows() == before
    ann = Subscriber.objects.get(external_id="ann")
    assert ann.email == "old@example.com"
    assert not Subscriber.objects.filter(external_id__in=["cid", "bad"]).exists()

    shown = by_id(result)
    assert list(shown) == ["ann", "cid"]
    # ann: the inline email over her stored profile (her phone and name stay).
    assert shown["ann"].saved is True
    assert [m.channel for m in shown["ann"].messages] == ["email", "sms"]
    assert shown["ann"].messages[0].content["text"].startswith("Hi Ann,")
    # cid does not exist yet: shown with the profile given, locale normalised as saving would.
    assert (shown["cid"].saved, shown["cid"].name) == (False, "Cid")
    (cid_email,) = shown["cid"].messages
    assert cid_email.locale == "de"
    # bad is refused as saving would refuse it, so it is no subscriber either.
    assert [(skip.subscriber, skip.channel, skip.reason) for skip in result.skipped] == [
        ("bad", None, "invalid inline profile: /email: 'not-an-address' is not an email address"),
        ("bad", None, "no such subscriber"),
        ("cid", "sms", "no phone number"),
    ]


def test_the_dry_run_agrees_with_processing_the_same_event(schema: Tenant) -> None:
    person("ann", email="ann@example.com", name="Ann")
    person("bob", name="Bob")
    made = rule()
    to: list[Any] = ["ann", "bob", {"id": "cid", "email": "cid@example.com"}]
    result = rule_dry_run(rule=made, payload={"order": "A-1"}, to=to)
    event = Event.objects.create(
        event_type_key="order.shipped", payload={"order": "A-1"}, recipients=to
    )
    event_process(event_id=event.id)
    made_messages = {
        m.subscriber.external_id: m.content
        for m in Message.objects.filter(event=event).select_related("subscriber")
        if m.subscriber
    }
    assert {r.external_id: dict(r.messages[0].content) for r in result.recipients} == made_messages
    (story,) = Event.objects.get(pk=event.id).outcome["rules"]
    assert {(s["subscriber"], s["reason"]) for s in story["skipped"]} == {
        (skip.subscriber, skip.reason) for skip in result.skipped
    }


def test_a_stored_event_is_run_again_without_being_touched(schema: Tenant) -> None:
    person("ann", email="ann@example.com", name="Ann")
    person("bob", email="bob@example.com", name="Bob")
    made = rule()
    stored = Event.objects.create(
        event_type_key="order.shipped", payload={"order": "E-9"}, recipients=["ann"]
    )
    before = rows()
    result, writes = writes_during(lambda: rule_dry_run(rule=made, event_id=stored.id))
    assert writes == []
    assert rows() == before
    assert (result.source, result.event_id, result.matched) == ("event", stored.id, True)
    (ann,) = result.recipients
    assert ann.messages[0].content["subject"] == "Order E-9 shipped"
    stored.refresh_from_db()
    assert (stored.status, stored.outcome, stored.processed_at) == (EventStatus.ACCEPTED, {}, None)

    # `to` replaces the stored event's recipients for the run.
    again = rule_dry_run(rule=made, event_id=stored.id, to=["bob"])
    assert [recipient.external_id for recipient in again.recipients] == ["bob"]


def test_a_stored_event_must_exist_and_be_of_the_rules_event_type(schema: Tenant) -> None:
    made = rule()
    with pytest.raises(DryRunNotFound, match="No event"):
        rule_dry_run(rule=made, event_id=uuid.uuid4())
    paid = Event.objects.create(event_type_key="order.paid", payload={})
    with pytest.raises(InvalidInput) as refused:
        rule_dry_run(rule=made, event_id=paid.id)
    (error,) = refused.value.errors
    assert error.pointer == "/event_id"
    assert "'order.paid' event" in error.detail
    assert "'order.shipped'" in error.detail


def test_payload_and_event_id_are_exclusive(schema: Tenant) -> None:
    made = rule()
    with pytest.raises(InvalidInput) as refused:
        rule_dry_run(rule=made, payload={"order": "X"}, event_id=uuid.uuid4())
    assert [error.pointer for error in refused.value.errors] == ["/payload", "/event_id"]


def test_a_payload_the_schema_refuses_is_named(schema: Tenant) -> None:
    declare(
        schema,
        payload_schema={
            "type": "object",
            "properties": {"order": {"type": "string"}},
            "required": ["order"],
        },
        sample_payload={"nothing": True},
    )
    made = rule()
    with pytest.raises(InvalidInput) as refused:
        rule_dry_run(rule=made, payload={"order": 7})
    assert [error.pointer for error in refused.value.errors] == ["/payload/order"]
    with pytest.raises(InvalidInput, match="sample payload does not match"):
        rule_dry_run(rule=made)


def test_a_disabled_rule_runs_and_says_so(schema: Tenant) -> None:
    person("ann", email="ann@example.com")
    made = rule(enabled=False)
    result = rule_dry_run(rule=made, to=["ann"])
    assert (result.enabled, result.matched, result.counts.messages) == (False, True, 1)


def test_the_current_version_runs(schema: Tenant) -> None:
    person("ann", email="ann@example.com")
    made = rule(condition="false")
    saved = rule_update(rule=made, condition="true", created_by="test")
    result = rule_dry_run(rule=saved.rule, to=["ann"])
    assert (result.rule_version, result.matched) == (2, True)


def test_topic_and_delay_shape_the_run(schema: Tenant) -> None:
    for name in ("ann", "bob"):
        person(name, email=f"{name}@example.com")
    topic_subscribers_add(topic=topic_create(key="buyers"), external_ids=["ann", "bob"])
    made = rule(recipients={"kind": "topic", "topic": "buyers"}, delay_seconds=600)
    start = datetime.now(UTC)
    result = rule_dry_run(rule=made)
    assert [recipient.external_id for recipient in result.recipients] == ["ann", "bob"]
    send_after = result.recipients[0].messages[0].send_after
    assert send_after is not None
    assert timedelta(seconds=595) < send_after - start < timedelta(seconds=610)
    missing = rule_dry_run(rule=rule(recipients={"kind": "event"}), topic="nope")
    assert reasons(missing) == {("*", None): "no topic 'nope'"}


def test_a_digest_rule_shows_the_batch_each_recipient_would_join(schema: Tenant) -> None:
    from rules_engine.models import DigestBatch, DigestItem

    person("ann", email="ann@example.com")
    person("bob")  # no email: skipped before any digest
    made = rule(digest={"key": "event.payload.order", "window_seconds": 600})
    batches = (DigestBatch.objects.count(), DigestItem.objects.count())
    result, writes = writes_during(lambda: rule_dry_run(rule=made, to=["ann", "bob"]))
    assert writes == []
    assert (DigestBatch.objects.count(), DigestItem.objects.count()) == batches
    (ann,) = result.recipients
    assert (ann.external_id, ann.messages, ann.digest_key) == ("ann", (), "S-1")
    assert (result.counts.recipients, result.counts.messages, result.counts.digested) == (1, 0, 1)
    assert reasons(result) == {("bob", "email"): "no email address"}


def test_more_recipients_than_the_limit_are_counted_and_truncated(schema: Tenant) -> None:
    names = [f"user-{index}" for index in range(5)]
    for name in names:
        person(name, email=f"{name}@example.com")
    made = rule()
    result = rule_dry_run(rule=made, to=names, limit=2)
    assert [recipient.external_id for recipient in result.recipients] == names[:2]
    assert (result.counts.recipients, result.counts.messages, result.truncated) == (5, 5, True)
    full = rule_dry_run(rule=made, to=names, limit=5)
    assert (len(full.recipients), full.truncated) == (5, False)
    with pytest.raises(InvalidInput, match="/limit"):
        rule_dry_run(rule=made, limit=0)


def test_malformed_recipients_are_refused_by_the_service(schema: Tenant) -> None:
    made = rule()
    with pytest.raises(InvalidInput) as refused:
        rule_dry_run(rule=made, to=["ann", {"email": "x@example.com"}, 7])
    assert [error.pointer for error in refused.value.errors] == ["/to/1", "/to/2"]
    result = rule_dry_run(rule=made, to=[{"id": "dan", "data": ["not", "an", "object"]}])
    assert result.skipped[0].reason == "invalid inline profile: /data: must be an object"


# --- the API ---------------------------------------------------------------------------


URL = "/api/v1/rules/{}/test"


def post(client: ApiClient, rule_id: int, body: dict[str, Any]) -> Any:
    return client.post(URL.format(rule_id), json.dumps(body), content_type="application/json")


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"urn:herald:problem:{slug}"
    return body


@pytest.fixture
def configured(tenant_a: Tenant) -> Iterator[int]:
    """Rule id of tenant alpha's rule for order.shipped (email and SMS)."""
    with tenant_context(tenant_a):
        declare(tenant_a)
        event_type_save(key="order.paid")
        template_create(
            key="shipped-email",
            channel="email",
            variants=EMAIL,
            fallback_locale="en",
            created_by="t",
        )
        template_create(key="shipped-sms", channel="sms", variants=SMS, created_by="t")
        person("ann", email="ann@example.com", name="Ann")
        made = rule(
            actions=[
                {"channel": "email", "template": "shipped-email"},
                {"channel": "sms", "template": "shipped-sms"},
            ]
        )
    yield made.pk
    event_types_forget(schema_name=tenant_a.schema_name)


def test_api_dry_run_answers_what_the_rule_would_do(
    api_a: ApiClient, tenant_a: Tenant, configured: int
) -> None:
    with tenant_context(tenant_a):
        before = rows()
    response = post(api_a, configured, {"to": ["ann", {"id": "new", "phone": "+14155550199"}]})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["rule_id"] == configured
    assert (body["matched"], body["source"], body["enabled"], body["error"]) == (
        True,
        "sample",
        True,
        None,
    )
    recipients = {recipient["external_id"]: recipient for recipient in body["recipients"]}
    assert recipients["ann"]["messages"][0] == {
        "channel": "email",
        "template": "shipped-email",
        "template_version": 1,
        "locale": "en",
        "content": {
            "subject": "Order S-1 shipped",
            "text": "Hi Ann, order S-1 is on its way.",
        },
        "error": None,
        "send_after": None,
    }
    assert recipients["new"]["saved"] is False
    assert [m["channel"] for m in recipients["new"]["messages"]] == ["sms"]
    assert sorted((s["subscriber"], s["channel"], s["reason"]) for s in body["skipped"]) == [
        ("ann", "sms", "no phone number"),
        ("new", "email", "no email address"),
    ]
    assert body["counts"] == {
        "recipients": 2,
        "messages": 2,
        "render_errors": 0,
        "digested": 0,
        "skipped": 2,
    }
    assert body["truncated"] is False
    with tenant_context(tenant_a):
        assert rows() == before


def test_api_dry_run_of_a_stored_event(api_a: ApiClient, tenant_a: Tenant, configured: int) -> None:
    with tenant_context(tenant_a):
        stored = Event.objects.create(
            event_type_key="order.shipped", payload={"order": "E-1"}, recipients=["ann"]
        )
        paid = Event.objects.create(event_type_key="order.paid", payload={})
    response = post(api_a, configured, {"event_id": str(stored.id)})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["source"], body["event_id"]) == ("event", str(stored.id))
    assert body["recipients"][0]["messages"][0]["content"]["subject"] == "Order E-1 shipped"

    missing = assert_problem(
        post(api_a, configured, {"event_id": str(uuid.uuid4())}), 404, "not-found"
    )
    assert "No event" in missing["detail"]
    wrong_type = assert_problem(
        post(api_a, configured, {"event_id": str(paid.id)}), 422, "validation-failed"
    )
    assert [error["pointer"] for error in wrong_type["errors"]] == ["/event_id"]


def test_api_refuses_payload_with_event_id_naming_both(api_a: ApiClient, configured: int) -> None:
    body = assert_problem(
        post(api_a, configured, {"payload": {"order": "X"}, "event_id": str(uuid.uuid4())}),
        422,
        "validation-failed",
    )
    assert [error["pointer"] for error in body["errors"]] == ["/payload", "/event_id"]
    assert "payload or event_id, not both" in body["detail"]


def test_api_refuses_bad_input_at_its_field(api_a: ApiClient, configured: int) -> None:
    for request, pointer in (
        ({"event_id": "not-a-uuid"}, "/event_id"),
        ({"limit": 0}, "/limit"),
        ({"to": [{"email": "x@example.com"}]}, "/to/0"),
        ({"surprise": 1}, "/surprise"),
    ):
        body = assert_problem(post(api_a, configured, request), 422, "validation-failed")
        assert any(error["pointer"].startswith(pointer) for error in body["errors"]), body


def test_api_needs_the_admin_scope(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, configured: int
) -> None:
    reader = api_client_for(tenant_a, scopes=[ApiScope.MESSAGES_READ])
    assert_problem(post(reader, configured, {}), 403, "insufficient-scope")


def test_api_another_tenants_rule_is_not_found(
    api_a: ApiClient, api_b: ApiClient, tenant_b: Tenant, configured: int
) -> None:
    assert_problem(post(api_b, configured, {}), 404, "not-found")
    assert_problem(post(api_a, 999_999_999, {}), 404, "not-found")
    with tenant_context(tenant_b):
        assert Event.objects.count() == 0
