"""/api/v1/messages: what Herald delivered, to whom, and every attempt it made;
and the replay of a failed webhook message (admin scope)."""

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from django.http import Http404, HttpRequest
from ninja import Router, Schema, Status
from pydantic import Field

from channels_delivery.catalogue import Channel
from channels_delivery.models import AttemptOutcome, Message, MessageStatus
from channels_delivery.selectors import message_get, message_list
from channels_delivery.services.webhooks import ReplayRefused, webhook_message_replay
from herald.api import ProblemOut, require_scope
from herald.pagination import DEFAULT_LIMIT, MAX_LIMIT, cursor_paginate
from herald.problems import problem_response
from tenants.models import ApiScope

router = Router(tags=["messages"])


class MessageOut(Schema):
    id: UUID
    event_id: UUID
    subscriber_id: str | None = Field(
        description="The subscriber's external id (your id for them); null once erased."
    )
    channel: Channel
    status: MessageStatus
    content: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class AttemptOut(Schema):
    provider: str
    started_at: datetime
    finished_at: datetime | None
    outcome: AttemptOutcome
    response_status: int | None
    response_excerpt: str
    error: str
    latency_ms: int | None


class MessageDetailOut(MessageOut):
    attempts: list[AttemptOut] = Field(description="Every delivery attempt, oldest first.")


class MessagePageOut(Schema):
    items: list[MessageOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


def _message_out(message: Message) -> dict[str, Any]:
    subscriber = message.subscriber
    return {
        "id": message.id,
        "event_id": message.event_id,
        "subscriber_id": subscriber.external_id if subscriber is not None else None,
        "channel": message.channel,
        "status": message.status,
        "content": message.content,
        "created_at": message.created_at,
        "updated_at": message.updated_at,
    }


@router.get(
    "",
    response={200: MessagePageOut, 400: ProblemOut, 403: ProblemOut, 422: ProblemOut},
    summary="List messages",
)
def messages_list(
    request: HttpRequest,
    subscriber: Annotated[str | None, Field(description="A subscriber's external id.")] = None,
    status: MessageStatus | None = None,
    channel: Channel | None = None,
    event: Annotated[UUID | None, Field(description="Messages of this event.")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Messages, newest first, matching every filter given. Page with `cursor`."""
    require_scope(request, ApiScope.MESSAGES_READ)
    messages = message_list(
        subscriber_external_id=subscriber, status=status, channel=channel, event_id=event
    )
    page = cursor_paginate(messages, field="created_at", cursor=cursor, limit=limit)
    return {
        "items": [_message_out(message) for message in page.items],
        "next_cursor": page.next_cursor,
    }


@router.get(
    "/{message_id}",
    response={200: MessageDetailOut, 403: ProblemOut, 404: ProblemOut},
    summary="Get a message",
)
def message_read(request: HttpRequest, message_id: str) -> dict[str, Any]:
    """A message and its delivery timeline: every attempt, oldest first."""
    require_scope(request, ApiScope.MESSAGES_READ)
    message = message_get(message_id=message_id)
    if message is None:
        raise Http404(f"No message {message_id} in this tenant.")
    return {
        **_message_out(message),
        "attempts": [
            {
                "provider": attempt.provider,
                "started_at": attempt.started_at,
                "finished_at": attempt.finished_at,
                "outcome": attempt.outcome,
                "response_status": attempt.response_status,
                "response_excerpt": attempt.response_excerpt,
                "error": attempt.error,
                "latency_ms": attempt.latency_ms,
            }
            for attempt in message.attempts.all()
        ],
    }


@router.post(
    "/{message_id}/replay",
    response={202: MessageOut, 403: ProblemOut, 404: ProblemOut, 409: ProblemOut},
    summary="Replay a failed webhook message",
)
def message_replay(request: HttpRequest, message_id: str) -> Any:
    """Queue a failed webhook message again, with a fresh retry schedule: it goes
    to the enabled endpoints that receive its event type and have not accepted it
    yet, and its earlier attempts are kept. Any other message (another channel,
    or a webhook message that did not fail) is `409 not-replayable`, saying why."""
    require_scope(request, ApiScope.ADMIN)
    message = message_get(message_id=message_id)
    if message is None:
        raise Http404(f"No message {message_id} in this tenant.")
    try:
        replayed = webhook_message_replay(message_id=message.pk)
    except ReplayRefused as refused:
        return problem_response(
            status=409, slug="not-replayable", title="Not replayable", detail=f"{refused}."
        )
    return Status(202, _message_out(replayed))
