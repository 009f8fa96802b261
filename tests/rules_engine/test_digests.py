"""Digests: events collected per subscriber and key for a window, then one message.

Time is controlled by passing ``now`` to the sweeper: nothing sleeps. Events are
processed at the real time, so a batch closes ``window_seconds`` after it.
"""

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from channels_delivery.models import Message
from herald.celery import app
from rules_engine.event_types import event_types_forget
from rules_engine.models import (
    DigestBatch,
    DigestItem,
    DigestStatus,
    Event,
    EventType,
    Preference,
    Rule,
    Subscriber,
    Template,
)
from rules_engine.services import digests
from rules_engine.services.digests import (
    FlushReport,
    digests_claim,
    digests_collect,
    digests_flush_due,
    digests_send,
)
from rules_engine.services.event_types import event_type_save
from rules_engine.services.pipeline import event_process
from rules_engine.services.rules import rule_create, rule_update
from rules_engine.services.subscribers import SubscriberProfile, subscriber_upsert
from rules_engine.services.templates import template_create
from rules_engine.services.topics import topic_create, topic_subscribers_add
from rules_engine.tasks import digests_flush_all
from tenants.db import tenant_connection
from tenants.models import Tenant
from tests.threads import in_own_connection

pytestmark = pytest.mark.django_db

WINDOW = 3600
DIGEST_EMAIL = {
    "en": {
        "subject": "{{ digest.count }} new comments ({{ digest.key }})",
        "text": "{% for e in digest.events %}{{ e.type }}:{{ e.payload.text }};{% endfor %}"
        " latest={{ event.payload.text }} for {{ subscriber.name }}",
    }
}


@pytest.fixture
def schema(tenant_a: Tenant) -> Iterator[Tenant]:
    with tenant_context(tenant_a):
        event_type_save(key="comment.posted", category="social")
        event_types_forget(schema_name=tenant_a.schema_name)
        yield tenant_a
        event_types_forget(schema_name=tenant_a.schema_name)


def person(external_id: str, **fields: Any) -> Subscriber:
    fields.setdefault("email", f"{external_id}@example.com")
    fields.setdefault("name", external_id.capitalize())
    return subscriber_upsert(
        profile=SubscriberProfile(external_id=external_id, **fields)
    ).subscriber


def digest_template(key: str = "digest-email", variants: Any = None, **options: Any) -> None:
    template_create(
        key=key,
        channel="email",
        variants=variants or DIGEST_EMAIL,
        fallback_locale="en",
        created_by="test",
        **options,
    )


def digest_rule(*, key: str = "", **options: Any) -> Rule:
    fields: dict[str, Any] = {
        "name": "Comment digest",
        "event_type_key": "comment.posted",
        "actions": [{"channel": "email", "template": "digest-email"}],
        "recipients": {"kind": "event"},
        "digest": {"key": key, "window_seconds": WINDOW},
        "created_by": "test",
    }
    fields.update(options)
    return rule_create(**fields).rule


def send(text: str = "hi", recipients: Any = ("ann",), **payload: Any) -> Event:
    event = Event.objects.create(
        event_type_key="comment.posted",
        recipients=list(recipients),
        payload={"text": text, **payload},
    )
    processed = event_process(event_id=event.id)
    assert processed is not None
    return processed


def open_batches() -> list[DigestBatch]:
    return list(
        DigestBatch.objects.filter(status=DigestStatus.OPEN)
        .select_related("subscriber")
        .order_by("subscriber__external_id", "key")
    )


def item_count(batch: DigestBatch) -> int:
    return DigestItem.objects.filter(batch=batch).count()


def closing(batch: DigestBatch) -> datetime:
    return DigestBatch.objects.get(pk=batch.pk).closes_at


def all_messages() -> list[Message]:
    return list(Message.objects.select_related("subscriber").order_by("subscriber__external_id"))


# --- collecting ------------------------------------------------------------------------


