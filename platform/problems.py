"""RFC 9457 problem details: every API error is application/problem+json.

``type`` is a stable URN per kind of problem (documented in docs/api.md), so
clients can branch on it; ``title`` is the human summary of that kind and
``detail`` explains this occurrence.
"""

import json
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
