"""herald_client.AsyncHerald against a live Herald: the same calls, awaited.

Committed data is made before the event loop starts (the ORM is synchronous);
each test runs its calls in one ``asyncio.run``.
"""

import asyncio
import uuid

import pytest
from herald_client import NotFound, ValidationError

from channels_delivery.catalogue import Channel
from rules_engine.models import Event
from tests.sdk.conftest import Live

pytestmark = pytest.mark.django_db


def test_events_send_get_and_replay(live: Live) -> None:
    herald = live.async_herald()
    event_type, key = live.name("order.paid"), f"paid-{uuid.uuid4().hex}"

    async def scenario() -> tuple[str, str, bool, str]:
        async with herald:
            first = await herald.events.send(event_type, payload={"total": 12}, idempotency_key=key)
            again = await herald.events.send(event_type, payload={"total": 12}, idempotency_key=key)
            event = await herald.events.get(first.id)
            batch = await herald.events.send_batch([{"event": event_type}])
            assert batch.accepted == 1
            return first.id, again.id, again.replayed, event.event

    first_id, again_id, replayed, name = asyncio.run(scenario())

    assert (again_id, replayed, name) == (first_id, True, event_type)
    count = live.commit(live.tenant_a, Event.objects.filter(event_type_key=event_type).count)
    assert count == 2


def test_concurrent_calls_share_one_client(live: Live) -> None:
    herald = live.async_herald()
    ids = [live.name(f"c{n}") for n in range(6)]

    async def scenario() -> list[str]:
        async with herald:
            made = await asyncio.gather(*(herald.subscribers.upsert(sid) for sid in ids))
            assert all(subscriber.created for subscriber in made)
            key = live.name("group")
            await herald.topics.create(key)
            added = await herald.topics.add_subscribers(key, ids)
            assert sorted(added.added) == sorted(ids)
            return [s.external_id async for s in herald.topics.iterate_subscribers(key, limit=4)]

    assert sorted(asyncio.run(scenario())) == sorted(ids)


def test_messages_preferences_and_the_inbox(live: Live) -> None:
    herald = live.async_herald()
    ada = live.name("ada")
    in_app, email = live.messages(
        live.tenant_a, ada, [{}, {"channel": Channel.EMAIL, "content": {"subject": "Hi"}}]
    )

    async def scenario() -> None:
        async with herald:
            page = await herald.messages.list(subscriber=ada)
            assert [m.id for m in page.items] == [in_app, email]
            assert (await herald.messages.get(email)).content == {"subject": "Hi"}
            preferences = await herald.preferences.set(ada, [{"channel": "sms", "enabled": False}])
            assert ("sms", False, "subscriber") in {
                (p.channel, p.enabled, p.source) for p in preferences
            }
            async with await herald.inbox.for_subscriber(ada) as inbox:
                listed = await inbox.list()
                assert [item.id for item in listed.items] == [in_app]
                assert (await inbox.mark_read(in_app)).read_at is not None
                assert (await inbox.list()).unread_count == 0

    asyncio.run(scenario())


def test_errors_and_isolation(live: Live) -> None:
    herald_a, herald_b = live.async_herald(live.tenant_a), live.async_herald(live.tenant_b)
    ada = live.name("ada")

    async def scenario() -> None:
        async with herald_a, herald_b:
            await herald_a.subscribers.upsert(ada)
            with pytest.raises(NotFound) as missing:
                await herald_b.subscribers.get(ada)
            assert missing.value.slug == "not-found"
            with pytest.raises(ValidationError) as refused:
                await herald_a.subscribers.upsert(ada, timezone="Mars/Olympus")
            assert [e.pointer for e in refused.value.errors] == ["/timezone"]

    asyncio.run(scenario())
