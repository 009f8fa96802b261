"""/api/v1/topics: named groups of subscribers that an event can fan out to.

Writes need the ``subscribers:write`` scope; reads accept ``subscribers:write``
or ``messages:read``. Members are added with ``POST /topics/{key}/subscribers``
and removed with ``POST /topics/{key}/subscribers/remove`` (a POST, because
many clients and proxies drop the body of a DELETE).
"""

from datetime import datetime
from typing import Any

from django.http import Http404, HttpRequest
from ninja import Field, Query, Router, Schema, Status
from pydantic import ConfigDict

from herald.api import ProblemOut, ValidationProblemOut
from herald.problems import problem_response
from rules_engine.api.subscribers import (
    PageQuery,
    SubscriberPageOut,
    invalid_input_response,
    require_read_scope,
    require_write_scope,
    subscriber_out,
)
from rules_engine.models import Topic
from rules_engine.selectors.topics import topic_get, topic_list, topic_subscriber_list
from rules_engine.services.subscribers import InvalidInput
from rules_engine.services.topics import (
    MAX_MEMBERS_PER_REQUEST,
    TopicExists,
    topic_create,
    topic_delete,
    topic_subscribers_add,
    topic_subscribers_remove,
)

router = Router(tags=["topics"])


class TopicIn(Schema):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(
        description="1 to 200 characters of a-z, 0-9 and . _ : -, starting with a letter "
        "or digit, e.g. project:42.watchers"
    )
    name: str = Field(default="", description="A label for people.")


class TopicOut(Schema):
    key: str
    name: str
    created_at: datetime


class TopicPageOut(Schema):
    items: list[TopicOut]
    next_cursor: str | None


class MembersIn(Schema):
    model_config = ConfigDict(extra="forbid")

    subscribers: list[str] = Field(
        description=f"Up to {MAX_MEMBERS_PER_REQUEST} subscriber external ids.",
        json_schema_extra={"maxItems": MAX_MEMBERS_PER_REQUEST},
    )


class MembersAddedOut(Schema):
    added: list[str]
    already_members: list[str]
    missing: list[str] = Field(description="External ids with no subscriber; not created.")


class MembersRemovedOut(Schema):
    removed: list[str]
    not_members: list[str]


def _topic_out(topic: Topic) -> dict[str, Any]:
    return {"key": topic.key, "name": topic.name, "created_at": topic.created_at}


def _topic_or_404(key: str) -> Topic:
    topic = topic_get(key=key)
    if topic is None:
        raise Http404(f"No topic {key!r} in this tenant.")
    return topic


@router.post(
    "",
    response={201: TopicOut, 409: ProblemOut, 422: ValidationProblemOut},
    summary="Create a topic",
)
def topics_create(request: HttpRequest, body: TopicIn) -> Any:
    require_write_scope(request)
    try:
        topic = topic_create(key=body.key, name=body.name)
    except InvalidInput as invalid:
        return invalid_input_response(invalid)
    except TopicExists as exists:
        return problem_response(
            status=409,
            slug="conflict",
            title="Conflict",
            detail=str(exists),
            key=exists.key,
        )
    return Status(201, _topic_out(topic))


@router.get("", response={200: TopicPageOut, 400: ProblemOut}, summary="List topics")
def topics_list(request: HttpRequest, page: Query[PageQuery]) -> Any:
    """Topics by key, a page at a time."""
    require_read_scope(request)
    found = topic_list(cursor=page.cursor, limit=page.limit)
    return {"items": [_topic_out(t) for t in found.items], "next_cursor": found.next_cursor}


@router.get("/{key}", response={200: TopicOut, 404: ProblemOut}, summary="Get a topic")
def topics_read(request: HttpRequest, key: str) -> Any:
    require_read_scope(request)
    return _topic_out(_topic_or_404(key))


@router.delete("/{key}", response={204: None, 404: ProblemOut}, summary="Delete a topic")
def topics_delete(request: HttpRequest, key: str) -> Any:
    """Delete the topic and its memberships; the subscribers stay."""
    require_write_scope(request)
    topic_delete(topic=_topic_or_404(key))
    return Status(204, None)


@router.get(
    "/{key}/subscribers",
    response={200: SubscriberPageOut, 400: ProblemOut, 404: ProblemOut},
    summary="List a topic's subscribers",
)
def topics_members_list(request: HttpRequest, key: str, page: Query[PageQuery]) -> Any:
    """The topic's members by external id, a page at a time."""
    require_read_scope(request)
    topic = _topic_or_404(key)
    found = topic_subscriber_list(topic=topic, cursor=page.cursor, limit=page.limit)
    return {
        "items": [subscriber_out(subscriber) for subscriber in found.items],
        "next_cursor": found.next_cursor,
    }


@router.post(
    "/{key}/subscribers",
    response={200: MembersAddedOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Add subscribers to a topic",
)
def topics_members_add(request: HttpRequest, key: str, body: MembersIn) -> Any:
    """Add up to 1,000 existing subscribers. Unknown external ids are listed in
    `missing` and not created; adding a member twice is not an error."""
    require_write_scope(request)
    topic = _topic_or_404(key)
    try:
        change = topic_subscribers_add(topic=topic, external_ids=body.subscribers)
    except InvalidInput as invalid:
        return invalid_input_response(invalid)
    return {
        "added": list(change.added),
        "already_members": list(change.already_members),
        "missing": list(change.missing),
    }


@router.post(
    "/{key}/subscribers/remove",
    response={200: MembersRemovedOut, 404: ProblemOut, 422: ValidationProblemOut},
    summary="Remove subscribers from a topic",
)
def topics_members_remove(request: HttpRequest, key: str, body: MembersIn) -> Any:
    """Remove up to 1,000 members; ids that were not members (or are unknown)
    are listed in `not_members`. The subscribers themselves stay."""
    require_write_scope(request)
    topic = _topic_or_404(key)
    try:
        change = topic_subscribers_remove(topic=topic, external_ids=body.subscribers)
    except InvalidInput as invalid:
        return invalid_input_response(invalid)
    return {"removed": list(change.removed), "not_members": list(change.not_members)}
