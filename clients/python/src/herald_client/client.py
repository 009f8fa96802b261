"""The synchronous client: ``Herald`` for the tenant's server (an API key), and
``HeraldInbox`` for one subscriber's inbox (the subscriber hash, no key).

    herald = Herald(api_key="hk_live_…", base_url="https://herald.example.com")
    herald.events.send("order.shipped", to=["user-42"], payload={"order_id": "1042"})
"""

import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx

from herald_client import _calls
from herald_client._retry import Backoff
from herald_client._transport import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    SyncTransport,
)
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


def api_key_headers(api_key: str | None) -> dict[str, str]:
    key = api_key or os.environ.get("HERALD_API_KEY")
    if not key:
        raise ValueError("Herald needs an API key: pass api_key= or set HERALD_API_KEY")
    return {"Authorization": f"Bearer {key}"}


def inbox_headers(*, tenant: str, subscriber_id: str, subscriber_hash: str) -> dict[str, str]:
    return {
        "X-Herald-Tenant": tenant,
        "X-Herald-Subscriber": subscriber_id,
        "X-Herald-Subscriber-Hash": subscriber_hash,
    }


def base_url_or_default(base_url: str | None) -> str:
    return base_url or os.environ.get("HERALD_BASE_URL") or DEFAULT_BASE_URL


class _Resource:
    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport


