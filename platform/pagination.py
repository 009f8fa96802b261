"""Cursor (keyset) pagination for API lists.

A cursor is an opaque token naming the last row of the previous page by its
ordering value and primary key, so pages stay stable while rows are added and
each page costs one indexed query, however deep.
"""

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.core.exceptions import ValidationError
from django.db.models import Model, Q, QuerySet

M = TypeVar("M", bound=Model)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class InvalidCursor(ValueError):
    """The cursor was not made by this API (or by this list)."""


@dataclass(frozen=True)
class Page(Generic[M]):
    items: list[M]
    next_cursor: str | None


def _encode(value: object, pk: object) -> str:
    raw = json.dumps([str(value), str(pk)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value, pk = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursor(f"{cursor!r} is not a cursor from this list") from None
    if not isinstance(value, str) or not isinstance(pk, str):
        raise InvalidCursor(f"{cursor!r} is not a cursor from this list")
    return value, pk


def cursor_paginate(
    queryset: QuerySet[M],
    *,
    field: str,
    cursor: str | None,
    limit: int = DEFAULT_LIMIT,
    descending: bool = True,
) -> Page[M]:
    """One page of ``queryset`` ordered by ``field`` then primary key."""
    limit = max(1, min(limit, MAX_LIMIT))
    direction = "-" if descending else ""
    queryset = queryset.order_by(f"{direction}{field}", f"{direction}pk")
    if cursor:
        value, pk = _decode(cursor)
        after = "lt" if descending else "gt"
        try:
            queryset = queryset.filter(
                Q(**{f"{field}__{after}": value}) | Q(**{field: value, f"pk__{after}": pk})
            )
            rows = list(queryset[: limit + 1])
        except (ValueError, TypeError, ValidationError):
            raise InvalidCursor(f"{cursor!r} is not a cursor from this list") from None
    else:
        rows = list(queryset[: limit + 1])
    if len(rows) > limit:
        last = rows[limit - 1]
        return Page(items=rows[:limit], next_cursor=_encode(getattr(last, field), last.pk))
    return Page(items=rows, next_cursor=None)
