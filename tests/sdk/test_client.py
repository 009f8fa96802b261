"""herald_client.Herald against a live Herald: every resource, and the errors."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from herald_client import (
    AuthenticationError,
    Conflict,
    Herald,
    HeraldInbox,
    NotFound,
    PermissionDenied,
    ValidationError,
    subscriber_hash,
)

from channels_delivery.catalogue import Channel
from channels_delivery.models import MessageStatus
from herald.limits import limits_redis, rate_limit_key
from rules_engine.models import Event, Subscriber
from tenants.models import ApiScope
from tests.sdk.conftest import Live, herald_server

pytestmark = pytest.mark.django_db


# --- events -----------------------------------------------------------------------


def test_send_stores_the_event_and_get_reads_it_back(live: Live) -> None:
    herald = live.herald()
    event_type = live.name("order.shipped")
    send_at = datetime.now(UTC) + timedelta(hours=1)

    accepted = herald.events.send(
        event_type,
        to=[live.name("ada"), {"id": live.name("bob"), "email": "bob@example.com"}],
        payload={"order_id": "1042"},
        actor=live.name("ada"),
        send_at=send_at,
        tenant_data={"source": "sdk"},
    )

    assert accepted.status == "accepted"
    assert accepted.replayed is False
    stored = live.commit(live.tenant_a, lambda: Event.objects.get(pk=accepted.id))
    assert stored.event_type_key == event_type
    assert stored.payload == {"order_id": "1042"}
    assert stored.idempotency_key  # the client made one for the call
    event = herald.events.get(accepted.id)
    assert event.id == accepted.id
    assert event.event == event_type
    assert event.payload == {"order_id": "1042"}
    assert event.tenant_data == {"source": "sdk"}
    assert event.send_at is not None
    assert abs(event.send_at - send_at) < timedelta(seconds=1)
    assert event.created_at == accepted.created_at
    assert event.messages == []


def test_the_same_idempotency_key_replays_the_first_event(live: Live) -> None:
    herald = live.herald()
    event_type, key = live.name("signup"), f"signup-{uuid.uuid4().hex}"

    first = herald.events.send(event_type, payload={"n": 1}, idempotency_key=key)
    again = herald.events.send(event_type, payload={"n": 1}, idempotency_key=key)

    assert again.id == first.id
    assert (first.replayed, again.replayed) == (False, True)
    count = live.commit(live.tenant_a, Event.objects.filter(event_type_key=event_type).count)
    assert count == 1
    with pytest.raises(ValidationError) as refused:
        herald.events.send(event_type, payload={"n": 2}, idempotency_key=key)
    assert refused.value.slug == "idempotency-key-reused"


def test_calls_without_a_key_are_separate_events(live: Live) -> None:
    herald = live.herald()
    event_type = live.name("ping")

    first = herald.events.send(event_type)
    second = herald.events.send(event_type)

    assert first.id != second.id


def test_a_batch_answers_per_item_and_keeps_the_valid_ones(live: Live) -> None:
    herald = live.herald()
    event_type, key = live.name("batch"), live.name("key-3")

    result = herald.events.send_batch(
        [
            {"event": event_type, "to": [live.name("ada")], "payload": {"n": 1}},
            {"event": "", "payload": {"n": 2}},
            {"event": event_type, "payload": {"n": 3}, "idempotency_key": key},
        ]
    )

    assert (result.accepted, result.rejected) == (2, 1)
    assert [item.index for item in result.results] == [0, 1, 2]
    ok, bad, keyed = result.results
    assert ok.accepted
    assert ok.id is not None
    assert not bad.accepted
    assert bad.type == "urn:herald:problem:validation-failed"
    assert [error.pointer for error in bad.errors] == ["/event"]
    stored = live.commit(
        live.tenant_a,
        lambda: dict(
            Event.objects.filter(event_type_key=event_type).values_list("id", "idempotency_key")
        ),
    )
    assert {str(pk) for pk in stored} == {ok.id, keyed.id}
    assert stored[uuid.UUID(keyed.id)] == key
    assert stored[uuid.UUID(ok.id)]  # the client gave the unkeyed item a key

    replay = herald.events.send_batch(
        [{"event": event_type, "payload": {"n": 3}, "idempotency_key": key}]
    )
    assert replay.results[0].id == keyed.id
    assert replay.results[0].replayed is True


# --- subscribers ------------------------------------------------------------------


def test_subscriber_create_replace_read_list_and_erase(live: Live) -> None:
    herald = live.herald()
    ada = live.name("ada")

    created = herald.subscribers.upsert(
        ada, email="Ada@Example.com", name="Ada", locale="en-GB", data={"plan": "pro"}
    )
    replaced = herald.subscribers.upsert(ada, name="Ada L.")

    assert created.created is True
    assert created.external_id == ada
    assert created.data == {"plan": "pro"}
    assert replaced.created is False
    assert (replaced.name, replaced.email, replaced.data) == ("Ada L.", "", {})
    fetched = herald.subscribers.get(ada)
    assert fetched.name == "Ada L."
    assert fetched.created_at == created.created_at
    assert fetched.updated_at >= created.updated_at

    herald.subscribers.upsert(ada, email="ada@example.com")
    by_email = herald.subscribers.list(email="ADA@example.com")
    assert [subscriber.external_id for subscriber in by_email.items] == [ada]

    herald.subscribers.delete(ada)
    with pytest.raises(NotFound):
        herald.subscribers.get(ada)
    assert not live.commit(live.tenant_a, Subscriber.objects.filter(external_id=ada).exists)


def test_list_pages_and_iterate_walks_every_page(live: Live) -> None:
    herald = live.herald()
    ids = [live.name(f"p{n}") for n in range(5)]
    result = herald.subscribers.bulk_upsert([{"external_id": sid} for sid in ids])
    assert (result.created, result.invalid) == (5, 0)

    first = herald.subscribers.list(limit=2)
    assert len(first.items) == 2
    assert first.next_cursor is not None
    second = herald.subscribers.list(limit=2, cursor=first.next_cursor)
    assert {s.external_id for s in first.items}.isdisjoint(s.external_id for s in second.items)

    walked = [s.external_id for s in herald.subscribers.iterate(limit=2)]
    assert [sid for sid in walked if sid.startswith(live.tag)] == ids  # oldest first
    assert len(walked) == len(set(walked))


def test_bulk_upsert_reports_invalid_profiles_with_pointers(live: Live) -> None:
    herald = live.herald()

    result = herald.subscribers.bulk_upsert(
        [{"external_id": live.name("ok")}, {"external_id": live.name("bad"), "email": "nope"}]
    )

    assert (result.created, result.invalid) == (1, 1)
    bad = result.results[1]
    assert bad.status == "invalid"
    assert [error.pointer for error in bad.errors] == ["/email"]


# --- preferences ------------------------------------------------------------------


def test_preferences_set_and_read_back(live: Live) -> None:
    herald = live.herald()
    ada = live.name("ada")
    herald.subscribers.upsert(ada)
    defaults = herald.preferences.get_defaults()

    answer = herald.preferences.set(
        ada,
        [
            {"channel": "email", "enabled": False},
            {"channel": "sms", "enabled": True, "category": "marketing"},
        ],
    )

    mine = {(p.channel, p.category, p.enabled) for p in answer if p.source == "subscriber"}
    assert mine == {("email", None, False), ("sms", "marketing", True)}
    assert herald.preferences.get(ada) == answer
    assert [p for p in answer if p.source == "default"] == defaults


def test_preferences_of_an_unknown_subscriber_are_not_found(live: Live) -> None:
    with pytest.raises(NotFound):
        live.herald().preferences.get(live.name("ghost"))


# --- topics -----------------------------------------------------------------------


def test_topic_create_members_and_delete(live: Live) -> None:
    herald = live.herald()
    key = live.name("watchers")
    ada, bob, ghost = live.name("ada"), live.name("bob"), live.name("ghost")
    herald.subscribers.bulk_upsert([{"external_id": ada}, {"external_id": bob}])

    topic = herald.topics.create(key, name="Watchers")
    assert (topic.key, topic.name) == (key, "Watchers")
    assert herald.topics.get(key) == topic
    assert key in [t.key for t in herald.topics.iterate()]
    with pytest.raises(Conflict) as duplicate:
        herald.topics.create(key)
    assert duplicate.value.slug == "conflict"

    added = herald.topics.add_subscribers(key, [ada, bob, ghost])
    assert (sorted(added.added), added.missing) == (sorted([ada, bob]), [ghost])
    again = herald.topics.add_subscribers(key, [ada])
    assert (again.added, again.already_members) == ([], [ada])
    members = herald.topics.list_subscribers(key)
    assert sorted(s.external_id for s in members.items) == sorted([ada, bob])

    removed = herald.topics.remove_subscribers(key, [bob, ghost])
    assert (removed.removed, removed.not_members) == ([bob], [ghost])
    assert [s.external_id for s in herald.topics.iterate_subscribers(key)] == [ada]

    herald.topics.delete(key)
    with pytest.raises(NotFound):
        herald.topics.get(key)
    assert herald.subscribers.get(ada).external_id == ada  # members stay


def test_event_sent_to_a_topic(live: Live) -> None:
    herald = live.herald()
    key = live.name("team")
    herald.topics.create(key)

    accepted = herald.events.send(live.name("deploy"), topic=key)

    assert herald.events.get(accepted.id).topic == key


# --- messages ---------------------------------------------------------------------


def test_messages_list_filters_and_get_has_attempts(live: Live) -> None:
    herald = live.herald(scopes=[ApiScope.MESSAGES_READ])
    ada = live.name("ada")
    email_id, sms_id = live.messages(
        live.tenant_a,
        ada,
        [
            {"channel": Channel.EMAIL, "status": MessageStatus.SENT, "content": {"subject": "Hi"}},
            {"channel": Channel.SMS, "status": MessageStatus.FAILED, "content": {"text": "Yo"}},
        ],
    )

    page = herald.messages.list(subscriber=ada)
    assert [m.id for m in page.items] == [email_id, sms_id]  # newest first
    assert page.next_cursor is None
    only_sms = herald.messages.list(subscriber=ada, channel="sms")
    assert [m.id for m in only_sms.items] == [sms_id]
    failed = herald.messages.list(subscriber=ada, status="failed")
    assert [m.id for m in failed.items] == [sms_id]
    assert [m.id for m in herald.messages.iterate(subscriber=ada, limit=1)] == [email_id, sms_id]
    of_event = herald.messages.list(event=page.items[0].event_id)
    assert [m.id for m in of_event.items] == [email_id, sms_id]

    detail = herald.messages.get(email_id)
    assert (detail.channel, detail.status, detail.subscriber_id) == ("email", "sent", ada)
    assert detail.content == {"subject": "Hi"}
    assert detail.attempts == []
    assert detail.event_id == page.items[0].event_id


def test_a_message_that_does_not_exist_is_not_found(live: Live) -> None:
    with pytest.raises(NotFound) as missing:
        live.herald().messages.get(str(uuid.uuid4()))
    assert missing.value.status == 404
    assert missing.value.type == "urn:herald:problem:not-found"


# --- the inbox --------------------------------------------------------------------


def test_subscriber_reads_and_marks_their_inbox(live: Live) -> None:
    herald = live.herald()
    ada = live.name("ada")
    newest, older = live.messages(live.tenant_a, ada, [{}, {}])
    live.messages(live.tenant_a, live.name("bob"), [{}])  # not Ada's

    with herald.inbox.for_subscriber(ada) as inbox:
        page = inbox.list()
        assert [item.id for item in page.items] == [newest, older]
        assert page.unread_count == 2
        assert all(item.seen_at is not None for item in inbox.list().items)

        read = inbox.mark_read(newest)
        assert read.read_at is not None
        assert inbox.list(unread=True).unread_count == 1
        assert inbox.mark_unread(newest).read_at is None
        assert inbox.archive(older).archived_at is not None
        assert [item.id for item in inbox.list().items] == [newest]
        assert [item.id for item in inbox.iterate(archived=True)] == [older]
        assert inbox.unarchive(older).archived_at is None
        assert inbox.mark_all_read() == 2
        assert inbox.list().unread_count == 0


def test_inbox_with_a_hash_computed_on_the_tenants_server(live: Live) -> None:
    herald = live.herald()
    ada = live.name("ada")
    (message_id,) = live.messages(live.tenant_a, ada, [{}])
    secret = herald.inbox.secret().secret

    inbox = HeraldInbox(
        tenant=live.tenant_a.slug,
        subscriber_id=ada,
        subscriber_hash=subscriber_hash(secret=secret, external_id=ada),
        base_url=live.url,
    )
    with inbox:
        assert [item.id for item in inbox.list().items] == [message_id]

    bob_hash = subscriber_hash(secret=secret, external_id=live.name("bob"))
    forged = HeraldInbox(
        tenant=live.tenant_a.slug, subscriber_id=ada, subscriber_hash=bob_hash, base_url=live.url
    )
    with forged, pytest.raises(AuthenticationError) as refused:
        forged.list()
    assert refused.value.slug == "invalid-subscriber-hash"

    herald.inbox.rotate_secret()
    stale = HeraldInbox(
        tenant=live.tenant_a.slug,
        subscriber_id=ada,
        subscriber_hash=subscriber_hash(secret=secret, external_id=ada),
        base_url=live.url,
    )
    with stale, pytest.raises(AuthenticationError):
        stale.list()


def test_another_subscribers_message_is_not_found_in_the_inbox(live: Live) -> None:
    herald = live.herald()
    (bobs,) = live.messages(live.tenant_a, live.name("bob"), [{}])

    with herald.inbox.for_subscriber(live.name("ada")) as inbox, pytest.raises(NotFound):
        inbox.mark_read(bobs)


# --- errors -----------------------------------------------------------------------


def test_a_wrong_key_is_an_authentication_error_with_the_problem(live: Live) -> None:
    wrong = Herald("hk_test_" + "x" * 40, base_url=live.url)

    with wrong, pytest.raises(AuthenticationError) as refused:
        wrong.events.send(live.name("x"))

    error = refused.value
    assert error.status == 401
    assert error.type == "urn:herald:problem:invalid-api-key"
    assert error.slug == "invalid-api-key"
    assert error.title
    assert error.detail
    assert error.headers["www-authenticate"] == 'Bearer realm="herald"'


def test_a_malformed_key_is_refused_before_any_lookup(live: Live) -> None:
    with Herald("not-a-key", base_url=live.url) as wrong, pytest.raises(AuthenticationError) as e:
        wrong.subscribers.list()
    assert e.value.slug == "malformed-api-key"


def test_a_key_without_the_scope_is_permission_denied(live: Live) -> None:
    reader = live.herald(scopes=[ApiScope.MESSAGES_READ])

    with pytest.raises(PermissionDenied) as refused:
        reader.events.send(live.name("x"))

    assert refused.value.slug == "insufficient-scope"
    assert refused.value.extensions["required_scope"] == "events:write"


def test_validation_errors_carry_their_pointers(live: Live) -> None:
    herald = live.herald()

    with pytest.raises(ValidationError) as refused:
        herald.subscribers.upsert(live.name("ada"), email="not-an-email", phone="12")

    error = refused.value
    assert error.status == 422
    assert error.slug == "validation-failed"
    assert sorted(e.pointer for e in error.errors) == ["/email", "/phone"]
    assert all(e.detail for e in error.errors)
    with pytest.raises(ValidationError) as bad_event:
        herald.events.send(live.name("x"), send_at="next tuesday")
    assert [e.pointer for e in bad_event.value.errors] == ["/send_at"]


# --- isolation --------------------------------------------------------------------


def test_another_tenants_key_can_not_read_tenant_as_objects(live: Live) -> None:
    herald_a, herald_b = live.herald(live.tenant_a), live.herald(live.tenant_b)
    ada, key = live.name("ada"), live.name("topic")
    herald_a.subscribers.upsert(ada, email="ada@example.com")
    herald_a.topics.create(key)
    event = herald_a.events.send(live.name("secret.event"), to=[ada])
    (message_id,) = live.messages(live.tenant_a, ada, [{"channel": Channel.EMAIL}])

    for read in (
        lambda: herald_b.subscribers.get(ada),
        lambda: herald_b.preferences.get(ada),
        lambda: herald_b.topics.get(key),
        lambda: herald_b.topics.list_subscribers(key),
        lambda: herald_b.events.get(event.id),
        lambda: herald_b.messages.get(message_id),
        lambda: herald_b.subscribers.delete(ada),
    ):
        with pytest.raises(NotFound):
            read()
    assert herald_b.messages.list(subscriber=ada).items == []
    assert herald_b.subscribers.list(email="ada@example.com").items == []
    assert herald_a.subscribers.get(ada).email == "ada@example.com"  # still there
    with herald_b.inbox.for_subscriber(ada) as inbox_b:
        assert inbox_b.list().items == []
        with pytest.raises(NotFound):
            inbox_b.mark_read(message_id)


# --- limits -----------------------------------------------------------------------


def test_herald_429s_are_waited_out_and_nothing_is_stored_twice(live: Live) -> None:
    """A Herald with its rate limiter on and a bucket of one request (the burst is
    a twentieth of a second of the test plan's rate): four events sent at once
    meet 429 with Retry-After (at least 1 s), and the client waits each one out."""
    bucket = rate_limit_key(live.tenant_b.schema_name)
    limits_redis().delete(bucket)
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    event_type = live.name("burst")
    try:
        with herald_server(
            HERALD_RATE_LIMIT_ENABLED="true", HERALD_RATE_LIMIT_BURST_SECONDS="0.05"
        ) as url:
            token = live.token(live.tenant_b, [ApiScope.EVENTS_WRITE])
            with (
                Herald(token, base_url=url, http_client=http, max_retries=8) as herald,
                ThreadPoolExecutor(max_workers=4) as pool,
            ):
                started = time.monotonic()
                sent = pool.map(
                    lambda n: herald.events.send(event_type, payload={"n": n}), range(4)
                )
                ids = [accepted.id for accepted in sent]
                elapsed = time.monotonic() - started
    finally:
        http.close()
        limits_redis().delete(bucket)

    assert 429 in statuses
    assert statuses.count(202) == 4
    assert len(set(ids)) == 4
    assert live.commit(live.tenant_b, Event.objects.filter(event_type_key=event_type).count) == 4
    assert elapsed >= 1.0  # Retry-After was waited for