def test_three_events_in_the_window_make_one_batch_and_then_one_message(schema: Tenant) -> None:
    person("ann")
    digest_template()
    made = digest_rule()
    events = [send(text) for text in ("one", "two", "three")]

    assert Message.objects.count() == 0
    (batch,) = open_batches()
    assert (batch.subscriber.external_id, batch.key) == ("ann", "comment.posted")
    assert item_count(batch) == 3
    assert batch.rule_id == made.pk
    assert batch.closes_at - batch.opened_at == timedelta(seconds=WINDOW)
    for event in events:
        story = event.outcome["rules"][0]
        assert (story["matched"], story["messages"], story["digested"]) == (True, 0, 1)
        assert event.outcome["digested"] == 1

    closes_at = closing(batch)
    early = digests_flush_due(now=closes_at - timedelta(seconds=1))
    assert early == FlushReport(claimed=0, sent=0, messages=0)
    assert digests_flush_due(now=closes_at) == FlushReport(claimed=1, sent=1, messages=1)

    (message,) = all_messages()
    assert message.content == {
        "subject": "3 new comments (comment.posted)",
        "text": "comment.posted:one;comment.posted:two;comment.posted:three; latest=three for Ann",
    }
    assert (message.channel, message.status, message.locale) == ("email", "queued", "en")
    assert message.event_id == events[-1].id
    assert message.rule_version is not None
    assert message.rule_version.rule_id == made.pk
    batch.refresh_from_db()
    assert (batch.status, batch.message_id, batch.sent_at) == (
        DigestStatus.SENT,
        message.id,
        closes_at,
    )
    assert batch.outcome == {
        "events": 3,
        "messages": [{"channel": "email", "id": str(message.id)}],
        "skipped": [],
    }
    # Sent once: the next sweep finds nothing.
    assert digests_flush_due(now=closes_at + timedelta(hours=5)).claimed == 0
    assert Message.objects.count() == 1


def test_separate_keys_make_separate_batches(schema: Tenant) -> None:
    person("ann")
    digest_template()
    digest_rule(key='"post-" + string(event.payload.post)')
    send("a", post=1)
    send("b", post=2)
    send("c", post=1)
    batches = open_batches()
    assert [(batch.key, item_count(batch)) for batch in batches] == [("post-1", 2), ("post-2", 1)]

    report = digests_flush_due(now=max(closing(batch) for batch in batches))
    assert (report.sent, report.messages) == (2, 2)
    subjects = sorted(message.content["subject"] for message in all_messages())
    assert subjects == ["1 new comments (post-2)", "2 new comments (post-1)"]


def test_batches_are_per_subscriber_and_a_key_may_read_the_subscriber(schema: Tenant) -> None:
    person("ann", data={"team": "red"})
    person("bob", data={"team": "blue"})
    digest_template()
    digest_rule(key="subscriber.data.team")
    send("first", recipients=["ann", "bob"])
    send("second", recipients=["ann"])
    batches = open_batches()
    assert [(b.subscriber.external_id, b.key, item_count(b)) for b in batches] == [
        ("ann", "red", 2),
        ("bob", "blue", 1),
    ]
    digests_flush_due(now=max(closing(batch) for batch in batches))
    by_name = {m.subscriber.external_id: m.content for m in all_messages() if m.subscriber}
    assert by_name["ann"]["subject"] == "2 new comments (red)"
    assert by_name["ann"]["text"].endswith("latest=second for Ann")
    assert by_name["bob"]["subject"] == "1 new comments (blue)"


def test_a_new_batch_opens_after_a_flush(schema: Tenant) -> None:
    person("ann")
    digest_template()
    digest_rule()
    send("before")
    (first,) = open_batches()
    digests_flush_due(now=closing(first))
    send("after")
    (second,) = open_batches()
    assert second.pk != first.pk
    assert item_count(second) == 1
    digests_flush_due(now=closing(second))
    subjects = [m.content["subject"] for m in Message.objects.order_by("created_at")]
    assert subjects == ["1 new comments (comment.posted)", "1 new comments (comment.posted)"]
    assert DigestBatch.objects.filter(status=DigestStatus.SENT).count() == 2


