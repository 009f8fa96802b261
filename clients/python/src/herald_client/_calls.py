"""Every API operation the client offers, as a ``Call``: the request and how to
read its answer. The sync and async resources are one-line wrappers of these,
so both clients send exactly the same requests.
"""

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

import httpx

from herald_client._transport import Call, segment
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

T = TypeVar("T")

IDEMPOTENCY_HEADER = "Idempotency-Key"
InboxAction = Literal["read", "unread", "archive", "unarchive"]


def idempotency_key_new() -> str:
    return f"hc-{uuid.uuid4().hex}"


def _json(parse: Callable[[Mapping[str, Any]], T]) -> Callable[[httpx.Response], T]:
    return lambda response: parse(response.json())


def _nothing(response: httpx.Response) -> None:
    return None


def _page(item: Callable[[Mapping[str, Any]], T]) -> Callable[[httpx.Response], Page[T]]:
    def parse(response: httpx.Response) -> Page[T]:
        data = response.json()
        return Page(items=[item(row) for row in data["items"]], next_cursor=data["next_cursor"])

    return parse


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _event_body(event: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _jsonable(value) for name, value in event.items() if value is not None}


# --- events -----------------------------------------------------------------------


def event_send(
    *,
    event: str,
    to: Sequence[Recipient] | None,
    topic: str | None,
    payload: Mapping[str, Any] | None,
    actor: Recipient | None,
    send_at: datetime | str | None,
    tenant_data: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Call[EventAccepted]:
    body = _event_body(
        {
            "event": event,
            "to": list(to) if to is not None else None,
            "topic": topic,
            "payload": dict(payload) if payload is not None else None,
            "actor": actor,
            "send_at": send_at,
            "tenant_data": dict(tenant_data) if tenant_data is not None else None,
        }
    )

    def parse(response: httpx.Response) -> EventAccepted:
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        return EventAccepted.from_json(response.json(), replayed=replayed)

    return Call(
        method="POST",
        path="/events",
        body=body,
        headers={IDEMPOTENCY_HEADER: idempotency_key or idempotency_key_new()},
        parse=parse,
    )


def event_send_batch(*, events: Sequence[EventInput]) -> Call[BatchResult]:
    """Each item gets an idempotency key if it has none, so a retried batch
    replays the items stored by the first attempt instead of storing them twice."""
    items = [
        {
            **_event_body(item),
            "idempotency_key": item.get("idempotency_key") or idempotency_key_new(),
        }
        for item in events
    ]
    return Call(
        method="POST",
        path="/events/batch",
        body={"events": items},
        parse=_json(BatchResult.from_json),
    )


def event_get(*, event_id: str) -> Call[Event]:
    return Call(method="GET", path=f"/events/{segment(event_id)}", parse=_json(Event.from_json))


# --- subscribers ------------------------------------------------------------------


def subscriber_upsert(*, external_id: str, profile: Mapping[str, Any]) -> Call[SubscriberUpserted]:
    return Call(
        method="PUT",
        path=f"/subscribers/{segment(external_id)}",
        body={name: value for name, value in profile.items() if value is not None},
        parse=_json(SubscriberUpserted.from_json),
    )


def subscriber_get(*, external_id: str) -> Call[Subscriber]:
    return Call(
        method="GET",
        path=f"/subscribers/{segment(external_id)}",
        parse=_json(Subscriber.from_json),
    )


def subscriber_delete(*, external_id: str) -> Call[None]:
    return Call(method="DELETE", path=f"/subscribers/{segment(external_id)}", parse=_nothing)


def subscriber_list(
    *, cursor: str | None, limit: int | None, email: str | None
) -> Call[Page[Subscriber]]:
    return Call(
        method="GET",
        path="/subscribers",
        params={"cursor": cursor, "limit": limit, "email": email},
        parse=_page(Subscriber.from_json),
    )


def subscriber_bulk_upsert(*, subscribers: Sequence[SubscriberInput]) -> Call[BulkResult]:
    return Call(
        method="POST",
        path="/subscribers/bulk",
        body={"subscribers": [dict(profile) for profile in subscribers]},
        parse=_json(BulkResult.from_json),
    )


# --- preferences ------------------------------------------------------------------


def _preferences_body(preferences: Sequence[PreferenceInput]) -> dict[str, Any]:
    return {"preferences": [dict(preference) for preference in preferences]}


def preferences_get(*, external_id: str) -> Call[list[Preference]]:
    return Call(
        method="GET",
        path=f"/subscribers/{segment(external_id)}/preferences",
        parse=_json(Preference.list_from_json),
    )


def preferences_set(
    *, external_id: str, preferences: Sequence[PreferenceInput]
) -> Call[list[Preference]]:
    return Call(
        method="PUT",
        path=f"/subscribers/{segment(external_id)}/preferences",
        body=_preferences_body(preferences),
        parse=_json(Preference.list_from_json),
    )


def preference_defaults_get() -> Call[list[Preference]]:
    return Call(method="GET", path="/preferences/defaults", parse=_json(Preference.list_from_json))


def preference_defaults_set(*, preferences: Sequence[PreferenceInput]) -> Call[list[Preference]]:
    return Call(
        method="PUT",
        path="/preferences/defaults",
        body=_preferences_body(preferences),
        parse=_json(Preference.list_from_json),
    )


# --- topics -----------------------------------------------------------------------


def topic_create(*, key: str, name: str) -> Call[Topic]:
    # Not retry-safe: a create that succeeded before its answer was lost would
    # come back as 409 conflict.
    return Call(
        method="POST",
        path="/topics",
        body={"key": key, "name": name},
        parse=_json(Topic.from_json),
        retry_safe=False,
    )


def topic_get(*, key: str) -> Call[Topic]:
    return Call(method="GET", path=f"/topics/{segment(key)}", parse=_json(Topic.from_json))


def topic_list(*, cursor: str | None, limit: int | None) -> Call[Page[Topic]]:
    return Call(
        method="GET",
        path="/topics",
        params={"cursor": cursor, "limit": limit},
        parse=_page(Topic.from_json),
    )


def topic_delete(*, key: str) -> Call[None]:
    return Call(method="DELETE", path=f"/topics/{segment(key)}", parse=_nothing)


def topic_subscribers_add(*, key: str, subscribers: Sequence[str]) -> Call[MembersAdded]:
    return Call(
        method="POST",
        path=f"/topics/{segment(key)}/subscribers",
        body={"subscribers": list(subscribers)},
        parse=_json(MembersAdded.from_json),
    )


def topic_subscribers_remove(*, key: str, subscribers: Sequence[str]) -> Call[MembersRemoved]:
    return Call(
        method="POST",
        path=f"/topics/{segment(key)}/subscribers/remove",
        body={"subscribers": list(subscribers)},
        parse=_json(MembersRemoved.from_json),
    )


def topic_subscribers_list(
    *, key: str, cursor: str | None, limit: int | None
) -> Call[Page[Subscriber]]:
    return Call(
        method="GET",
        path=f"/topics/{segment(key)}/subscribers",
        params={"cursor": cursor, "limit": limit},
        parse=_page(Subscriber.from_json),
    )


# --- messages ---------------------------------------------------------------------


def message_list(
    *,
    subscriber: str | None,
    status: str | None,
    channel: str | None,
    event: str | None,
    cursor: str | None,
    limit: int | None,
) -> Call[Page[Message]]:
    return Call(
        method="GET",
        path="/messages",
        params={
            "subscriber": subscriber,
            "status": status,
            "channel": channel,
            "event": event,
            "cursor": cursor,
            "limit": limit,
        },
        parse=_page(Message.from_json),
    )


def message_get(*, message_id: str) -> Call[MessageDetail]:
    return Call(
        method="GET",
        path=f"/messages/{segment(message_id)}",
        parse=_json(MessageDetail.from_json),
    )


# --- the tenant's side of the inbox, and the key ---------------------------------------


def inbox_secret_get() -> Call[InboxSecret]:
    return Call(method="GET", path="/inbox/secret", parse=_json(InboxSecret.from_json))


def inbox_secret_rotate() -> Call[InboxSecret]:
    return Call(
        method="POST",
        path="/inbox/secret/rotate",
        parse=_json(InboxSecret.from_json),
        retry_safe=False,
    )


def me_get() -> Call[Me]:
    return Call(method="GET", path="/me", parse=_json(Me.from_json))


# --- the subscriber's side of the inbox ---------------------------------------------


def _inbox_page(response: httpx.Response) -> InboxPage:
    data = response.json()
    return InboxPage(
        items=[InboxItem.from_json(item) for item in data["items"]],
        next_cursor=data["next_cursor"],
        unread_count=data["unread_count"],
    )


def inbox_list(
    *, unread: bool | None, archived: bool, cursor: str | None, limit: int | None
) -> Call[InboxPage]:
    return Call(
        method="GET",
        path="/inbox/messages",
        params={"unread": unread, "archived": archived, "cursor": cursor, "limit": limit},
        parse=_inbox_page,
    )


def inbox_mark(*, message_id: str, action: InboxAction) -> Call[InboxItem]:
    return Call(
        method="POST",
        path=f"/inbox/messages/{segment(message_id)}/{action}",
        parse=_json(InboxItem.from_json),
    )


def inbox_read_all() -> Call[int]:
    def parse(response: httpx.Response) -> int:
        updated: int = response.json()["updated"]
        return updated

    return Call(method="POST", path="/inbox/messages/read-all", parse=parse)
