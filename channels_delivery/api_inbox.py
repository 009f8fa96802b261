"""/api/v1/inbox: the in-app inbox, read by the tenant's frontend for one subscriber.

The frontend has no API key. It sends the subscriber's external id, the tenant's
slug and the subscriber hash its backend computed (channels_delivery.inbox_auth);
tenants.middleware checks them before any endpoint here runs and attaches
``request.inbox_principal``. A subscriber only ever sees their own in_app
messages: anything else is 404, as if it did not exist. The tenant gets and
rotates the inbox secret with an admin API key (/inbox/secret).
"""

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from django.http import Http404, HttpRequest
from ninja import Router, Schema
from ninja.security import APIKeyHeader
from pydantic import Field

from channels_delivery.inbox_auth import (
    HASH_HEADER,
    SUBSCRIBER_HEADER,
    TENANT_HEADER,
    InboxPrincipal,
    InboxSecret,
    inbox_secret_get,
    inbox_secret_rotate,
)
from channels_delivery.models import Message
from channels_delivery.selectors import inbox_list, inbox_message_get, inbox_unread_count
from channels_delivery.services.inbox import (
    inbox_item,
    inbox_message_archive,
    inbox_message_read,
    inbox_message_unarchive,
    inbox_message_unread,
    inbox_messages_seen,
    inbox_read_all,
)
from herald.api import ProblemOut, require_scope
from herald.pagination import DEFAULT_LIMIT, MAX_LIMIT, cursor_paginate
from tenants.models import ApiScope

router = Router(tags=["inbox"])


class InboxSubscriberHash(APIKeyHeader):
    """Declares the subscriber scheme in the OpenAPI document (see ``document_inbox_security``).

    The three headers are checked by tenants.middleware before any endpoint
    runs; here the request only has to carry the principal it attached.
    """

    param_name = HASH_HEADER

    def authenticate(self, request: HttpRequest, key: str | None) -> InboxPrincipal | None:
        principal: InboxPrincipal | None = getattr(request, "inbox_principal", None)
        return principal


# The hash proves nothing without the id and tenant it was made for: all three
# are one requirement (an AND), which django-ninja can not express by itself.
_COMPANION_SCHEMES: dict[str, dict[str, Any]] = {
    "InboxSubscriber": {
        "type": "apiKey",
        "in": "header",
        "name": SUBSCRIBER_HEADER,
        "description": "The subscriber's external id (your id for them).",
    },
    "InboxTenant": {
        "type": "apiKey",
        "in": "header",
        "name": TENANT_HEADER,
        "description": "Your tenant's slug.",
    },
}
_HASH_DESCRIPTION = (
    f"hex(HMAC-SHA256(inbox secret, external id)), computed by your backend with the secret "
    f"from GET /api/v1/inbox/secret. Sent together with {SUBSCRIBER_HEADER} and {TENANT_HEADER}."
)


def document_inbox_security(schema: dict[str, Any]) -> None:
    """Make every inbox operation require the hash, the subscriber and the tenant together."""
    schemes = schema.get("components", {}).get("securitySchemes", {})
    name = InboxSubscriberHash.__name__
    if name not in schemes:
        return
    schemes[name]["description"] = _HASH_DESCRIPTION
    schemes.update(_COMPANION_SCHEMES)
    together: dict[str, list[str]] = {name: [], **{key: [] for key in _COMPANION_SCHEMES}}
    for operations in schema["paths"].values():
        for operation in operations.values():
            if {name: []} in operation.get("security", []):
                operation["security"] = [together]


subscriber_auth = InboxSubscriberHash()


class InboxItemOut(Schema):
    id: UUID
    title: str
    body: str
    action_url: str | None = Field(description="Where the message leads when clicked, if anywhere.")
    created_at: datetime
    seen_at: datetime | None = Field(description="When the feed first showed it.")
    read_at: datetime | None
    archived_at: datetime | None


class InboxPageOut(Schema):
    items: list[InboxItemOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )
    unread_count: int = Field(description="Unread, unarchived messages: the badge.")


class ReadAllOut(Schema):
    updated: int = Field(description="How many messages were unread and are now read.")


class InboxSecretOut(Schema):
    secret: str = Field(
        description="Keep it on your backend. The subscriber hash is "
        "hex(HMAC-SHA256(key=secret as UTF-8, message=external id as UTF-8))."
    )
    algorithm: str = "HMAC-SHA256"
    created_at: datetime
    rotated_at: datetime


