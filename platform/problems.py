"""RFC 9457 problem details: every API error is application/problem+json.

``type`` is a stable URN per kind of problem (documented in docs/api.md), so
clients can branch on it; ``title`` is the human summary of that kind and
``detail`` explains this occurrence.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.http import HttpResponse

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:herald:problem:"


def problem_type(slug: str) -> str:
    return f"{PROBLEM_TYPE_PREFIX}{slug}"


def problem_response(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> HttpResponse:
    body = {
        "type": problem_type(slug),
        "title": title,
        "status": status,
        "detail": detail,
        **extensions,
    }
    response = HttpResponse(
        json.dumps(body), status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers
    )
    return response


@dataclass(frozen=True, kw_only=True)
class FieldError:
    """One invalid field; ``pointer`` is a JSON pointer into the submitted document."""

    pointer: str
    detail: str


def json_pointer(parts: Iterable[Any]) -> str:
    """RFC 6901: ``["items", 0, "a/b"]`` -> ``/items/0/a~1b``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def field_errors_out(errors: Sequence[FieldError], *, prefix: str = "") -> list[dict[str, str]]:
    return [{"pointer": prefix + error.pointer, "detail": error.detail} for error in errors]


def validation_problem(errors: Sequence[FieldError], *, prefix: str = "") -> HttpResponse:
    """422 validation-failed, naming every field (the one shape every endpoint uses)."""
    out = field_errors_out(errors, prefix=prefix)
    return problem_response(
        status=422,
        slug="validation-failed",
        title="Validation failed",
        detail="; ".join(f"{e['pointer']}: {e['detail']}" for e in out) or "Invalid request.",
        errors=out,
    )
