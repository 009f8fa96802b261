"""Fixtures shared by the delivery tests."""

from collections.abc import Iterator

import pytest

from tests.channels_delivery.sinks import HttpSink, http_sink


class Published(list[tuple[str, list[str], float]]):
    """What was published to the delivery queue: (schema, message ids, countdown)
    for the fast lane; ``slow`` holds the same for the slow lane."""

    def __init__(self) -> None:
        super().__init__()
        self.slow: list[tuple[str, list[str], float]] = []

    def record(
        self, schema: str, ids: list[str], countdown: float = 0.0, slow_lane: bool = False
    ) -> None:
        (self.slow if slow_lane else self).append((schema, list(ids), countdown))


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Publishing to the delivery queues, recorded instead of sent."""
    from channels_delivery.services import dispatch

    sent = Published()
    monkeypatch.setattr(dispatch, "publish_to_delivery", sent.record)
    return sent


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    """A local HTTP server on 127.0.0.1 standing in for a receiver or a provider."""
    with http_sink() as running:
        yield running


@pytest.fixture
def callbacks_published(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Callback ids published to the delivery queue, recorded instead of sent."""
    from channels_delivery.services import callbacks

    published: list[list[str]] = []
    monkeypatch.setattr(
        callbacks,
        "publish_callbacks",
        lambda schema, ids, countdown=0.0: published.append(list(ids)),
    )
    return published
