"""The pipeline: rules, recipients, preferences, rendering and timing, end to end in a schema."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from channels_delivery.models import Message
from rules_engine.event_types import event_types_forget
from rules_engine.models import Event, EventStatus, Preference, Subscriber
from rules_engine.services.event_types import event_type_save
from rules_engine.services.pipeline import event_process
from rules_engine.services.rules import rule_create, rule_update
from rules_engine.services.subscribers import SubscriberProfile, subscriber_upsert
from rules_engine.services.templates import template_create, template_update
from rules_engine.services.topics import topic_create, topic_subscribers_add
from rules_engine.timing import message_send_after, send_window_opens
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

EMAIL = {
    "en": {
        "subject": "Order {{ event.payload.order }} shipped",
        "text": "Hi {{ subscriber.name }}, order {{ event.payload.order }} is on its way.",
    },
    "de": {
        "subject": "Bestellung {{ event.payload.order }} versandt",
        "text": "Hallo {{ subscriber.name }}!",
    },
}


@pytest.fixture
def schema(tenant_a: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant_a):
        event_type_save(key="order.shipped", category="orders")
        event_types_forget(schema_name=tenant_a.schema_name)
        yield tenant_a
        event_types_forget(schema_name=tenant_a.schema_name)


def person(external_id: str, **fields: Any) -> Subscriber:
    return subscriber_upsert(
        profile=SubscriberProfile(external_id=external_id, **fields)
    ).subscriber


def email_template(key: str = "shipped-email", **options: Any) -> None:
    template_create(
        key=key, channel="email", variants=EMAIL, fallback_locale="en", created_by="test", **options
    )


def rule(**options: Any) -> Any:
    fields: dict[str, Any] = {
        "name": "Tell the buyer",
        "event_type_key": "order.shipped",
        "actions": [{"channel": "email", "template": "shipped-email"}],
        "recipients": {"kind": "event"},
        "created_by": "test",
    }
    fields.update(options)
    return rule_create(**fields).rule


def send(**fields: Any) -> Event:
    values: dict[str, Any] = {"event_type_key": "order.shipped", "payload": {"order": "A-1"}}
    values.update(fields)
    event = Event.objects.create(**values)
    processed = event_process(event_id=event.id)
    assert processed is not None
    return processed


def messages_of(event: Event) -> list[Message]:
    return list(Message.objects.filter(event=event).select_related("subscriber").order_by("id"))


def test_an_event_becomes_one_rendered_message_per_recipient(schema: Tenant) -> None:
    person("ann", email="ann@example.com", name="Ann")
    person("bob", name="Bob")  # no email
    email_template()
    made = rule()
    event = send(recipients=["ann", "bob", "nobody"])
    assert event.status == EventStatus.PROCESSED
    (message,) = messages_of(event)
    assert message.subscriber is not None
    assert message.subscriber.external_id == "ann"
    assert message.content == {
        "subject": "Order A-1 shipped",
        "text": "Hi Ann, order A-1 is on its way.",
    }
    assert (message.channel, message.status, message.locale) == ("email", "queued", "en")
    assert message.rule_version is not None
    assert message.rule_version.rule_id == made.pk
    assert message.template_version is not None
    assert message.template_version.version == 1
    story = event.outcome["rules"][0]
    assert (story["matched"], story["messages"]) == (True, 1)
    reasons = {entry["subscriber"]: entry["reason"] for entry in story["skipped"]}
    assert reasons == {"bob": "no email address", "nobody": "no such subscriber"}
    assert event.outcome["matched_rules"] == [made.pk]


def test_processing_twice_makes_no_more_messages(schema: Tenant) -> None:
    person("ann", email="ann@example.com")
    email_template()
    rule()
    event = send(recipients=["ann"])
    assert event_process(event_id=event.id) is not None
    assert len(messages_of(event)) == 1


def test_inline_profiles_are_created_and_merged_not_overwritten(schema: Tenant) -> None:
    person("ann", email="old@example.com", phone="+14155550100", name="Ann")
    email_template()
    rule()
    event = send(
        recipients=[
            {"id": "ann", "email": "ann@example.com"},
            {"id": "cid", "email": "cid@example.com", "name": "Cid"},
            {"id": "bad", "email": "not-an-address"},
        ]
    )
    ann = Subscriber.objects.get(external_id="ann")
    assert (ann.email, ann.phone, ann.name) == ("ann@example.com", "+14155550100", "Ann")
    assert Subscriber.objects.filter(external_id="cid").exists()
    assert not Subscriber.objects.filter(external_id="bad").exists()
    assert sorted(m.subscriber.external_id for m in messages_of(event) if m.subscriber) == [
        "ann",
        "cid",
    ]
    assert any("invalid inline profile" in entry["reason"] for entry in event.outcome["skipped"])


def test_a_false_condition_matches_nothing_and_an_erroring_one_is_recorded(
    schema: Tenant,
) -> None:
    person("ann", email="ann@example.com")
    email_template()
    broken = rule(name="broken", condition="event.payload.missing > 1", order=1)
    never = rule(name="never", condition="event.payload.order == 'B-2'", order=2)
    works = rule(name="works", condition="event.payload.order == 'A-1'", order=3)
    event = send(recipients=["ann"])
    stories = {story["rule_id"]: story for story in event.outcome["rules"]}
    assert "missing" in stories[broken.pk]["error"]
    assert stories[never.pk]["matched"] is False
    assert stories[never.pk]["error"] is None
    assert stories[works.pk]["matched"] is True
    assert event.outcome["matched_rules"] == [works.pk]
    assert len(messages_of(event)) == 1


def test_no_rule_holding_is_no_match(schema: Tenant) -> None:
    email_template()
    rule(condition="event.payload.order == 'nope'")
    event = send(recipients=[])
    assert event.status == EventStatus.NO_MATCH
    assert event.outcome["reason"] == "no rule's condition held"


def test_a_condition_on_the_subscriber_is_evaluated_per_recipient(schema: Tenant) -> None:
    person("ann", email="ann@example.com", locale="de-AT", name="Ann")
    person("bob", email="bob@example.com", locale="fr", name="Bob")
    email_template()
    rule(condition='subscriber.locale.startsWith("de")')
    event = send(recipients=["ann", "bob"])
    (message,) = messages_of(event)
    assert message.subscriber is not None
    assert message.subscriber.external_id == "ann"
    # de-AT falls back to its language's variant.
    assert (message.locale, message.content["subject"]) == ("de", "Bestellung A-1 versandt")


def test_the_fallback_locale_serves_a_locale_without_a_variant(schema: Tenant) -> None:
    person("bob", email="bob@example.com", locale="fr", name="Bob")
    email_template()
    rule()
    (message,) = messages_of(send(recipients=["bob"]))
    assert message.locale == "en"


def test_topic_fan_out_is_de_duplicated_with_the_events_own_recipients(schema: Tenant) -> None:
    for name in ("ann", "bob", "cid"):
        person(name, email=f"{name}@example.com")
    topic = topic_create(key="buyers")
    topic_subscribers_add(topic=topic, external_ids=["ann", "bob", "cid"])
    email_template()
    rule()
    event = send(recipients=["ann", "ann"], topic="buyers")
    assert sorted(m.subscriber.external_id for m in messages_of(event) if m.subscriber) == [
        "ann",
        "bob",
        "cid",
    ]


def test_a_rule_can_target_a_topic_or_a_broadcast_filter(schema: Tenant) -> None:
    person("ann", email="ann@example.com", data={"vip": True})
    person("bob", email="bob@example.com", data={"vip": False})
    topic_subscribers_add(topic=topic_create(key="staff"), external_ids=["bob"])
    email_template()
    rule(name="staff", recipients={"kind": "topic", "topic": "staff"})
    rule(name="vips", recipients={"kind": "broadcast", "filter": "subscriber.data.vip == true"})
    event = send(recipients=[])
    got = sorted(
        (m.rule_version.rule.name, m.subscriber.external_id)
        for m in messages_of(event)
        if m.subscriber and m.rule_version
    )
    assert got == [("staff", "bob"), ("vips", "ann")]


def test_preferences_opt_out_and_critical_types_bypass_them(schema: Tenant) -> None:
    ann = person("ann", email="ann@example.com")
    bob = person("bob", email="bob@example.com")
    person("cid", email="cid@example.com")
    Preference.objects.create(
        subscriber=ann, event_type_key="order.shipped", channel="email", enabled=False
    )
    # The tenant turns order emails off by default; bob opts back in.
    Preference.objects.create(subscriber=None, category="orders", channel="email", enabled=False)
    Preference.objects.create(subscriber=bob, channel="email", enabled=True)
    email_template()
    rule()
    event = send(recipients=["ann", "bob", "cid"])
    assert [m.subscriber.external_id for m in messages_of(event) if m.subscriber] == ["bob"]
    reasons = {e["subscriber"]: e["reason"] for e in event.outcome["rules"][0]["skipped"]}
    assert reasons["ann"].startswith("subscriber opted out (event type")
    assert reasons["cid"].startswith("tenant default opted out (category")

    event_type_save(key="order.shipped", category="orders", is_critical=True)
    event_types_forget(schema_name=schema.schema_name)
    critical = send(recipients=["ann", "bob", "cid"])
    assert len(messages_of(critical)) == 3


def test_an_unreachable_channel_is_skipped_with_its_reason(schema: Tenant) -> None:
    person("ann", email="ann@example.com")
    template_create(
        key="shipped-sms",
        channel="sms",
        variants={"en": {"text": "Order {{ event.payload.order }} shipped"}},
        created_by="test",
    )
    email_template()
    rule(
        actions=[
            {"channel": "email", "template": "shipped-email"},
            {"channel": "sms", "template": "shipped-sms"},
        ]
    )
    event = send(recipients=["ann"])
    assert [m.channel for m in messages_of(event)] == ["email"]
    (skipped,) = event.outcome["rules"][0]["skipped"]
    assert (skipped["channel"], skipped["reason"]) == ("sms", "no phone number")


def test_a_render_error_fails_that_message_only(schema: Tenant) -> None:
    person("ann", email="ann@example.com", name="Ann")
    person("bob", email="bob@example.com", name="Bob")
    template_create(
        key="strict-email",
        channel="email",
        variants={"en": {"subject": "For {{ subscriber.data.nickname }}", "text": "Hi"}},
        strict=True,
        created_by="test",
    )
    Subscriber.objects.filter(external_id="ann").update(data={"nickname": "Annie"})
    rule(actions=[{"channel": "email", "template": "strict-email"}])
    event = send(recipients=["ann", "bob"])
    by_name = {m.subscriber.external_id: m for m in messages_of(event) if m.subscriber}
    assert by_name["ann"].status == "queued"
    assert by_name["ann"].content["subject"] == "For Annie"
    assert by_name["bob"].status == "failed"
    assert "subject" in by_name["bob"].content["error"]
    assert "nickname" in by_name["bob"].content["error"]
    assert event.outcome["rules"][0]["failed_renders"] == 1


def test_editing_a_template_or_rule_leaves_existing_messages_as_they_were(
    schema: Tenant,
) -> None:
    from rules_engine.models import Rule, Template

    person("ann", email="ann@example.com", name="Ann")
    email_template()
    rule()
    (first,) = messages_of(send(recipients=["ann"]))
    template_update(
        template=Template.objects.get(key="shipped-email"),
        variants={"en": {"subject": "New subject", "text": "New"}},
        created_by="test",
    )
    rule_update(rule=Rule.objects.get(), condition="true", created_by="test")
    (second,) = messages_of(send(recipients=["ann"]))
    first.refresh_from_db()
    assert first.content["subject"] == "Order A-1 shipped"
    assert first.template_version is not None
    assert first.template_version.version == 1
    assert first.rule_version is not None
    assert first.rule_version.version == 1
    assert second.content["subject"] == "New subject"
    assert second.template_version is not None
    assert second.template_version.version == 2
    assert second.rule_version is not None
    assert second.rule_version.version == 2


def test_delay_and_send_window_set_send_after_and_critical_ignores_the_window(
    schema: Tenant,
) -> None:
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    person("ann", email="ann@example.com", timezone="Europe/Berlin")
    email_template()
    rule(name="later", delay_seconds=600)
    # A window that opens two hours from now, Berlin time: now is always outside it.
    opens = (datetime.now(berlin) + timedelta(hours=2)).hour
    window = {"start": f"{opens:02d}:00", "end": f"{(opens + 1) % 24:02d}:00"}
    rule(name="office", send_window=window)
    before = datetime.now(UTC)
    event = send(recipients=["ann"])
    by_rule = {m.rule_version.rule.name: m for m in messages_of(event) if m.rule_version}
    later = by_rule["later"].send_after
    assert later is not None
    assert timedelta(seconds=595) < later - before < timedelta(seconds=610)
    office = by_rule["office"].send_after
    assert office is not None  # held until the window opens
    assert (office.astimezone(berlin).hour, office.astimezone(berlin).minute) == (opens, 0)
    assert timedelta(hours=1) < office - before <= timedelta(hours=2)

    event_type_save(key="order.shipped", category="orders", is_critical=True)
    event_types_forget(schema_name=schema.schema_name)
    critical = send(recipients=["ann"])
    by_rule = {m.rule_version.rule.name: m for m in messages_of(critical) if m.rule_version}
    assert by_rule["office"].send_after is None  # critical: not held by the window
    assert by_rule["later"].send_after is not None  # the delay still applies


def test_throttle_records_the_excess_as_throttled(schema: Tenant) -> None:
    person("ann", email="ann@example.com")
    email_template()
    rule(throttle={"limit": 2, "window_seconds": 3600})
    counts = [len(messages_of(send(recipients=["ann"]))) for _ in range(3)]
    assert counts == [1, 1, 0]
    third = Event.objects.order_by("-created_at").first()
    assert third is not None
    (skipped,) = third.outcome["rules"][0]["skipped"]
    assert skipped["reason"].startswith("throttled: 2 messages within 3600 s")


def test_queries_per_event_do_not_grow_with_recipients(schema: Tenant) -> None:
    topic = topic_create(key="many")
    email_template()
    rule(recipients={"kind": "topic", "topic": "many"}, throttle={"limit": 5, "window_seconds": 60})

    def queries_for(count: int) -> int:
        names = [f"user-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        for name in names:
            person(name, email=f"{name}@example.com")
        topic_subscribers_add(topic=topic, external_ids=names)
        event = Event.objects.create(event_type_key="order.shipped", payload={"order": "Q"})
        with CaptureQueriesContext(connection) as captured:
            event_process(event_id=event.id)
        assert len(messages_of(event)) >= count
        return len(captured.captured_queries)

    queries_for(1)  # warms the per-process caches (event types, compiled conditions)
    small = queries_for(3)
    large = queries_for(60)
    assert small == large, "queries grew with the number of recipients"
    assert large <= 12


def test_rules_are_per_tenant(schema: Tenant, tenant_b: Tenant) -> None:
    person("ann", email="ann@example.com")
    email_template()
    rule()
    with tenant_context(tenant_b):
        event_type_save(key="order.shipped")
        event_types_forget(schema_name=tenant_b.schema_name)
        person("ann", email="ann@b.example.com")
        event = send(recipients=["ann"])
        assert event.status == EventStatus.NO_MATCH
        assert Message.objects.count() == 0
        event_types_forget(schema_name=tenant_b.schema_name)


# --- timing -------------------------------------------------------------------------------


def test_send_window_inside_and_outside_and_over_midnight() -> None:
    day = {"start": "09:00", "end": "17:00"}
    night = {"start": "22:00", "end": "06:00"}
    noon = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
    assert send_window_opens(at=noon, window=day, timezone="Europe/Berlin") == noon
    evening = datetime(2026, 11, 23, 19, 0, tzinfo=UTC)  # 20:00 Berlin: tomorrow 09:00
    assert send_window_opens(at=evening, window=day, timezone="Europe/Berlin") == datetime(
        2026, 11, 24, 8, 0, tzinfo=UTC
    )
    assert send_window_opens(at=evening, window=night, timezone="Europe/Berlin") == datetime(
        2026, 11, 23, 21, 0, tzinfo=UTC
    )
    late = datetime(2026, 11, 23, 23, 30, tzinfo=UTC)  # 00:30 Berlin: inside the night
    assert send_window_opens(at=late, window=night, timezone="Europe/Berlin") == late
    # An unknown time zone counts as UTC.
    assert send_window_opens(at=evening, window=day, timezone="Mars/Base") == datetime(
        2026, 11, 24, 9, 0, tzinfo=UTC
    )


def test_send_window_across_a_daylight_saving_change() -> None:
    # Berlin springs forward on 2026-03-29: 02:00 -> 03:00. From 20:00 local on
    # the 28th (19:00 UTC, CET), 08:00 on the 29th is 06:00 UTC (CEST).
    before = datetime(2026, 3, 28, 19, 0, tzinfo=UTC)
    opens = send_window_opens(
        at=before, window={"start": "08:00", "end": "18:00"}, timezone="Europe/Berlin"
    )
    assert opens == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)


def test_message_send_after_is_none_when_due_now() -> None:
    now = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
    window = {"start": "09:00", "end": "10:00"}
    assert (
        message_send_after(now=now, delay_seconds=None, window=None, timezone="", critical=False)
        is None
    )
    held = message_send_after(
        now=now, delay_seconds=None, window=window, timezone="UTC", critical=False
    )
    assert held == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert (
        message_send_after(
            now=now, delay_seconds=None, window=window, timezone="UTC", critical=True
        )
        is None
    )
    assert message_send_after(
        now=now, delay_seconds=60, window=None, timezone="", critical=False
    ) == now + timedelta(seconds=60)


def test_the_garbage_collector_is_paused_while_messages_are_planned(
    schema: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection during a large fan-out would be charged to whichever
    render it interrupts (the render deadline is wall-clock time)."""
    import gc

    from rules_engine.services import pipeline

    seen: list[bool] = []
    real_plan = pipeline.event_plan

    def watching(**kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real_plan(**kwargs)

    monkeypatch.setattr(pipeline, "event_plan", watching)
    person("ann", email="ann@example.com")
    email_template()
    rule()
    assert gc.isenabled()
    send(recipients=["ann"])
    assert seen == [False]
    assert gc.isenabled()


def test_an_unexpected_error_fails_the_event_and_keeps_nothing_of_it(
    schema: Tenant, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rules_engine.services import pipeline

    person("ann", email="ann@example.com")
    person("bob", email="bob@example.com")
    email_template()
    rule()
    calls = []

    def breaks_on_the_second(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a bug")
        return real(**kwargs)

    real = pipeline.render_message
    monkeypatch.setattr(pipeline, "render_message", breaks_on_the_second)
    event = send(recipients=["ann", "bob"])
    assert event.status == EventStatus.FAILED
    assert event.outcome == {"error": "RuntimeError: a bug"}
    assert messages_of(event) == []
    assert "processing event" in caplog.text
    # Done: processing it again does nothing.
    monkeypatch.setattr(pipeline, "render_message", real)
    again = event_process(event_id=event.id)
    assert again is not None
    assert again.status == EventStatus.FAILED
    assert messages_of(event) == []
