"""The subscriber, topic and preference services and selectors, without HTTP."""

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from channels_delivery.models import Message, MessageStatus
from herald.pagination import InvalidCursor
from rules_engine.models import (
    Event,
    EventType,
    Preference,
    Subscriber,
    Topic,
    TopicMembership,
)
from rules_engine.selectors.preferences import (
    EffectivePreference,
    preference_default_list,
    preference_effective_list,
)
from rules_engine.selectors.subscribers import subscriber_list
from rules_engine.selectors.topics import topic_subscriber_list
from rules_engine.services.preferences import (
    CriticalEventTypeOptOut,
    PreferenceSetting,
    preference_defaults_set,
    preference_subscriber_set,
)
from rules_engine.services.subscribers import (
    ERASED_CONTENT,
    ERASED_ENTRY,
    InvalidInput,
    SubscriberProfile,
    external_id_errors,
    locale_normalise,
    subscriber_bulk_upsert,
    subscriber_erase,
    subscriber_profile_clean,
    subscriber_upsert,
)
from rules_engine.services.topics import (
    TopicExists,
    topic_create,
    topic_subscribers_add,
    topic_subscribers_remove,
)
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


def subscriber_make(external_id: str, **fields: Any) -> Subscriber:
    return subscriber_upsert(
        profile=SubscriberProfile(external_id=external_id, **fields)
    ).subscriber


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The SQL statements run, by verb, without django-tenants' SET search_path."""
    return [q["sql"].split()[0] for q in queries if not q["sql"].startswith("SET ")]


def pointers(invalid: pytest.ExceptionInfo[InvalidInput]) -> list[str]:
    return [error.pointer for error in invalid.value.errors]


# --- validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("en", "en"),
        ("en-US", "en-US"),
        ("en_us", "en-US"),
        ("EN-gb", "en-GB"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("es-419", "es-419"),
        ("de-CH-1996", "de-CH-1996"),
        ("english", None),
        ("e", None),
        ("en-", None),
        ("en US", None),
        ("en-US-" + "x" * 30, None),
    ],
)
def test_locale_is_a_bcp47_tag_in_canonical_case(given: str, expected: str | None) -> None:
    assert locale_normalise(given) == expected


@pytest.mark.parametrize(
    ("external_id", "ok"),
    [
        ("u-1", True),
        ("user@example.com", True),
        ("Ünïcode ok", True),
        ("x" * 200, True),
        ("", False),
        ("x" * 201, False),
        ("tab\there", False),
        ("nul\x00", False),
        ("del\x7f", False),
        ("a/b", False),
        ("bulk", False),
    ],
)
def test_external_id_rules(external_id: str, ok: bool) -> None:
    assert (external_id_errors(external_id) == []) is ok


def test_every_invalid_field_is_reported_at_once() -> None:
    profile = SubscriberProfile(
        external_id="",
        email="not-an-email",
        phone="0044 20 7946 0000",
        name="n" * 201,
        locale="english",
        timezone="Mars/Olympus",
        channels={"push": "https://push.example.com"},
    )
    with pytest.raises(InvalidInput) as invalid:
        subscriber_profile_clean(profile=profile)
    assert pointers(invalid) == [
        "/external_id",
        "/email",
        "/phone",
        "/name",
        "/locale",
        "/timezone",
        "/channels/push",
    ]


def test_a_valid_profile_is_normalised_not_changed() -> None:
    profile = SubscriberProfile(
        external_id="u-1",
        email="ada@example.com",
        phone="+14155550100",
        name="Ada",
        locale="en_gb",
        timezone="Europe/London",
        data={"plan": "pro"},
        channels={"push": [{"endpoint": "https://push.example.com/1"}], "chat": {"url": "x"}},
    )
    clean = subscriber_profile_clean(profile=profile)
    assert clean.locale == "en-GB"
    assert clean.email == profile.email
    assert clean.channels == profile.channels


# --- upsert ---------------------------------------------------------------------


def test_upsert_creates_then_replaces_the_whole_profile(in_tenant_a: Tenant) -> None:
    first = subscriber_upsert(
        profile=SubscriberProfile(external_id="u-1", email="a@example.com", name="Ada")
    )
    assert first.created
    second = subscriber_upsert(profile=SubscriberProfile(external_id="u-1", phone="+447700900123"))
    assert not second.created
    assert second.subscriber.pk == first.subscriber.pk
    stored = Subscriber.objects.get(external_id="u-1")
    assert (stored.email, stored.name, stored.phone) == ("", "", "+447700900123")
    assert stored.created_at == first.subscriber.created_at


