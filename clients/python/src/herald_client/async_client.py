"""The asyncio client: ``AsyncHerald`` and ``AsyncHeraldInbox``, the same
operations as ``Herald`` and ``HeraldInbox`` (the same requests, built by
``_calls``), awaited.

    async with AsyncHerald(api_key="hk_live_…") as herald:
        await herald.events.send("order.shipped", to=["user-42"])
"""

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx

from herald_client import _calls
from herald_client._retry import Backoff
from herald_client._transport import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    AsyncTransport,
)
from herald_client.client import api_key_headers, base_url_or_default, inbox_headers
from herald_client.inbox_auth import subscriber_hash
from herald_client.models import (
    BatchResult,
    BulkResult,
    Event,
    EventAccepted,
    EventInput,
    InboxItem,
    InboxPage,
    InboxSecret,
    Me,
    MembersAdded,
    MembersRemoved,
    Message,
    MessageDetail,
    Page,
    Preference,
    PreferenceInput,
    Recipient,
    Subscriber,
    SubscriberInput,
    SubscriberUpserted,
    Topic,
)


class _Resource:
    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport


class AsyncEvents(_Resource):
    async def send(
        self,
        event: str,
        *,
        to: Sequence[Recipient] | None = None,
        topic: str | None = None,
        payload: Mapping[str, Any] | None = None,
        actor: Recipient | None = None,
        send_at: datetime | str | None = None,
        tenant_data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> EventAccepted:
        """Send one event. Without ``idempotency_key`` one is made for this call, so
        its retries never store the event twice; pass your own (an order id and
        what happened to it) to make repeated calls idempotent too."""
        return await self._transport.execute(
            _calls.event_send(
                event=event,
                to=to,
                topic=topic,
                payload=payload,
                actor=actor,
                send_at=send_at,
                tenant_data=tenant_data,
                idempotency_key=idempotency_key,
            )
        )

    async def send_batch(self, events: Sequence[EventInput]) -> BatchResult:
        """Send up to 1,000 events; each is accepted or rejected on its own."""
        return await self._transport.execute(_calls.event_send_batch(events=events))

    async def get(self, event_id: str) -> Event:
        return await self._transport.execute(_calls.event_get(event_id=event_id))


class AsyncSubscribers(_Resource):
    async def upsert(
        self,
        external_id: str,
        *,
        email: str | None = None,
        phone: str | None = None,
        name: str | None = None,
        locale: str | None = None,
        timezone: str | None = None,
        data: Mapping[str, Any] | None = None,
        channels: Mapping[str, Any] | None = None,
    ) -> SubscriberUpserted:
        """Create or replace the profile: fields left out are cleared."""
        profile = {
            "email": email,
            "phone": phone,
            "name": name,
            "locale": locale,
            "timezone": timezone,
            "data": data,
            "channels": channels,
        }
        return await self._transport.execute(
            _calls.subscriber_upsert(external_id=external_id, profile=profile)
        )

    async def bulk_upsert(self, subscribers: Sequence[SubscriberInput]) -> BulkResult:
        return await self._transport.execute(_calls.subscriber_bulk_upsert(subscribers=subscribers))

    async def get(self, external_id: str) -> Subscriber:
        return await self._transport.execute(_calls.subscriber_get(external_id=external_id))

    async def delete(self, external_id: str) -> None:
        """Erase the subscriber: profile, memberships and preferences."""
        await self._transport.execute(_calls.subscriber_delete(external_id=external_id))

    async def list(
        self, *, cursor: str | None = None, limit: int | None = None, email: str | None = None
    ) -> Page[Subscriber]:
        return await self._transport.execute(
            _calls.subscriber_list(cursor=cursor, limit=limit, email=email)
        )

    def iterate(
        self, *, limit: int | None = None, email: str | None = None
    ) -> AsyncIterator[Subscriber]:
        """Every subscriber, oldest first, page by page."""
        return self._transport.iterate(
            lambda cursor: _calls.subscriber_list(cursor=cursor, limit=limit, email=email)
        )


class AsyncPreferences(_Resource):
    async def get(self, external_id: str) -> list[Preference]:
        """The subscriber's preferences in effect (tenant defaults overlaid by their own)."""
        return await self._transport.execute(_calls.preferences_get(external_id=external_id))

    async def set(
        self, external_id: str, preferences: Sequence[PreferenceInput]
    ) -> list[Preference]:
        return await self._transport.execute(
            _calls.preferences_set(external_id=external_id, preferences=preferences)
        )

    async def get_defaults(self) -> list[Preference]:
        return await self._transport.execute(_calls.preference_defaults_get())

    async def set_defaults(self, preferences: Sequence[PreferenceInput]) -> list[Preference]:
        return await self._transport.execute(
            _calls.preference_defaults_set(preferences=preferences)
        )


class AsyncTopics(_Resource):
    async def create(self, key: str, *, name: str = "") -> Topic:
        return await self._transport.execute(_calls.topic_create(key=key, name=name))

    async def get(self, key: str) -> Topic:
        return await self._transport.execute(_calls.topic_get(key=key))

    async def list(self, *, cursor: str | None = None, limit: int | None = None) -> Page[Topic]:
        return await self._transport.execute(_calls.topic_list(cursor=cursor, limit=limit))

    def iterate(self, *, limit: int | None = None) -> AsyncIterator[Topic]:
        return self._transport.iterate(lambda cursor: _calls.topic_list(cursor=cursor, limit=limit))

    async def delete(self, key: str) -> None:
        await self._transport.execute(_calls.topic_delete(key=key))

    async def add_subscribers(self, key: str, subscribers: Sequence[str]) -> MembersAdded:
        return await self._transport.execute(
            _calls.topic_subscribers_add(key=key, subscribers=subscribers)
        )

    async def remove_subscribers(self, key: str, subscribers: Sequence[str]) -> MembersRemoved:
        return await self._transport.execute(
            _calls.topic_subscribers_remove(key=key, subscribers=subscribers)
        )

    async def list_subscribers(
        self, key: str, *, cursor: str | None = None, limit: int | None = None
    ) -> Page[Subscriber]:
        return await self._transport.execute(
            _calls.topic_subscribers_list(key=key, cursor=cursor, limit=limit)
        )

    def iterate_subscribers(
        self, key: str, *, limit: int | None = None
    ) -> AsyncIterator[Subscriber]:
        return self._transport.iterate(
            lambda cursor: _calls.topic_subscribers_list(key=key, cursor=cursor, limit=limit)
        )


class AsyncMessages(_Resource):
    async def list(
        self,
        *,
        subscriber: str | None = None,
        status: str | None = None,
        channel: str | None = None,
        event: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Page[Message]:
        """Messages, newest first; ``event`` filters by the event's id."""
        return await self._transport.execute(
            _calls.message_list(
                subscriber=subscriber,
                status=status,
                channel=channel,
                event=event,
                cursor=cursor,
                limit=limit,
            )
        )

    def iterate(
        self,
        *,
        subscriber: str | None = None,
        status: str | None = None,
        channel: str | None = None,
        event: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Message]:
        return self._transport.iterate(
            lambda cursor: _calls.message_list(
                subscriber=subscriber,
                status=status,
                channel=channel,
                event=event,
                cursor=cursor,
                limit=limit,
            )
        )

    async def get(self, message_id: str) -> MessageDetail:
        """A message with every delivery attempt."""
        return await self._transport.execute(_calls.message_get(message_id=message_id))


class AsyncInboxAdmin(_Resource):
    """The tenant's side of the inbox: the secret that subscriber hashes are made with."""

    def __init__(self, transport: AsyncTransport, owner: "AsyncHerald") -> None:
        super().__init__(transport)
        self._owner = owner

    async def secret(self) -> InboxSecret:
        return await self._transport.execute(_calls.inbox_secret_get())

    async def rotate_secret(self) -> InboxSecret:
        """A new secret: hashes made with the old one stop working at once."""
        return await self._transport.execute(_calls.inbox_secret_rotate())

    async def subscriber_hash(self, external_id: str) -> str:
        """The hash to hand to this subscriber's page (fetches the secret; cache it
        on your side and use ``herald_client.subscriber_hash`` when that matters)."""
        secret = await self.secret()
        return subscriber_hash(secret=secret.secret, external_id=external_id)

    async def for_subscriber(self, external_id: str) -> "AsyncHeraldInbox":
        """A client for this subscriber's inbox, as their browser would use it."""
        return AsyncHeraldInbox(
            tenant=(await self._owner.me()).tenant_slug,
            subscriber_id=external_id,
            subscriber_hash=await self.subscriber_hash(external_id),
            base_url=self._transport.base_url,
            timeout=self._transport.timeout,
            max_retries=self._transport.max_retries,
            backoff=self._transport.backoff,
        )


class AsyncHerald:
    """Herald's API with a tenant's API key.

    ``api_key`` and ``base_url`` default to the environment's ``HERALD_API_KEY``
    and ``HERALD_BASE_URL``. Failed requests are retried up to ``max_retries``
    times (see ``Backoff``); pass ``http_client`` for proxies or custom TLS.
    Use it as an async context manager, or await ``close()``, to release connections.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: Backoff | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._transport = AsyncTransport(
            base_url=base_url_or_default(base_url),
            headers=api_key_headers(api_key),
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff or Backoff(),
            http_client=http_client,
        )
        self.events = AsyncEvents(self._transport)
        self.subscribers = AsyncSubscribers(self._transport)
        self.preferences = AsyncPreferences(self._transport)
        self.topics = AsyncTopics(self._transport)
        self.messages = AsyncMessages(self._transport)
        self.inbox = AsyncInboxAdmin(self._transport, self)
        self._me: Me | None = None

    async def me(self) -> Me:
        """The tenant and key this client authenticates as (asked once, then remembered)."""
        if self._me is None:
            self._me = await self._transport.execute(_calls.me_get())
        return self._me

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncHeraldInbox:
    """One subscriber's in-app inbox, authenticated by the subscriber hash that the
    tenant's server computed (``Herald.inbox.subscriber_hash``); needs no API key."""

    def __init__(
        self,
        *,
        tenant: str,
        subscriber_id: str,
        subscriber_hash: str,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: Backoff | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._transport = AsyncTransport(
            base_url=base_url_or_default(base_url),
            headers=inbox_headers(
                tenant=tenant, subscriber_id=subscriber_id, subscriber_hash=subscriber_hash
            ),
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff or Backoff(),
            http_client=http_client,
        )

    async def list(
        self,
        *,
        unread: bool | None = None,
        archived: bool = False,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> InboxPage:
        """The subscriber's messages, newest first, with ``unread_count``; listing
        marks them seen. ``unread``: True only unread, False only read."""
        return await self._transport.execute(
            _calls.inbox_list(unread=unread, archived=archived, cursor=cursor, limit=limit)
        )

    def iterate(
        self, *, unread: bool | None = None, archived: bool = False, limit: int | None = None
    ) -> AsyncIterator[InboxItem]:
        return self._transport.iterate(
            lambda cursor: _calls.inbox_list(
                unread=unread, archived=archived, cursor=cursor, limit=limit
            )
        )

    async def mark_read(self, message_id: str) -> InboxItem:
        return await self._transport.execute(
            _calls.inbox_mark(message_id=message_id, action="read")
        )

    async def mark_unread(self, message_id: str) -> InboxItem:
        return await self._transport.execute(
            _calls.inbox_mark(message_id=message_id, action="unread")
        )

    async def archive(self, message_id: str) -> InboxItem:
        return await self._transport.execute(
            _calls.inbox_mark(message_id=message_id, action="archive")
        )

    async def unarchive(self, message_id: str) -> InboxItem:
        return await self._transport.execute(
            _calls.inbox_mark(message_id=message_id, action="unarchive")
        )

    async def mark_all_read(self) -> int:
        """Mark every unread message read; answers how many were unread."""
        return await self._transport.execute(_calls.inbox_read_all())

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
