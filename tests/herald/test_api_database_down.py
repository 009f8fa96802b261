"""The database gone mid-request: the API answers 503 problem+json with
Retry-After, whether authentication or the endpoint's own query hit it.

The failure is raised where a real one arises, at a query's execution (Django's
execute_wrapper), for the statements a down database would fail first.
tests/reliability/test_postgres_restart.py restarts a real PostgreSQL.
"""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import IntegrityError, OperationalError, connection

from herald.problems import PROBLEM_CONTENT_TYPE
from tenants.models import Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

EVENT = {"event": "order.shipped", "to": ["user-1"], "payload": {"order": 42}}


@contextmanager
def statements_failing(starting: str, table: str, error: Exception) -> Iterator[list[str]]:
    """Every statement that starts with ``starting`` and names ``table`` raises
    ``error`` instead of running; yields the statements that failed."""
    failed: list[str] = []

    def wrapper(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        if sql.lstrip().upper().startswith(starting) and table in sql:
            failed.append(sql)
            raise error
        return execute(sql, *args)

    with connection.execute_wrapper(wrapper):
        yield failed


def post_event(api: ApiClient) -> Any:
    return api.post("/api/v1/events", EVENT, content_type="application/json")


def assert_service_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.content
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert response["Retry-After"] == "5"
    body = json.loads(response.content)
    assert body["type"] == "urn:herald:problem:service-unavailable"
    assert (body["status"], body["title"]) == (503, "Service unavailable")
    assert "unreachable" in body["detail"]


def test_an_insert_failing_behind_a_warm_key_answers_503(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    api = api_client_for(tenant_a, scopes=["events:write"])
    assert post_event(api).status_code == 202  # the key is in the process' cache now
    lost = OperationalError("server closed the connection unexpectedly")
    with statements_failing("INSERT", "rules_engine_event", lost) as failed:
        response = post_event(api)
    assert failed, "the event's INSERT did not run"
    assert_service_unavailable(response)
    assert post_event(api).status_code == 202  # and once it is back, events are accepted


def test_authentication_failing_answers_503(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    api = api_client_for(tenant_a, scopes=["events:write"])  # a cold key: looked up
    refused = OperationalError("connection refused")
    with statements_failing("SELECT", "tenants_apikey", refused) as failed:
        response = post_event(api)
    assert failed, "the key was not looked up"
    assert_service_unavailable(response)


def test_an_error_in_the_request_itself_stays_a_500(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    """Only a database that is unreachable asks the client to retry."""
    api = api_client_for(tenant_a, scopes=["events:write"])
    conflict = IntegrityError("duplicate key value violates unique constraint")
    with statements_failing("INSERT", "rules_engine_event", conflict):
        response = post_event(api)
    assert response.status_code == 500
    assert json.loads(response.content)["type"] == "urn:herald:problem:internal-error"