def test_invalid_upsert_saves_nothing(in_tenant_a: Tenant) -> None:
    with pytest.raises(InvalidInput):
        subscriber_upsert(profile=SubscriberProfile(external_id="u-1", timezone="Nowhere"))
    assert not Subscriber.objects.exists()


def test_bulk_upsert_reports_each_profile_and_saves_the_valid_ones(in_tenant_a: Tenant) -> None:
    subscriber_make("old", email="old@example.com", name="Old")
    profiles = [
        SubscriberProfile(external_id="new", email="new@example.com"),
        SubscriberProfile(external_id="old", name="Renamed"),
        SubscriberProfile(external_id="bad", phone="12345"),
        SubscriberProfile(external_id="new", email="again@example.com"),
    ]
    with CaptureQueriesContext(connection) as queries:
        results = subscriber_bulk_upsert(profiles=profiles)
    assert statements(queries) == ["SELECT", "INSERT"]
    assert [(r.index, r.external_id, r.ok, r.created) for r in results] == [
        (0, "new", True, True),
        (1, "old", True, False),
        (2, "bad", False, False),
        (3, "new", False, False),
    ]
    assert [e.pointer for e in results[2].errors] == ["/phone"]
    assert "index 0" in results[3].errors[0].detail
    stored = {s.external_id: s for s in Subscriber.objects.all()}
    assert set(stored) == {"new", "old"}
    assert stored["new"].email == "new@example.com"
    assert (stored["old"].name, stored["old"].email) == ("Renamed", "")


def test_bulk_upsert_refuses_more_than_a_thousand(in_tenant_a: Tenant) -> None:
    profiles = [SubscriberProfile(external_id=f"u-{i}") for i in range(1001)]
    with pytest.raises(InvalidInput):
        subscriber_bulk_upsert(profiles=profiles)
    assert not Subscriber.objects.exists()


def test_bulk_upsert_of_a_thousand_costs_two_statements(in_tenant_a: Tenant) -> None:
    profiles = [SubscriberProfile(external_id=f"u-{i}", name=f"U {i}") for i in range(1000)]
    with CaptureQueriesContext(connection) as queries:
        created = subscriber_bulk_upsert(profiles=profiles)
    assert statements(queries) == ["SELECT", "INSERT"]
    assert all(result.created for result in created)
    assert Subscriber.objects.count() == 1000
    renamed = [SubscriberProfile(external_id=f"u-{i}", name="Same") for i in range(1000)]
    with CaptureQueriesContext(connection) as queries:
        updated = subscriber_bulk_upsert(profiles=renamed)
    assert statements(queries) == ["SELECT", "INSERT"]
    assert not any(result.created for result in updated)
    assert set(Subscriber.objects.values_list("name", flat=True)) == {"Same"}


# --- erasure --------------------------------------------------------------------


def test_erasure_removes_the_profile_and_the_messages_content_but_keeps_the_counts(
    in_tenant_a: Tenant,
) -> None:
    ada = subscriber_make("ada", email="ada@example.com")
    bob = subscriber_make("bob", email="bob@example.com")
    topic = topic_create(key="news")
    topic_subscribers_add(topic=topic, external_ids=["ada", "bob"])
    preference_subscriber_set(
        subscriber=ada, settings=[PreferenceSetting(channel="sms", enabled=False)]
    )
    event = Event.objects.create(event_type_key="order.shipped")
    for channel in ("email", "sms"):
        Message.objects.create(
            event=event,
            subscriber=ada,
            channel=channel,
            status=MessageStatus.DELIVERED,
            content={"to": "ada@example.com", "body": "Hi Ada"},
        )
    bobs = Message.objects.create(
        event=event, subscriber=bob, channel="email", content={"to": "bob@example.com"}
    )

    subscriber_erase(subscriber=ada)

    assert not Subscriber.objects.filter(external_id="ada").exists()
    assert not TopicMembership.objects.filter(subscriber_id=ada.pk).exists()
    assert not Preference.objects.filter(subscriber_id=ada.pk).exists()
    erased = Message.objects.exclude(pk=bobs.pk)
    assert erased.count() == 2
    for message in erased:
        assert message.subscriber_id is None
        assert message.content == ERASED_CONTENT
        assert message.status == MessageStatus.DELIVERED
    bobs.refresh_from_db()
    assert bobs.content == {"to": "bob@example.com"}
    assert Topic.objects.get().subscribers.count() == 1


