"""The shape of what a rule does, declared once.

These pydantic models validate a rule's versioned fields wherever they come
from: the API uses them as request schemas (so the OpenAPI document shows them),
the services validate whatever reaches them with the same models, and the
dashboard's forms call the services. CEL fields are compiled here, so an
invalid expression is refused at its field with the compiler's own message.
"""

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from channels_delivery.catalogue import Channel
from herald.problems import FieldError, json_pointer
from rules_engine.cel import CelCompileError, validate_expression

MINUTE = 60
DAY = 24 * 60 * MINUTE
MAX_DELAY_SECONDS = 30 * DAY
DIGEST_WINDOW_SECONDS = (MINUTE, 7 * DAY)
THROTTLE_WINDOW_SECONDS = (MINUTE, 30 * DAY)
THROTTLE_MAX_LIMIT = 1_000_000
TEMPLATE_KEY_MAX_LENGTH = 100
TOPIC_KEY = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,199}$")
TIME_OF_DAY = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$")

RecipientKind = Literal["event", "topic", "broadcast"]


def _invalid(kind: str, message: str) -> PydanticCustomError:
    """An error whose message is exactly ``message`` (no "Value error, " prefix)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def _compiles(source: str) -> str:
    try:
        validate_expression(source)
    except CelCompileError as error:
        raise _invalid("cel", error.message) from None
    return source


# The length and nesting caps are the compiler's (rules_engine.cel), not repeated here.
CelExpression = Annotated[str, AfterValidator(_compiles)]


class Action(BaseModel):
    """Send on one channel, rendered from one template of that channel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Channel
    template: str = Field(
        min_length=1,
        max_length=TEMPLATE_KEY_MAX_LENGTH,
        description="The key of a template whose channel is this action's channel.",
    )


class Recipients(BaseModel):
    """Who gets the messages.

    - `{"kind": "event"}`: the event's `to` (ids and inline profiles) and its `topic`.
    - `{"kind": "topic", "topic": "<key>"}`: every member of that topic.
    - `{"kind": "broadcast", "filter": "<CEL>"}`: every subscriber for whom the
      filter (over `subscriber`) is true; an empty filter means everybody.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RecipientKind
    topic: str | None = Field(
        default=None,
        validate_default=True,
        description="Required with kind 'topic', and only allowed there.",
    )
    filter: str | None = Field(
        default=None,
        validate_default=True,
        description="CEL over `subscriber`, only with kind 'broadcast'; '' means everybody.",
    )

    @field_validator("topic")
    @classmethod
    def _topic_only_for_topic_kind(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind is None:  # kind itself is invalid, and reported
            return value
        if kind != "topic":
            if value is not None:
                raise _invalid("not_allowed", f"only allowed when kind is 'topic', not {kind!r}")
            return None
        if not value:
            raise _invalid("missing", "required when kind is 'topic'")
        if not TOPIC_KEY.fullmatch(value):
            raise _invalid(
                "topic_key",
                f"{value!r} is not a topic key: 1 to 200 characters of a-z, 0-9 and . _ : -, "
                "starting with a letter or digit",
            )
        return value

    @field_validator("filter")
    @classmethod
    def _filter_only_for_broadcast(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind is None:
            return value
        if kind != "broadcast":
            if value is not None:
                raise _invalid(
                    "not_allowed", f"only allowed when kind is 'broadcast', not {kind!r}"
                )
            return None
        return _compiles(value or "")


class Digest(BaseModel):
    """Collect a subscriber's messages for a window, then send one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: CelExpression = Field(
        default="",
        description="CEL giving a string that groups events into one digest; '' groups by "
        "the event type.",
    )
    window_seconds: int = Field(ge=DIGEST_WINDOW_SECONDS[0], le=DIGEST_WINDOW_SECONDS[1])


class Throttle(BaseModel):
    """At most `limit` messages per subscriber in any `window_seconds`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(ge=1, le=THROTTLE_MAX_LIMIT)
    window_seconds: int = Field(ge=THROTTLE_WINDOW_SECONDS[0], le=THROTTLE_WINDOW_SECONDS[1])


def _time_of_day(value: str) -> str:
    if not TIME_OF_DAY.fullmatch(value):
        raise _invalid("time_of_day", f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return value


TimeOfDay = Annotated[str, AfterValidator(_time_of_day)]


class SendWindow(BaseModel):
    """Hours of the subscriber's day (in their time zone) when messages may go out.

    `end` before `start` means the window runs over midnight (22:00 to 06:00).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: TimeOfDay = Field(description="HH:MM")
    end: TimeOfDay = Field(description="HH:MM; before start means over midnight.")

    @field_validator("end")
    @classmethod
    def _not_empty(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("start") == value:
            raise _invalid("empty_window", "must differ from start: the window would never open")
        return value


def _one_action_per_channel(actions: list[Action]) -> list[Action]:
    seen: dict[str, int] = {}
    for index, action in enumerate(actions):
        if action.channel in seen:
            raise _invalid(
                "duplicate_channel",
                f"actions {seen[action.channel]} and {index} both send on "
                f"{str(action.channel)!r}; one action per channel",
            )
        seen[action.channel] = index
    return actions


Actions = Annotated[
    list[Action],
    Field(min_length=1, max_length=len(Channel), description="At most one action per channel."),
    AfterValidator(_one_action_per_channel),
]
DelaySeconds = Annotated[int, Field(ge=0, le=MAX_DELAY_SECONDS)]


class RuleDefinition(BaseModel):
    """A rule's versioned fields: changing any of them makes a new version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    condition: CelExpression = Field(
        default="", description="CEL over `event`; '' means every event of the type."
    )
    actions: Actions
    recipients: Recipients
    delay_seconds: DelaySeconds | None = Field(
        default=None, description="Wait this long (up to 30 days) before sending."
    )
    digest: Digest | None = None
    throttle: Throttle | None = None
    send_window: SendWindow | None = None

    def stored(self) -> dict[str, Any]:
        """The fields as a RuleVersion stores them (plain JSON, no empty members)."""
        stored: dict[str, Any] = self.model_dump(mode="json")
        stored["recipients"] = self.recipients.model_dump(mode="json", exclude_none=True)
        return stored


VERSIONED_FIELDS: tuple[str, ...] = tuple(RuleDefinition.model_fields)


def field_errors(
    error: PydanticValidationError, *, prefix: Sequence[str | int] = ()
) -> list[FieldError]:
    """Pydantic's errors as field errors, each naming its field as a JSON pointer."""
    return [
        FieldError(pointer=json_pointer([*prefix, *detail["loc"]]), detail=detail["msg"])
        for detail in error.errors(include_url=False)
    ]