def test_an_event_arriving_while_a_batch_is_being_sent_opens_a_new_one(schema: Tenant) -> None:
    person("ann")
    digest_template()
    digest_rule()
    send("one")
    (claimed,) = open_batches()
    token = uuid.uuid4()
    now = closing(claimed)
    assert digests_claim(now=now, claim=token) == [claimed.pk]
    send("two")  # the claimed batch is no longer open
    (fresh,) = open_batches()
    assert fresh.pk != claimed.pk
    assert digests_send(batch_ids=[claimed.pk], claim=token, now=now).messages == 1
    (message,) = all_messages()
    assert message.content["subject"] == "1 new comments (comment.posted)"
    assert item_count(fresh) == 1


def test_only_recipients_who_pass_every_check_are_digested(schema: Tenant) -> None:
    person("ann")
    person("bob", email="")  # unreachable by email
    cid = person("cid")
    Preference.objects.create(subscriber=cid, channel="email", enabled=False)
    digest_template()
    digest_rule()
    event = send(recipients=["ann", "bob", "cid", "nobody"])
    assert [batch.subscriber.external_id for batch in open_batches()] == ["ann"]
    story = event.outcome["rules"][0]
    assert story["digested"] == 1
    reasons = {entry["subscriber"]: entry["reason"] for entry in story["skipped"]}
    assert reasons["bob"] == "no email address"
    assert reasons["cid"].startswith("subscriber opted out")
    assert reasons["nobody"] == "no such subscriber"


def test_a_digest_key_that_fails_or_is_not_a_string_skips_with_the_reason(
    schema: Tenant,
) -> None:
    person("ann")
    person("bob")
    digest_template()
    digest_rule(name="number", key="event.payload.post")
    digest_rule(name="missing", key="event.payload.nothing")
    digest_rule(name="long", key='"x" + event.payload.text')
    event = send(text="y" * 250, post=7, recipients=["ann", "bob"])
    assert open_batches() == []
    stories = {story["name"]: story for story in event.outcome["rules"]}
    for name in ("number", "missing", "long"):
        assert stories[name]["digested"] == 0
        assert len(stories[name]["skipped"]) == 2  # the key failed once, for each recipient
    assert stories["number"]["skipped"][0]["reason"] == "digest key: must give a string, got int"
    assert "nothing" in stories["missing"]["skipped"][0]["reason"]
    assert stories["long"]["skipped"][0]["reason"] == (
        "digest key: gave 251 characters; a key has at most 200"
    )
    assert event.status == "processed"


def test_preferences_are_checked_again_when_sending(schema: Tenant) -> None:
    ann = person("ann")
    digest_template()
    digest_rule()
    send()
    (batch,) = open_batches()
    Preference.objects.create(subscriber=ann, channel="email", enabled=False)
    assert digests_flush_due(now=closing(batch)) == FlushReport(claimed=1, sent=1, messages=0)
    assert Message.objects.count() == 0
    batch.refresh_from_db()
    assert batch.status == DigestStatus.SENT
    assert batch.message_id is None
    (skipped,) = batch.outcome["skipped"]
    assert skipped["channel"] == "email"
    assert skipped["reason"].startswith("subscriber opted out")


def test_critical_event_types_are_digested_and_bypass_opt_outs(schema: Tenant) -> None:
    ann = person("ann")
    Preference.objects.create(subscriber=ann, channel="email", enabled=False)
    event_type_save(key="comment.posted", category="social", is_critical=True)
    event_types_forget(schema_name=schema.schema_name)
    digest_template()
    digest_rule(send_window={"start": "09:00", "end": "09:01"})
    send("a")
    send("b")
    (batch,) = open_batches()
    assert item_count(batch) == 2
    digests_flush_due(now=closing(batch))
    (message,) = all_messages()
    assert message.content["subject"] == "2 new comments (comment.posted)"
    assert message.send_after is None  # critical: the send window does not hold it


def test_the_send_window_holds_the_digest_message(schema: Tenant) -> None:
    person("ann", timezone="UTC")
    digest_template()
    digest_rule(send_window={"start": "09:00", "end": "10:00"})
    send()
    (batch,) = open_batches()
    now = closing(batch).replace(hour=11, minute=0, second=0, microsecond=0) + timedelta(days=1)
    digests_flush_due(now=now)
    (message,) = all_messages()
    assert message.send_after == (now + timedelta(days=1)).replace(hour=9, minute=0)