def test_erasure_scrubs_events_and_attempts_that_name_the_subscriber(
    in_tenant_a: Tenant,
) -> None:
    from channels_delivery.models import AttemptOutcome, DeliveryAttempt

    ada = subscriber_upsert(profile=SubscriberProfile(external_id="ada")).subscriber
    named = Event.objects.create(
        event_type_key="x",
        recipients=["bob", {"id": "ada", "email": "ada@example.com", "name": "Ada"}],
        actor="ada",
        outcome={"rules": [{"skipped": [{"subscriber": "ada", "reason": "no email address"}]}]},
    )
    by_id = Event.objects.create(event_type_key="x", recipients=["ada"], actor={"id": "ada"})
    other = Event.objects.create(event_type_key="x", recipients=["bob"], actor="bob")
    message = Message.objects.create(event=other, subscriber=ada, channel="email")
    DeliveryAttempt.objects.create(
        message=message,
        provider="smtp",
        outcome=AttemptOutcome.PERMANENT,
        response_excerpt="550 ada@example.com: no such user",
        error="rejected ada@example.com",
    )

    subscriber_erase(subscriber=ada)

    named.refresh_from_db()
    assert named.recipients == ["bob", ERASED_ENTRY]
    assert named.actor == ERASED_ENTRY
    assert named.outcome["rules"][0]["skipped"][0]["subscriber"] == "[erased]"
    by_id.refresh_from_db()
    assert (by_id.recipients, by_id.actor) == ([ERASED_ENTRY], ERASED_ENTRY)
    other.refresh_from_db()
    assert (other.recipients, other.actor) == (["bob"], "bob")
    attempt = DeliveryAttempt.objects.get()
    assert (attempt.response_excerpt, attempt.error) == ("", "")
    assert "ada@example.com" not in str(list(Event.objects.values_list("recipients", "actor")))


# --- topics ---------------------------------------------------------------------


def test_topic_keys_are_unique(in_tenant_a: Tenant) -> None:
    topic_create(key="news")
    with pytest.raises(TopicExists):
        topic_create(key="news")
    with pytest.raises(InvalidInput):
        topic_create(key="News")


def test_members_are_added_once_and_unknown_ids_are_reported(in_tenant_a: Tenant) -> None:
    for external_id in ("a", "b", "c"):
        subscriber_make(external_id)
    topic = topic_create(key="news")
    topic_subscribers_add(topic=topic, external_ids=["a"])
    with CaptureQueriesContext(connection) as queries:
        added = topic_subscribers_add(topic=topic, external_ids=["a", "b", "c", "ghost", "b"])
    assert statements(queries) == ["SELECT", "SELECT", "INSERT"]
    assert added.added == ("b", "c")
    assert added.already_members == ("a",)
    assert added.missing == ("ghost",)
    assert not Subscriber.objects.filter(external_id="ghost").exists()
    members = topic_subscriber_list(topic=topic, limit=2)
    assert [s.external_id for s in members.items] == ["a", "b"]
    rest = topic_subscriber_list(topic=topic, cursor=members.next_cursor, limit=2)
    assert [s.external_id for s in rest.items] == ["c"]
    assert rest.next_cursor is None

    removed = topic_subscribers_remove(topic=topic, external_ids=["a", "ghost"])
    assert removed.removed == ("a",)
    assert removed.not_members == ("ghost",)
    assert set(topic.subscribers.values_list("external_id", flat=True)) == {"b", "c"}
    assert Subscriber.objects.filter(external_id="a").exists()


def test_member_changes_are_capped_at_a_thousand(in_tenant_a: Tenant) -> None:
    topic = topic_create(key="news")
    with pytest.raises(InvalidInput):
        topic_subscribers_add(topic=topic, external_ids=[f"u-{i}" for i in range(1001)])


# --- selectors ------------------------------------------------------------------


