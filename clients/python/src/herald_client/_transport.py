"""Sending one logical call to Herald, with retries: the sync and async loops.

A ``Call`` describes a request completely (method, path, query, body, headers,
how to read the answer, whether repeating it is safe) and is built once per
logical call, so an idempotency key generated for it is the same on every
attempt. The two transports differ only in how they send and sleep.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from herald_client._retry import Backoff, delay_after_error, delay_after_response
from herald_client.errors import APIConnectionError, error_from_response
from herald_client.models import Page

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

API_PREFIX = "/api/v1"
DEFAULT_BASE_URL = "http://localhost:8000"
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 3
VERSION = "0.1.0"
USER_AGENT = f"herald-client-python/{VERSION} httpx/{httpx.__version__}"


@dataclass(frozen=True, kw_only=True)
class Call(Generic[T_co]):
    method: str
    path: str
    """Under /api/v1, with path parameters already quoted (see ``segment``)."""
    parse: Callable[[httpx.Response], T_co]
    params: Mapping[str, Any] = field(default_factory=dict)
    """Query parameters; None values are left out."""
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    retry_safe: bool = True
    """May the request be repeated when it could have been processed (a timeout, a 5xx)?"""


def segment(value: str) -> str:
    """A path parameter, quoted so that any id names exactly one resource."""
    return quote(value, safe="")


class _Transport:
    def __init__(
        self,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float,
        max_retries: int,
        backoff: Backoff,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.base_url = base_url.rstrip("/")
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **headers}
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff

    def _build(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        return http.build_request(
            call.method,
            f"{self.base_url}{API_PREFIX}{call.path}",
            params={name: value for name, value in call.params.items() if value is not None},
            json=call.body,
            headers={**self.headers, **call.headers},
            timeout=self.timeout,
        )

    def _after_response(self, call: Call[Any], response: httpx.Response, attempt: int) -> float:
        """The wait before the next attempt; raises the error when there is none."""
        delay = delay_after_response(
            response,
            attempt=attempt,
            max_retries=self.max_retries,
            retry_safe=call.retry_safe,
            backoff=self.backoff,
        )
        if delay is None:
            raise error_from_response(response)
        return delay

    def _after_error(self, call: Call[Any], error: httpx.TransportError, attempt: int) -> float:
        delay = delay_after_error(
            error,
            attempt=attempt,
            max_retries=self.max_retries,
            retry_safe=call.retry_safe,
            backoff=self.backoff,
        )
        if delay is None:
            raise APIConnectionError(
                status=None,
                type="",
                title=type(error).__name__,
                detail=f"{call.method} {call.path}: {error or 'no answer'}",
            ) from error
        return delay


class SyncTransport(_Transport):
    def __init__(self, *, http_client: httpx.Client | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client()

    def execute(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.send(self._build(self._http, call))
            except httpx.TransportError as error:
                delay = self._after_error(call, error, attempt)
            else:
                if response.is_success:
                    return call.parse(response)
                delay = self._after_response(call, response, attempt)
            time.sleep(delay)
            attempt += 1

    def iterate(self, page_call: Callable[[str | None], Call[Page[T]]]) -> Iterator[T]:
        """Every item of a cursor-paginated list, fetching pages as they are reached."""
        cursor: str | None = None
        while True:
            page = self.execute(page_call(cursor))
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def close(self) -> None:
        if self._owns_http:
            self._http.close()


class AsyncTransport(_Transport):
    def __init__(self, *, http_client: httpx.AsyncClient | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient()

    async def execute(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.send(self._build(self._http, call))
            except httpx.TransportError as error:
                delay = self._after_error(call, error, attempt)
            else:
                if response.is_success:
                    return call.parse(response)
                delay = self._after_response(call, response, attempt)
            await asyncio.sleep(delay)
            attempt += 1

    async def iterate(self, page_call: Callable[[str | None], Call[Page[T]]]) -> AsyncIterator[T]:
        cursor: str | None = None
        while True:
            page = await self.execute(page_call(cursor))
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()
