"""Parsing API request bodies: strict JSON, with errors that say where it broke.

The standard library parser recurses per nesting level, so a hostile body of
``[[[[…`` would exhaust the stack; the depth is capped (HERALD_MAX_JSON_DEPTH)
and a RecursionError is reported as "too deep" rather than a server error.
"""

import json
import math
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja.parser import Parser

from herald.problems import json_pointer


class BodyProblem(ValueError):
    """A request body that is not acceptable JSON; becomes a problem response."""

    slug = "malformed-json"
    title = "Malformed JSON"
    status = 400

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions


class JsonTooDeep(BodyProblem):
    slug = "json-too-deep"
    title = "JSON nested too deeply"


class NulCharacter(BodyProblem):
    """PostgreSQL can not store U+0000 in text or JSONB, so it is refused up front."""

    slug = "nul-character"
    title = "NUL character in JSON"
    status = 422


def _nul_pointer(value: Any, path: str = "") -> str | None:
    """The JSON pointer of the first string (or key) holding U+0000, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = path + json_pointer([key])
            if "\x00" in str(key):
                return here
            found = _nul_pointer(item, here)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_pointer(item, f"{path}/{index}")
            if found is not None:
                return found
    return None


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests containers more than ``limit`` levels deep.

    Walks one level at a time (a list per level, not a stack entry per item),
    which is several times cheaper on wide bodies such as 1,000-event batches.
    """
    level: list[Any] = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        next_level: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            next_level.extend(child for child in children if isinstance(child, dict | list))
        level = next_level
    return False


def _refuse_constant(name: str) -> Any:
    # Python's parser accepts NaN and ±Infinity; JSON (RFC 8259) and PostgreSQL's
    # jsonb do not, so storing one would fail later, as a server error.
    raise BodyProblem(f"{name} is not a JSON value (JSON has no NaN or Infinity).", token=name)


# Longer numbers are refused: an integer past 4,300 digits can not be converted
# at all, and a decimal this long would be silently rounded to a double's 17.
MAX_NUMBER_DIGITS = 100


def _number_checked(text: str) -> None:
    if len(text) > MAX_NUMBER_DIGITS:
        raise BodyProblem(
            f"A number has {len(text)} digits; at most {MAX_NUMBER_DIGITS} are accepted.",
            max_digits=MAX_NUMBER_DIGITS,
        )


def _parse_int(text: str) -> int:
    _number_checked(text)
    return int(text)


def _parse_float(text: str) -> float:
    _number_checked(text)
    value = float(text)
    if math.isinf(value):
        # PostgreSQL's jsonb can not store it either: a server error later.
        raise BodyProblem(f"The number {text} is too large (beyond ±1.8e308).", token=text)
    return value


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins; refusing them keeps a
    # proxy or signature check from reading another object than Herald stores.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyProblem(
                    f"Duplicate key {key!r}: it appears twice in one object.", key=key
                )
            seen.add(key)
    return obj


def parse_json_body(body: bytes) -> Any:
    limit: int = settings.HERALD_MAX_JSON_DEPTH
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyProblem(
            f"The body is not valid UTF-8 (byte {error.start}).", position=error.start
        ) from None
    try:
        data = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
            object_pairs_hook=_object_without_duplicates,
        )
    except json.JSONDecodeError as error:
        raise BodyProblem(
            f"{error.msg} at line {error.lineno}, column {error.colno} (character {error.pos}).",
            line=error.lineno,
            column=error.colno,
            position=error.pos,
        ) from None
    except RecursionError:
        raise JsonTooDeep(f"The body nests deeper than {limit} levels.", max_depth=limit) from None
    if json_depth_exceeds(data, limit):
        raise JsonTooDeep(f"The body nests deeper than {limit} levels.", max_depth=limit)
    # Cheap test on the raw text first; the walk only runs when it may be needed.
    if "\\u0000" in text:
        pointer = _nul_pointer(data)
        if pointer is not None:
            raise NulCharacter(
                f"Text at {pointer or '/'} contains U+0000 (NUL), which Herald can not store.",
                pointer=pointer or "/",
            )
    return data


class HeraldParser(Parser):
    def parse_body(self, request: HttpRequest) -> Any:
        return parse_json_body(request.body)