def test_subscriber_list_pages_oldest_first_and_filters_by_email(in_tenant_a: Tenant) -> None:
    for i in range(5):
        subscriber_make(f"u-{i}", email=f"u{i % 2}@example.com")
    first = subscriber_list(limit=3)
    second = subscriber_list(cursor=first.next_cursor, limit=3)
    assert [s.external_id for s in first.items + second.items] == [f"u-{i}" for i in range(5)]
    assert second.next_cursor is None
    assert [s.external_id for s in subscriber_list(email="U1@EXAMPLE.com").items] == [
        "u-1",
        "u-3",
    ]
    with pytest.raises(InvalidCursor):
        subscriber_list(cursor="not a cursor")


# --- preferences ----------------------------------------------------------------


def test_subscriber_choices_overlay_the_tenant_defaults(in_tenant_a: Tenant) -> None:
    ada = subscriber_make("ada")
    preference_defaults_set(
        settings=[
            PreferenceSetting(channel="email", enabled=True),
            PreferenceSetting(channel="sms", enabled=False),
            PreferenceSetting(category="marketing", channel="email", enabled=False),
        ]
    )
    preference_subscriber_set(
        subscriber=ada,
        settings=[
            PreferenceSetting(category="marketing", channel="email", enabled=True),
            PreferenceSetting(event_type="order.shipped", channel="sms", enabled=True),
        ],
    )
    assert preference_effective_list(subscriber=ada) == [
        EffectivePreference(
            event_type=None, category=None, channel="email", enabled=True, source="default"
        ),
        EffectivePreference(
            event_type=None, category=None, channel="sms", enabled=False, source="default"
        ),
        EffectivePreference(
            event_type=None,
            category="marketing",
            channel="email",
            enabled=True,
            source="subscriber",
        ),
        EffectivePreference(
            event_type="order.shipped",
            category=None,
            channel="sms",
            enabled=True,
            source="subscriber",
        ),
    ]
    assert len(preference_default_list()) == 3


def test_setting_a_preference_again_updates_it(in_tenant_a: Tenant) -> None:
    ada = subscriber_make("ada")
    for enabled in (False, True):
        preference_subscriber_set(
            subscriber=ada, settings=[PreferenceSetting(channel="email", enabled=enabled)]
        )
        preference_defaults_set(settings=[PreferenceSetting(channel="email", enabled=enabled)])
    assert Preference.objects.filter(subscriber=ada).get().enabled is True
    assert Preference.objects.filter(subscriber__isnull=True).get().enabled is True


def test_nobody_opts_out_of_a_critical_event_type(in_tenant_a: Tenant) -> None:
    ada = subscriber_make("ada")
    EventType.objects.create(key="security.login", is_critical=True)
    settings = [
        PreferenceSetting(channel="sms", enabled=False),
        PreferenceSetting(event_type="security.login", channel="email", enabled=False),
    ]
    with pytest.raises(CriticalEventTypeOptOut) as refused:
        preference_subscriber_set(subscriber=ada, settings=settings)
    assert refused.value.event_types == ("security.login",)
    with pytest.raises(CriticalEventTypeOptOut):
        preference_defaults_set(settings=settings)
    assert not Preference.objects.exists()
    # Opting in is fine.
    preference_subscriber_set(
        subscriber=ada,
        settings=[PreferenceSetting(event_type="security.login", channel="email", enabled=True)],
    )


@pytest.mark.parametrize(
    ("setting", "pointer"),
    [
        (PreferenceSetting(channel="pigeon", enabled=True), "/0/channel"),
        (PreferenceSetting(event_type="a", category="b", channel="sms", enabled=True), "/0"),
        (PreferenceSetting(event_type="a" * 201, channel="sms", enabled=True), "/0/event_type"),
        (PreferenceSetting(category="c" * 101, channel="sms", enabled=True), "/0/category"),
    ],
)
def test_invalid_preference_settings_are_refused(
    in_tenant_a: Tenant, setting: PreferenceSetting, pointer: str
) -> None:
    with pytest.raises(InvalidInput) as invalid:
        preference_defaults_set(settings=[setting])
    assert pointers(invalid) == [pointer]
    assert not Preference.objects.exists()


def test_a_setting_repeated_in_one_request_is_refused(in_tenant_a: Tenant) -> None:
    setting = PreferenceSetting(channel="sms", enabled=True)
    with pytest.raises(InvalidInput) as invalid:
        preference_defaults_set(settings=[setting, setting])
    assert pointers(invalid) == ["/1"]