class Events(_Resource):
    def send(
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
        return self._transport.execute(
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

    def send_batch(self, events: Sequence[EventInput]) -> BatchResult:
        """Send up to 1,000 events; each is accepted or rejected on its own."""
        return self._transport.execute(_calls.event_send_batch(events=events))

    def get(self, event_id: str) -> Event:
        return self._transport.execute(_calls.event_get(event_id=event_id))


class Subscribers(_Resource):
    def upsert(
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
        return self._transport.execute(
            _calls.subscriber_upsert(external_id=external_id, profile=profile)
        )

    def bulk_upsert(self, subscribers: Sequence[SubscriberInput]) -> BulkResult:
        return self._transport.execute(_calls.subscriber_bulk_upsert(subscribers=subscribers))

    def get(self, external_id: str) -> Subscriber:
        return self._transport.execute(_calls.subscriber_get(external_id=external_id))

    def delete(self, external_id: str) -> None:
        """Erase the subscriber: profile, memberships and preferences."""
        self._transport.execute(_calls.subscriber_delete(external_id=external_id))

    def list(
        self, *, cursor: str | None = None, limit: int | None = None, email: str | None = None
    ) -> Page[Subscriber]:
        return self._transport.execute(
            _calls.subscriber_list(cursor=cursor, limit=limit, email=email)
        )

    def iterate(
        self, *, limit: int | None = None, email: str | None = None
    ) -> Iterator[Subscriber]:
        """Every subscriber, oldest first, page by page."""
        return self._transport.iterate(
            lambda cursor: _calls.subscriber_list(cursor=cursor, limit=limit, email=email)
        )


class Preferences(_Resource):
    def get(self, external_id: str) -> list[Preference]:
        """The subscriber's preferences in effect (tenant defaults overlaid by their own)."""
        return self._transport.execute(_calls.preferences_get(external_id=external_id))

    def set(self, external_id: str, preferences: Sequence[PreferenceInput]) -> list[Preference]:
        return self._transport.execute(
            _calls.preferences_set(external_id=external_id, preferences=preferences)
        )

    def get_defaults(self) -> list[Preference]:
        return self._transport.execute(_calls.preference_defaults_get())

    def set_defaults(self, preferences: Sequence[PreferenceInput]) -> list[Preference]:
        return self._transport.execute(_calls.preference_defaults_set(preferences=preferences))


class Topics(_Resource):
    def create(self, key: str, *, name: str = "") -> Topic:
        return self._transport.execute(_calls.topic_create(key=key, name=name))

    def get(self, key: str) -> Topic:
        return self._transport.execute(_calls.topic_get(key=key))

    def list(self, *, cursor: str | None = None, limit: int | None = None) -> Page[Topic]:
        return self._transport.execute(_calls.topic_list(cursor=cursor, limit=limit))

    def iterate(self, *, limit: int | None = None) -> Iterator[Topic]:
        return self._transport.iterate(lambda cursor: _calls.topic_list(cursor=cursor, limit=limit))

    def delete(self, key: str) -> None:
        self._transport.execute(_calls.topic_delete(key=key))

    def add_subscribers(self, key: str, subscribers: Sequence[str]) -> MembersAdded:
        return self._transport.execute(
            _calls.topic_subscribers_add(key=key, subscribers=subscribers)
        )

    def remove_subscribers(self, key: str, subscribers: Sequence[str]) -> MembersRemoved:
        return self._transport.execute(
            _calls.topic_subscribers_remove(key=key, subscribers=subscribers)
        )

    def list_subscribers(
        self, key: str, *, cursor: str | None = None, limit: int | None = None
    ) -> Page[Subscriber]:
        return self._transport.execute(
            _calls.topic_subscribers_list(key=key, cursor=cursor, limit=limit)
        )

    def iterate_subscribers(self, key: str, *, limit: int | None = None) -> Iterator[Subscriber]:
        return self._transport.iterate(
            lambda cursor: _calls.topic_subscribers_list(key=key, cursor=cursor, limit=limit)
        )


class Messages(_Resource):
    def list(
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
        return self._transport.execute(
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
    ) -> Iterator[Message]:
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

    def get(self, message_id: str) -> MessageDetail:
        """A message with every delivery attempt."""
        return self._transport.execute(_calls.message_get(message_id=message_id))


class InboxAdmin(_Resource):
    """The tenant's side of the inbox: the secret that subscriber hashes are made with."""

    def __init__(self, transport: SyncTransport, owner: "Herald") -> None:
        super().__init__(transport)
        self._owner = owner

    def secret(self) -> InboxSecret:
        return self._transport.execute(_calls.inbox_secret_get())

    def rotate_secret(self) -> InboxSecret:
        """A new secret: hashes made with the old one stop working at once."""
        return self._transport.execute(_calls.inbox_secret_rotate())

    def subscriber_hash(self, external_id: str) -> str:
        """The hash to hand to this subscriber's page (fetches the secret; cache it
        on your side and use ``herald_client.subscriber_hash`` when that matters)."""
        return subscriber_hash(secret=self.secret().secret, external_id=external_id)

    def for_subscriber(self, external_id: str) -> "HeraldInbox":
        """A client for this subscriber's inbox, as their browser would use it."""
        return HeraldInbox(
            tenant=self._owner.me().tenant_slug,
            subscriber_id=external_id,
            subscriber_hash=self.subscriber_hash(external_id),
            base_url=self._transport.base_url,
            timeout=self._transport.timeout,
            max_retries=self._transport.max_retries,
            backoff=self._transport.backoff,
        )


class Herald:
    """Herald's API with a tenant's API key.

    ``api_key`` and ``base_url`` default to the environment's ``HERALD_API_KEY``
    and ``HERALD_BASE_URL``. Failed requests are retried up to ``max_retries``
    times (see ``Backoff``); pass ``http_client`` for proxies or custom TLS.
    Use it as a context manager, or call ``close()``, to release connections.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: Backoff | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._transport = SyncTransport(
            base_url=base_url_or_default(base_url),
            headers=api_key_headers(api_key),
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff or Backoff(),
            http_client=http_client,
        )
        self.events = Events(self._transport)
        self.subscribers = Subscribers(self._transport)
        self.preferences = Preferences(self._transport)
        self.topics = Topics(self._transport)
        self.messages = Messages(self._transport)
        self.inbox = InboxAdmin(self._transport, self)
        self._me: Me | None = None

    def me(self) -> Me:
        """The tenant and key this client authenticates as (asked once, then remembered)."""
        if self._me is None:
            self._me = self._transport.execute(_calls.me_get())
        return self._me

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class HeraldInbox:
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
        http_client: httpx.Client | None = None,
    ) -> None:
        self._transport = SyncTransport(
            base_url=base_url_or_default(base_url),
            headers=inbox_headers(
                tenant=tenant, subscriber_id=subscriber_id, subscriber_hash=subscriber_hash
            ),
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff or Backoff(),
            http_client=http_client,
        )

    def list(
        self,
        *,
        unread: bool | None = None,
        archived: bool = False,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> InboxPage:
        """The subscriber's messages, newest first, with ``unread_count``; listing
        marks them seen. ``unread``: True only unread, False only read."""
        return self._transport.execute(
            _calls.inbox_list(unread=unread, archived=archived, cursor=cursor, limit=limit)
        )

    def iterate(
        self, *, unread: bool | None = None, archived: bool = False, limit: int | None = None
    ) -> Iterator[InboxItem]:
        return self._transport.iterate(
            lambda cursor: _calls.inbox_list(
                unread=unread, archived=archived, cursor=cursor, limit=limit
            )
        )

    def mark_read(self, message_id: str) -> InboxItem:
        return self._transport.execute(_calls.inbox_mark(message_id=message_id, action="read"))

    def mark_unread(self, message_id: str) -> InboxItem:
        return self._transport.execute(_calls.inbox_mark(message_id=message_id, action="unread"))

    def archive(self, message_id: str) -> InboxItem:
        return self._transport.execute(_calls.inbox_mark(message_id=message_id, action="archive"))

    def unarchive(self, message_id: str) -> InboxItem:
        return self._transport.execute(_calls.inbox_mark(message_id=message_id, action="unarchive"))

    def mark_all_read(self) -> int:
        """Mark every unread message read; answers how many were unread."""
        return self._transport.execute(_calls.inbox_read_all())

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