def _principal(request: HttpRequest) -> InboxPrincipal:
    principal: InboxPrincipal = request.inbox_principal  # type: ignore[attr-defined]
    return principal


def _own_message(request: HttpRequest, message_id: str) -> Message:
    message = inbox_message_get(
        subscriber_id=_principal(request).subscriber_id, message_id=message_id
    )
    if message is None:
        raise Http404(f"No message {message_id} in this subscriber's inbox.")
    return message


@router.get(
    "/messages",
    auth=subscriber_auth,
    response={200: InboxPageOut, 400: ProblemOut, 401: ProblemOut, 422: ProblemOut},
    summary="List the subscriber's inbox",
)
def inbox_messages_list(
    request: HttpRequest,
    unread: Annotated[
        bool | None, Field(description="true: only unread; false: only read; absent: both.")
    ] = None,
    archived: Annotated[bool, Field(description="true: the archive instead of the inbox.")] = False,
    cursor: str | None = None,
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """The subscriber's in-app messages, newest first, with the unread count.
    Listing marks the returned messages seen."""
    subscriber_id = _principal(request).subscriber_id
    messages = inbox_list(subscriber_id=subscriber_id, unread=unread, archived=archived)
    page = cursor_paginate(messages, field="created_at", cursor=cursor, limit=limit)
    inbox_messages_seen(messages=page.items)
    return {
        "items": [inbox_item(message) for message in page.items],
        "next_cursor": page.next_cursor,
        "unread_count": inbox_unread_count(subscriber_id=subscriber_id),
    }


@router.post(
    "/messages/read-all",
    auth=subscriber_auth,
    response={200: ReadAllOut, 401: ProblemOut},
    summary="Mark the whole inbox read",
)
def inbox_messages_read_all(request: HttpRequest) -> dict[str, Any]:
    """Every unread message in the inbox (not the archive) becomes read."""
    return {"updated": inbox_read_all(subscriber_id=_principal(request).subscriber_id)}


_ONE = {200: InboxItemOut, 401: ProblemOut, 404: ProblemOut}


@router.post(
    "/messages/{message_id}/read", auth=subscriber_auth, response=_ONE, summary="Mark read"
)
def inbox_message_mark_read(request: HttpRequest, message_id: str) -> dict[str, Any]:
    """Marks the message read (and seen); the first read time is kept."""
    return inbox_item(inbox_message_read(message=_own_message(request, message_id)))


@router.post(
    "/messages/{message_id}/unread", auth=subscriber_auth, response=_ONE, summary="Mark unread"
)
def inbox_message_mark_unread(request: HttpRequest, message_id: str) -> dict[str, Any]:
    return inbox_item(inbox_message_unread(message=_own_message(request, message_id)))


@router.post(
    "/messages/{message_id}/archive", auth=subscriber_auth, response=_ONE, summary="Archive"
)
def inbox_message_mark_archived(request: HttpRequest, message_id: str) -> dict[str, Any]:
    """Moves the message to the archive (and out of the unread count)."""
    return inbox_item(inbox_message_archive(message=_own_message(request, message_id)))


@router.post(
    "/messages/{message_id}/unarchive", auth=subscriber_auth, response=_ONE, summary="Unarchive"
)
def inbox_message_mark_unarchived(request: HttpRequest, message_id: str) -> dict[str, Any]:
    return inbox_item(inbox_message_unarchive(message=_own_message(request, message_id)))


def _secret_out(secret: InboxSecret) -> dict[str, Any]:
    return {
        "secret": secret.secret,
        "algorithm": "HMAC-SHA256",
        "created_at": secret.created_at,
        "rotated_at": secret.rotated_at,
    }


@router.get(
    "/secret",
    response={200: InboxSecretOut, 403: ProblemOut},
    summary="Get the inbox secret",
)
def inbox_secret_read(request: HttpRequest) -> dict[str, Any]:
    """The secret your backend signs subscriber ids with; made on the first call. Admin scope."""
    require_scope(request, ApiScope.ADMIN)
    return _secret_out(inbox_secret_get())


@router.post(
    "/secret/rotate",
    response={200: InboxSecretOut, 403: ProblemOut},
    summary="Rotate the inbox secret",
)
def inbox_secret_rotated(request: HttpRequest) -> dict[str, Any]:
    """A new secret; every subscriber hash made with the old one stops working now. Admin scope."""
    require_scope(request, ApiScope.ADMIN)
    return _secret_out(inbox_secret_rotate())