def test_a_render_error_is_a_failed_message_and_the_batch_is_done(schema: Tenant) -> None:
    person("ann")
    digest_template(
        variants={"en": {"subject": "{{ digest.nothing.deeper }}", "text": "x"}}, strict=True
    )
    digest_rule()
    send()
    (batch,) = open_batches()
    assert digests_flush_due(now=closing(batch)).messages == 1
    (message,) = all_messages()
    assert message.status == "failed"
    assert message.content["error"].startswith("subject: ")
    batch.refresh_from_db()
    assert batch.status == DigestStatus.SENT


def test_a_rule_disabled_meanwhile_sends_nothing(schema: Tenant) -> None:
    person("ann")
    digest_template()
    made = digest_rule()
    send()
    (batch,) = open_batches()
    rule_update(rule=made, enabled=False, created_by="test")
    assert digests_flush_due(now=closing(batch)).messages == 0
    batch.refresh_from_db()
    assert (batch.status, batch.outcome["skipped"]) == (
        DigestStatus.SENT,
        [{"reason": "the rule was disabled"}],
    )


def test_a_batch_keeps_the_version_that_opened_it(schema: Tenant) -> None:
    person("ann")
    digest_template()
    digest_template(
        key="other-email", variants={"en": {"subject": "other {{ digest.count }}", "text": "x"}}
    )
    made = digest_rule()
    send()
    rule_update(
        rule=made, actions=[{"channel": "email", "template": "other-email"}], created_by="test"
    )
    send()
    (batch,) = open_batches()
    assert batch.rule_version.version == 1
    digests_flush_due(now=closing(batch))
    (message,) = all_messages()
    assert message.content["subject"] == "2 new comments (comment.posted)"


def test_a_digest_lists_the_latest_hundred_events_and_counts_all(schema: Tenant) -> None:
    ann = person("ann")
    digest_template(
        variants={
            "en": {
                "subject": "{{ digest.count }} / {{ digest.events | length }}",
                "text": "{{ digest.events[0].payload.n }}..{{ digest.events[-1].payload.n }}",
            }
        }
    )
    made = digest_rule()
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    events = Event.objects.bulk_create(
        Event(
            event_type_key="comment.posted",
            payload={"n": n},
            created_at=start + timedelta(seconds=n),
            status="processed",
        )
        for n in range(105)
    )
    entry = digests.DigestEntry(
        rule_id=made.pk,
        rule_version_id=made.versions.get().pk,
        subscriber_id=ann.pk,
        key="all",
        window_seconds=WINDOW,
    )
    for event in reversed(events):  # the order they are collected in does not matter
        assert digests_collect(entries=[entry], event_id=event.id, now=start) == 1
    assert digests_collect(entries=[entry], event_id=events[0].id, now=start) == 0  # once
    digests_flush_due(now=start + timedelta(seconds=WINDOW))
    (message,) = all_messages()
    assert message.content == {"subject": "105 / 100", "text": "5..104"}
    assert message.event_id == events[-1].id


# --- sweeping, concurrency, tenancy ----------------------------------------------------


def test_a_claimed_batch_is_sent_once_and_an_orphaned_claim_is_taken_over(
    schema: Tenant,
) -> None:
    person("ann")
    digest_template()
    digest_rule()
    send()
    (batch,) = open_batches()
    now = closing(batch)
    first, second = uuid.uuid4(), uuid.uuid4()
    assert digests_claim(now=now, claim=first) == [batch.pk]
    # Another sweeper meanwhile finds nothing to claim ...
    assert digests_flush_due(now=now + timedelta(seconds=30)).claimed == 0
    # ... until the first sweeper's claim is old enough to be presumed dead.
    orphaned = now + timedelta(seconds=2 * settings.CELERY_TASK_TIME_LIMIT)
    assert digests_claim(now=orphaned, claim=second) == [batch.pk]
    # The first sweeper comes back late: its claim is gone, it sends nothing.
    assert digests_send(batch_ids=[batch.pk], claim=first, now=now).sent == 0
    assert digests_send(batch_ids=[batch.pk], claim=second, now=orphaned).sent == 1
    assert digests_send(batch_ids=[batch.pk], claim=second, now=orphaned).sent == 0
    assert Message.objects.count() == 1


