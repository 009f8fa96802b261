"""Exceptions: every error Herald answers is an RFC 9457 problem document, and
the exception raised for it carries the document's fields.

Branch on the class (one per HTTP status family) or on ``type``, the stable
``urn:herald:problem:<slug>``; ``title`` and ``detail`` are for people.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from herald_client._retry import retry_after_seconds

PROBLEM_PREFIX = "urn:herald:problem:"


@dataclass(frozen=True, kw_only=True)
class FieldError:
    """One invalid field of a request: ``pointer`` is a JSON pointer such as ``/to/0``."""

    pointer: str
    detail: str


class HeraldError(Exception):
    """A request to Herald failed. ``status`` is None when no answer came back."""

    def __init__(
        self,
        *,
        status: int | None,
        type: str,
        title: str,
        detail: str,
        errors: tuple[FieldError, ...] = (),
        extensions: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status or 'no response'} {title}: {detail}" if detail else title)
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = errors
        self.extensions: Mapping[str, Any] = dict(extensions or {})
        self.headers: Mapping[str, str] = dict(headers or {})

    @property
    def slug(self) -> str:
        """``type`` without its ``urn:herald:problem:`` prefix, e.g. ``not-found``."""
        return self.type.removeprefix(PROBLEM_PREFIX)


class APIConnectionError(HeraldError):
    """Herald could not be reached, or did not answer in time (after the retries)."""


class BadRequest(HeraldError):
    """400: malformed JSON, JSON nested too deeply, an invalid cursor."""


class AuthenticationError(HeraldError):
    """401: a missing, malformed, unknown, revoked or expired API key, or a wrong
    subscriber hash on the inbox."""


class PermissionDenied(HeraldError):
    """403: the key lacks the scope (``extensions["required_scope"]``), or the
    tenant is suspended."""


class NotFound(HeraldError):
    """404: no such resource in this key's tenant (another tenant's ids included)."""


class Conflict(HeraldError):
    """409: the resource exists already, is in use, or can not take this action now."""


class PayloadTooLarge(HeraldError):
    """413: the body is larger than the endpoint accepts (``extensions["max_bytes"]``)."""


class ValidationError(HeraldError):
    """422: the request was refused; ``errors`` names each field with a JSON pointer."""


class RateLimited(HeraldError):
    """429: the request rate or the monthly event quota is exceeded."""

    @property
    def retry_after(self) -> float | None:
        """Seconds Herald asked to wait (``Retry-After``), if it said."""
        return retry_after_seconds(self.headers.get("retry-after"))


class ServerError(HeraldError):
    """5xx: something went wrong inside Herald."""


class ServiceUnavailable(ServerError):
    """503: Herald can not reach its database for the moment."""


_BY_STATUS: dict[int, type[HeraldError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: ServiceUnavailable,
}
_PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "errors"})


def error_from_response(response: httpx.Response) -> HeraldError:
    """The exception for an error answer, from its problem document (or, for an
    answer that is not one, e.g. from a proxy, from the status line)."""
    status = response.status_code
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else HeraldError)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    errors = tuple(
        FieldError(pointer=str(error.get("pointer", "")), detail=str(error.get("detail", "")))
        for error in body.get("errors") or ()
        if isinstance(error, dict)
    )
    return cls(
        status=status,
        type=str(body.get("type") or "about:blank"),
        title=str(body.get("title") or response.reason_phrase or f"HTTP {status}"),
        detail=str(body.get("detail") or ""),
        errors=errors,
        extensions={key: value for key, value in body.items() if key not in _PROBLEM_MEMBERS},
        headers={name.lower(): value for name, value in response.headers.items()},
    )
