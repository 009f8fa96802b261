"""Retries: which answers the client tries again, how long it waits, and that a
retried call is the same call (the same idempotency key, the same body).

Herald answers 503 and 429 only when its database or a limit says so, so these
tests put a local HTTP sink (tests/channels_delivery/sinks.py) in its place,
answering what each test queues. No database is involved.
"""

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from herald_client import (
    APIConnectionError,
    AsyncHerald,
    Backoff,
    Herald,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    ValidationError,
)
from herald_client._retry import retry_after_seconds

from tests.channels_delivery.sinks import HttpSink, http_sink
from tests.ports import free_port
from tests.sdk.conftest import FAST_BACKOFF

TOKEN = "hk_test_" + "a" * 40
ACCEPTED = json.dumps(
    {"id": "6f1c7a0e-0000-4000-8000-000000000001", "status": "accepted",
     "created_at": "2026-11-23T05:24:00.052Z"}
)  # fmt: skip
PROBLEM_HEADERS = {"Content-Type": "application/problem+json"}


def problem(status: int, slug: str, **extensions: object) -> str:
    return json.dumps(
        {"type": f"urn:herald:problem:{slug}", "title": slug.replace("-", " "), "status": status,
         "detail": f"{slug} happened", **extensions}
    )  # fmt: skip


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with http_sink() as running:
        yield running


def client(sink: HttpSink, *, max_retries: int = 3) -> Herald:
    return Herald(TOKEN, base_url=sink.url, backoff=FAST_BACKOFF, max_retries=max_retries)


def test_503_is_retried_after_retry_after_with_the_same_idempotency_key(sink: HttpSink) -> None:
    sink.reply(
        503, problem(503, "service-unavailable"), headers={**PROBLEM_HEADERS, "Retry-After": "1"}
    )
    sink.reply(202, ACCEPTED, headers={"Content-Type": "application/json"})

    with client(sink) as herald:
        accepted = herald.events.send("order.shipped", to=["user-42"])

    assert accepted.id == "6f1c7a0e-0000-4000-8000-000000000001"
    first, second = sink.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.headers["idempotency-key"].startswith("hc-")
    assert first.body == second.body
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert second.received - first.received >= 0.95


def test_a_key_given_by_the_caller_is_the_one_sent_every_time(sink: HttpSink) -> None:
    sink.reply(502)
    sink.reply(202, ACCEPTED)

    with client(sink) as herald:
        herald.events.send("order.shipped", idempotency_key="order-1042-shipped")

    assert [r.headers["idempotency-key"] for r in sink.requests] == ["order-1042-shipped"] * 2


def test_every_call_gets_its_own_key(sink: HttpSink) -> None:
    sink.reply(202, ACCEPTED)
    sink.reply(202, ACCEPTED)

    with client(sink) as herald:
        herald.events.send("a")
        herald.events.send("a")

    first, second = sink.requests
    assert first.headers["idempotency-key"] != second.headers["idempotency-key"]


def test_429_honours_an_http_date_retry_after(sink: HttpSink) -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    sink.reply(
        429,
        problem(429, "rate-limited"),
        headers={"Retry-After": format_datetime(when, usegmt=True)},
    )
    sink.reply(200, json.dumps({"items": [], "next_cursor": None}))

    with client(sink) as herald:
        page = herald.subscribers.list()

    assert page.items == []
    first, second = sink.requests
    assert second.received - first.received >= 0.9


def test_a_retry_after_longer_than_the_cap_is_raised_at_once(sink: HttpSink) -> None:
    sink.reply(
        429,
        problem(429, "quota-exceeded", limit=1000, used=1000),
        headers={**PROBLEM_HEADERS, "Retry-After": "86400"},
    )

    with client(sink) as herald, pytest.raises(RateLimited) as refused:
        herald.events.send("order.shipped")

    assert len(sink.requests) == 1
    error = refused.value
    assert error.retry_after == 86400
    assert error.slug == "quota-exceeded"
    assert error.extensions == {"limit": 1000, "used": 1000}


