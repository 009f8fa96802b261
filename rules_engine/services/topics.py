"""Writes of topics: create, delete, and add or remove members in bulk."""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from herald.problems import FieldError
from rules_engine.models import Subscriber, Topic, TopicMembership
from rules_engine.services.subscribers import InvalidInput

TOPIC_KEY = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,199}$")
TOPIC_NAME_MAX_LENGTH = 200
MAX_MEMBERS_PER_REQUEST = 1000


class TopicExists(ValueError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"A topic {key!r} already exists.")


@dataclass(frozen=True, kw_only=True)
class TopicMembersAdded:
    added: tuple[str, ...]
    already_members: tuple[str, ...]
    # External ids with no subscriber: reported, never created.
    missing: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class TopicMembersRemoved:
    removed: tuple[str, ...]
    # Known subscribers who were not members, and unknown ids.
    not_members: tuple[str, ...]


def topic_create(*, key: str, name: str = "") -> Topic:
    """Raises InvalidInput for a bad key or name, TopicExists for a taken key."""
    errors = []
    if not TOPIC_KEY.fullmatch(key):
        errors.append(
            FieldError(
                pointer="/key",
                detail="must be 1 to 200 characters of a-z, 0-9 and . _ : -, "
                "starting with a letter or digit",
            )
        )
    if len(name) > TOPIC_NAME_MAX_LENGTH:
        errors.append(
            FieldError(
                pointer="/name", detail=f"must be at most {TOPIC_NAME_MAX_LENGTH} characters"
            )
        )
    if errors:
        raise InvalidInput(errors)
    try:
        with transaction.atomic():
            return Topic.objects.create(key=key, name=name)
    except IntegrityError:
        raise TopicExists(key) from None


def topic_delete(*, topic: Topic) -> None:
    """Delete the topic and its memberships; the subscribers stay."""
    topic.delete()


def _unique_ids(external_ids: Sequence[str]) -> list[str]:
    if len(external_ids) > MAX_MEMBERS_PER_REQUEST:
        raise InvalidInput(
            [
                FieldError(
                    pointer="/subscribers",
                    detail=f"at most {MAX_MEMBERS_PER_REQUEST} subscribers per request; "
                    f"got {len(external_ids)}",
                )
            ]
        )
    return list(dict.fromkeys(external_ids))


def topic_subscribers_add(*, topic: Topic, external_ids: Sequence[str]) -> TopicMembersAdded:
    """Add existing subscribers to the topic in one INSERT; raises InvalidInput
    for more than MAX_MEMBERS_PER_REQUEST ids."""
    wanted = _unique_ids(external_ids)
    found = dict(Subscriber.objects.filter(external_id__in=wanted).values_list("external_id", "pk"))
    members = set(
        TopicMembership.objects.filter(topic=topic, subscriber_id__in=found.values()).values_list(
            "subscriber__external_id", flat=True
        )
    )
    new = [
        external_id for external_id in wanted if external_id in found and external_id not in members
    ]
    # ignore_conflicts: a concurrent add of the same member is not an error.
    TopicMembership.objects.bulk_create(
        [TopicMembership(topic=topic, subscriber_id=found[external_id]) for external_id in new],
        ignore_conflicts=True,
    )
    return TopicMembersAdded(
        added=tuple(new),
        already_members=tuple(e for e in wanted if e in members),
        missing=tuple(e for e in wanted if e not in found),
    )


def topic_subscribers_remove(*, topic: Topic, external_ids: Sequence[str]) -> TopicMembersRemoved:
    """Remove members from the topic in one DELETE; raises InvalidInput as
    topic_subscribers_add does."""
    wanted = _unique_ids(external_ids)
    memberships = dict(
        TopicMembership.objects.filter(topic=topic, subscriber__external_id__in=wanted).values_list(
            "pk", "subscriber__external_id"
        )
    )
    TopicMembership.objects.filter(pk__in=memberships).delete()
    members = set(memberships.values())
    return TopicMembersRemoved(
        removed=tuple(e for e in wanted if e in members),
        not_members=tuple(e for e in wanted if e not in members),
    )