def test_batches_are_per_tenant(schema: Tenant, tenant_b: Tenant) -> None:
    person("ann")
    digest_template()
    digest_rule()
    send()
    (batch,) = open_batches()
    now = closing(batch)
    with tenant_context(tenant_b):
        assert DigestBatch.objects.count() == 0
        assert digests_flush_due(now=now).claimed == 0
    assert DigestBatch.objects.get(pk=batch.pk).status == DigestStatus.OPEN
    assert digests_flush_due(now=now).sent == 1


def test_the_beat_task_sends_due_digests_in_every_tenant(schema: Tenant) -> None:
    person("ann")
    digest_template()
    digest_rule()
    send()
    (batch,) = open_batches()
    DigestBatch.objects.filter(pk=batch.pk).update(closes_at=batch.opened_at)
    digests_flush_all()
    assert DigestBatch.objects.get(pk=batch.pk).status == DigestStatus.SENT
    assert Message.objects.count() == 1
    entry = settings.CELERY_BEAT_SCHEDULE["digests-flush"]
    assert (entry["task"], entry["schedule"]) == ("rules_engine.digests_flush_all", 15.0)
    assert "rules_engine.digests_flush_all" in app.tasks


def test_one_tenants_failure_does_not_hold_up_the_others_digests(
    schema: Tenant, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rules_engine import tasks

    person("ann")
    digest_template()
    digest_rule()
    send()
    (batch,) = open_batches()
    DigestBatch.objects.filter(pk=batch.pk).update(closes_at=batch.opened_at)

    def broken_in_beta(*, now: datetime) -> FlushReport:
        if tenant_connection.schema_name == "beta":
            raise RuntimeError("beta is broken")
        return digests_flush_due(now=now)

    monkeypatch.setattr(tasks, "digests_flush_due", broken_in_beta)
    # beta has nothing due: the beat would skip it without calling the service.
    monkeypatch.setattr("tenants.sweeps._probe_run", lambda probe: True)
    digests_flush_all()
    assert DigestBatch.objects.get(pk=batch.pk).status == DigestStatus.SENT
    assert "sending the digests of beta failed" in caplog.text


def test_collecting_costs_the_same_queries_for_few_and_many_recipients(schema: Tenant) -> None:
    topic = topic_create(key="many")
    digest_template()
    digest_rule(recipients={"kind": "topic", "topic": "many"}, key="event.payload.thread")

    def queries_for(count: int) -> int:
        names = [f"user-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        for name in names:
            person(name)
        topic_subscribers_add(topic=topic, external_ids=names)
        event = Event.objects.create(
            event_type_key="comment.posted", payload={"text": "x", "thread": "t"}
        )
        with CaptureQueriesContext(connection) as captured:
            event_process(event_id=event.id)
        assert DigestItem.objects.filter(event=event).count() >= count
        return len(captured.captured_queries)

    queries_for(1)  # warms the per-process caches (event types, compiled programs)
    small = queries_for(3)
    large = queries_for(60)
    assert small == large, "queries grew with the number of recipients"
    assert large <= 12


def test_sending_costs_the_same_queries_for_few_and_many_batches(schema: Tenant) -> None:
    digest_template()
    digest_rule(recipients={"kind": "broadcast", "filter": ""})

    def queries_for(count: int) -> int:
        Subscriber.objects.all().delete()
        for n in range(count):
            person(f"user-{n}")
        send(recipients=[])
        batches = open_batches()
        assert len(batches) == count
        now = max(closing(batch) for batch in batches)
        with CaptureQueriesContext(connection) as captured:
            report = digests_flush_due(now=now)
        assert report.messages == count
        return len(captured.captured_queries)

    queries_for(1)
    assert queries_for(3) == queries_for(40)


# --- two sweepers at once, on committed rows ---------------------------------------------


RACERS = [f"racer-{n}" for n in range(20)]


@pytest.fixture
def committed_batches(tenant_a: Tenant) -> Iterator[datetime]:
    """Twenty open batches committed in tenant alpha (other connections see them);
    yields when they close, and removes everything afterwards."""

    def make() -> datetime:
        with tenant_context(tenant_a):
            event_type_save(key="race.digest")
            event_types_forget(schema_name=tenant_a.schema_name)
            template_create(
                key="race-inbox",
                channel="in_app",
                variants={"en": {"title": "{{ digest.count }} new"}},
                created_by="test",
            )
            rule_create(
                name="race",
                event_type_key="race.digest",
                actions=[{"channel": "in_app", "template": "race-inbox"}],
                recipients={"kind": "event"},
                digest={"key": "", "window_seconds": 60},
                created_by="test",
            )
            for name in RACERS:
                person(name)
            event = Event.objects.create(event_type_key="race.digest", recipients=RACERS)
            event_process(event_id=event.id)
            return max(DigestBatch.objects.values_list("closes_at", flat=True))

    def clean() -> None:
        with tenant_context(tenant_a):
            Event.objects.filter(event_type_key="race.digest").delete()
            Rule.objects.filter(event_type__key="race.digest").delete()
            Template.objects.filter(key="race-inbox").delete()
            EventType.objects.filter(key="race.digest").delete()
            Subscriber.objects.filter(external_id__in=RACERS).delete()
            event_types_forget(schema_name=tenant_a.schema_name)

    closes_at = in_own_connection(make)
    try:
        yield closes_at
    finally:
        in_own_connection(clean)


def test_two_sweepers_at_once_send_each_batch_once(
    tenant_a: Tenant, committed_batches: datetime
) -> None:
    start = threading.Barrier(2, timeout=20)
    reports: list[FlushReport] = []
    errors: list[BaseException] = []

    def sweeper() -> None:
        try:
            with tenant_context(tenant_a):
                start.wait()
                reports.append(digests_flush_due(now=committed_batches, limit=15))
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    # Skipping each other's locked rows, the two claimed every batch between them
    # (each at most its limit), and each sent exactly what it claimed.
    assert len(reports) == 2
    assert sum(report.claimed for report in reports) == 20
    assert all(report.claimed <= 15 for report in reports)
    assert all(report.sent == report.messages == report.claimed for report in reports)

    def outcome() -> tuple[int, int, int, int]:
        with tenant_context(tenant_a):
            later = digests_flush_due(now=committed_batches)
            sent = DigestBatch.objects.filter(
                rule__name="race", status=DigestStatus.SENT, message__isnull=False
            ).count()
            messages = Message.objects.filter(event__event_type_key="race.digest")
            recipients = messages.values("subscriber").distinct().count()
            return later.claimed, sent, messages.count(), recipients

    assert in_own_connection(outcome) == (0, 20, 20, 20)


def _in_tenant(tenant: Tenant, work: Callable[[], Any]) -> Any:
    with tenant_context(tenant):
        return work()


def test_a_batch_a_collecting_pipeline_holds_is_skipped_not_waited_for(
    tenant_a: Tenant, committed_batches: datetime
) -> None:
    holding = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        from django.db import transaction

        try:
            with tenant_context(tenant_a), transaction.atomic():
                DigestBatch.objects.select_for_update().filter(
                    subscriber__external_id="racer-0"
                ).get()
                holding.set()
                release.wait(20)
        except BaseException as error:
            errors.append(error)
            holding.set()
        finally:
            connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(20)
        report = in_own_connection(
            lambda: _in_tenant(tenant_a, lambda: digests_flush_due(now=committed_batches))
        )
        assert (report.claimed, report.sent) == (19, 19)
    finally:
        release.set()
        thread.join(30)
    assert not errors, errors
    report = in_own_connection(
        lambda: _in_tenant(tenant_a, lambda: digests_flush_due(now=committed_batches))
    )
    assert (report.claimed, report.sent, report.messages) == (1, 1, 1)