def test_after_the_last_retry_the_problem_is_raised(sink: HttpSink) -> None:
    for _ in range(3):
        sink.reply(503, problem(503, "service-unavailable"), headers=PROBLEM_HEADERS)

    with client(sink, max_retries=2) as herald, pytest.raises(ServiceUnavailable) as failed:
        herald.messages.get("6f1c7a0e-0000-4000-8000-000000000001")

    assert len(sink.requests) == 3
    assert failed.value.status == 503
    assert failed.value.type == "urn:herald:problem:service-unavailable"
    assert failed.value.detail == "service-unavailable happened"


def test_a_create_is_not_repeated_after_a_5xx_but_is_after_a_429(sink: HttpSink) -> None:
    sink.reply(500, problem(500, "internal-error"), headers=PROBLEM_HEADERS)

    with client(sink) as herald:
        with pytest.raises(ServerError):
            herald.topics.create("project-1")
        assert len(sink.requests) == 1

        sink.reply(429, problem(429, "rate-limited"), headers={"Retry-After": "0"})
        sink.reply(
            201, json.dumps({"key": "project-1", "name": "", "created_at": "2026-11-23T05:24:00Z"})
        )
        assert herald.topics.create("project-1").key == "project-1"
        assert len(sink.requests) == 3


def test_client_errors_are_not_retried(sink: HttpSink) -> None:
    sink.reply(
        422,
        problem(422, "validation-failed", errors=[{"pointer": "/event", "detail": "required"}]),
        headers=PROBLEM_HEADERS,
    )

    with client(sink) as herald, pytest.raises(ValidationError) as refused:
        herald.events.send("x")

    assert len(sink.requests) == 1
    assert [(e.pointer, e.detail) for e in refused.value.errors] == [("/event", "required")]


def test_a_batch_is_retried_with_the_same_item_keys(sink: HttpSink) -> None:
    sink.reply(504)
    sink.reply(202, json.dumps({"accepted": 2, "rejected": 0, "results": [
        {"index": 0, "id": "6f1c7a0e-0000-4000-8000-000000000001", "status": "accepted"},
        {"index": 1, "id": "6f1c7a0e-0000-4000-8000-000000000002", "status": "accepted"},
    ]}))  # fmt: skip

    with client(sink) as herald:
        result = herald.events.send_batch(
            [{"event": "a"}, {"event": "b", "idempotency_key": "mine"}]
        )

    assert result.accepted == 2
    bodies = [json.loads(request.body) for request in sink.requests]
    assert bodies[0] == bodies[1]
    keys = [item["idempotency_key"] for item in bodies[0]["events"]]
    assert keys[0].startswith("hc-")
    assert keys[1] == "mine"


def test_an_unreachable_server_is_a_connection_error_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()

    backoff = Backoff(initial=0.1, maximum=0.1)
    with (
        Herald(TOKEN, base_url=url, max_retries=2, backoff=backoff) as herald,
        pytest.raises(APIConnectionError) as failed,
    ):
        herald.events.send("x")

    assert failed.value.status is None
    assert time.monotonic() - started >= 0.1  # two waits of 0.05 to 0.1 s each


def test_the_async_client_retries_the_same_way(sink: HttpSink) -> None:
    sink.reply(503, problem(503, "service-unavailable"), headers={"Retry-After": "1"})
    sink.reply(202, ACCEPTED)

    async def send() -> str:
        async with AsyncHerald(TOKEN, base_url=sink.url, backoff=FAST_BACKOFF) as herald:
            accepted = await herald.events.send("order.shipped")
            return accepted.id

    assert asyncio.run(send()) == "6f1c7a0e-0000-4000-8000-000000000001"
    first, second = sink.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert second.received - first.received >= 0.95


# --- the policy on its own --------------------------------------------------------


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 11, 23, 5, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds("Mon, 23 Nov 2026 05:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Mon, 23 Nov 2026 04:59:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_backoff_grows_with_jitter_up_to_its_maximum() -> None:
    backoff = Backoff(initial=1.0, maximum=4.0)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 4.0)]:
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(delays) > 1  # jittered
