"""Fixtures of the reliability suite: a local receiver, and loopback allowed for it."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from channels_delivery.services.dispatch import SLOW_LANE_QUEUE
from tenants.models import Tenant
from tests.channels_delivery.sinks import HttpSink, http_sink
from tests.reliability.flow import DELIVERY_QUEUE, PIPELINE_QUEUE, Flow, flow_create, flow_forget
from tests.workers import queues_purge, routing_reset


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    """A local HTTP server on 127.0.0.1 standing in for the tenant's receivers."""
    with http_sink() as running:
        yield running


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """Endpoints are saved in this process, which checks their URLs too."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


@pytest.fixture(autouse=True)
def _routed_as_configured() -> None:
    routing_reset()  # rules_engine.* to pipeline, channels_delivery.* to delivery


@pytest.fixture(autouse=True)
def _queues_empty() -> None:
    queues_purge(PIPELINE_QUEUE, DELIVERY_QUEUE, SLOW_LANE_QUEUE)


@pytest.fixture
def flows(tenant_a: Tenant, sink: HttpSink) -> Iterator[Callable[[str], Flow]]:
    """``flows(name)``: a new flow of tenant alpha to the sink; all removed afterwards."""
    made: list[Flow] = []

    def make(name: str) -> Flow:
        made.append(flow_create(tenant_a, sink, name=name))
        return made[-1]

    yield make
    for flow in made:
        flow_forget(flow)
