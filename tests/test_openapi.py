"""The API against its own OpenAPI document, property-based, with Schemathesis.

The document is read from the app in-process (Django's WSGI handler) when the
module is collected, so every operation it lists at that moment gets a test.
Each test sends a bounded number of generated requests, valid and invalid
ones, to its operation, with an admin key of tenant alpha, and requires:

* no response is a server error (5xx);
* a success response has the media type and body schema its status declares;
* an error response is application/problem+json (RFC 9457), and its body
  matches the schema its status declares, if the status is declared.

Statuses an operation answers with but does not declare (422 on a GET whose
query is invalid, 400 for a body that is not JSON, ...) do not fail the tests:
they are collected and reported as one UndeclaredStatus warning, so the API's
owners can declare them. The document's own shape (paths, security scheme,
problem+json error responses) is checked by the plain tests at the end.

Before the requests, a few resources are made (a subscriber, a topic, an
event, messages with delivery attempts, an integration, a webhook endpoint),
and some examples use their ids
as path parameters, so read, update and delete operations answer with their
success bodies too, not only with 404s. Every generated request
runs in a savepoint that is rolled back, so each example starts from the same
database and a failure reproduces on its own.
"""

import re
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from channels_delivery.catalogue import Channel
from channels_delivery.inbox_auth import inbox_secret_get, subscriber_hash
from channels_delivery.models import AttemptOutcome, DeliveryAttempt, Message, MessageStatus
from rules_engine.models import Event, Subscriber
from tenants.models import Tenant
from tests.conftest import ApiClient

OPENAPI_URL = "/api/v1/openapi.json"
# Read by the tenant's frontend with a subscriber hash instead of the bearer key.
INBOX_SUBSCRIBER_PATHS = "/api/v1/inbox/messages"
# Replays only a failed webhook message; the other message paths read a delivered one.
MESSAGE_REPLAY_PATH = "/api/v1/messages/{message_id}/replay"
# Its body names a time that random generation almost never puts in the allowed window.
ENDPOINT_REPLAY_PATH = "/api/v1/webhook-endpoints/{endpoint_id}/replay"
DOCS_URL = "/api/v1/docs"
PROBLEM_JSON = "application/problem+json"
# Generated requests per operation: 21 operations x 50 take about 20 s on 2 cores.
MAX_EXAMPLES = 50


def _load_operations() -> list[APIOperation]:
    """The operations the document lists, each parametrizing the property test.

    Not ``schema.parametrize()``: with pytest 9.2 its items all get the same
    node id, and ``schemathesis.pytest.from_fixture`` fails (Schemathesis
    4.32 sets ``Function._nodeid``, which pytest 9.2 no longer has).
    """
    # An explicit default config: no schemathesis.toml found on disk applies.
    config = schemathesis.Config()
    schema = schemathesis.openapi.from_wsgi(OPENAPI_URL, get_wsgi_application(), config=config)
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            # An operation the document describes wrongly fails collection, with the reason.
            raise result.err()
        operations.append(result.ok())
    return operations


OPERATIONS = _load_operations()


class UndeclaredStatus(UserWarning):
    """An operation answered with a status its OpenAPI entry does not declare."""


def _media_type(response: Response) -> str:
    values = response.headers.get("content-type") or [""]
    return values[0].split(";", 1)[0].strip().lower()


def _declared_media_types(case: Case, status: int) -> list[str]:
    declared = case.operation.responses.find_by_status_code(status)
    if declared is None:
        return []
    return list(declared.definition.get("content") or {})


def success_content_type_conformance(
    ctx: CheckContext, response: Response, case: Case
) -> bool | None:
    """Schemathesis' media-type check, for success responses.

    Error responses are always application/problem+json; problem_details()
    checks them, and test_error_responses_are_declared_as_problem_json checks
    that the document says so.
    """
    if response.status_code >= 400:
        return None
    return content_type_conformance(ctx, response, case)


def problem_details(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """An error is RFC 9457 problem details, and its body matches its declared schema."""
    status = response.status_code
    if status < 400:
        return None
    media_type = _media_type(response)
    assert media_type == PROBLEM_JSON, f"a {status} response is {media_type!r}, not {PROBLEM_JSON}"
    body = response.json()
    assert isinstance(body, dict), f"a problem document is a JSON object, not {body!r}"
    assert body.get("status") == status, f"the problem's status is {body.get('status')!r}"
    for member in ("type", "title"):
        assert isinstance(body.get(member), str), f"the problem has no string {member!r}"
    declared = _declared_media_types(case, status)
    if not declared or PROBLEM_JSON in declared:
        # Undeclared: reported, not judged. Declared as problem+json: the
        # built-in response_schema_conformance validates it.
        return None
    # Declared under another JSON media type: validate the body against that schema.
    as_declared = Response(
        status_code=status,
        headers={**response.headers, "content-type": [declared[0]]},
        content=response.content,
        request=response.request,
        elapsed=response.elapsed,
        verify=response.verify,
    )
    return response_schema_conformance(ctx, as_declared, case)


CHECKS = [
    not_a_server_error,
    success_content_type_conformance,
    response_schema_conformance,
    problem_details,
]


@contextmanager
def _connection_kept() -> Iterator[None]:
    """Keep Django's WSGI handler from closing the connection that holds the test's transaction.

    The handler runs ``close_old_connections`` when a request starts and when
    its response is closed, which closes a connection left in a transaction;
    Django's test client disconnects it the same way around each request.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def known_ids(api_a: ApiClient, tenant_a: Tenant) -> dict[str, str]:
    """Path parameter values naming resources that exist, by parameter name."""

    def send(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = getattr(api_a, method)(path, body, content_type="application/json")
        assert response.status_code < 300, response.content
        result: dict[str, Any] = response.json()
        return result

    send("put", "/api/v1/subscribers/seed-ada", {"email": "ada@example.com", "name": "Ada"})
    send("post", "/api/v1/topics", {"key": "seed.watchers", "name": "Watchers"})
    send("post", "/api/v1/topics/seed.watchers/subscribers", {"subscribers": ["seed-ada"]})
    event_id = send("post", "/api/v1/events", {"event": "seed.sent", "to": ["seed-ada"]})["id"]
    # Configuration under the same key as the topic, so every {key} path finds something.
    send("put", "/api/v1/event-types/seed.watchers", {"name": "Seed"})
    send("put", "/api/v1/layouts/seed.watchers", {"html": "<div>{{ content }}</div>"})
    email = {"subject": "Hi {{ subscriber.name }}", "html": "<p>Hi</p>"}
    send(
        "post",
        "/api/v1/templates",
        {"key": "seed.watchers", "channel": "email", "variants": {"en": email}},
    )
    rule_id = send(
        "post",
        "/api/v1/rules",
        {
            "name": "Seed",
            "event_type": "seed.watchers",
            "actions": [{"channel": "email", "template": "seed.watchers"}],
            "recipients": {"kind": "topic", "topic": "seed.watchers"},
            "digest": {"window_seconds": 600},
        },
    )["id"]
    integration_id = send(
        "post",
        "/api/v1/integrations",
        {
            "channel": "email",
            "provider": "smtp",
            "name": "Seed SMTP",
            "config": {"host": "smtp.example.com", "from_email": "seed@example.com"},
        },
    )["id"]
    endpoint_id = send(
        "post",
        "/api/v1/webhook-endpoints",
        {"url": "https://93.184.216.34/seed", "event_types": ["seed.watchers"]},
    )["id"]
    # Messages are made by the pipeline, which runs after commit: made here instead.
    with tenant_context(tenant_a):
        message = Message.objects.create(
            event=Event.objects.get(pk=event_id),
            subscriber=Subscriber.objects.get(external_id="seed-ada"),
            channel=Channel.EMAIL,
            status=MessageStatus.DELIVERED,
            content={"subject": "Hello"},
        )
        DeliveryAttempt.objects.create(
            message=message,
            provider="smtp",
            outcome=AttemptOutcome.ACCEPTED,
            response_status=250,
            latency_ms=12,
        )
        in_app = Message.objects.create(
            event=Event.objects.get(pk=event_id),
            subscriber=Subscriber.objects.get(external_id="seed-ada"),
            channel=Channel.IN_APP,
            status=MessageStatus.DELIVERED,
            content={"title": "Hello", "body": "Hi Ada", "action_url": "https://example.com/"},
        )
        # A failed webhook message, for POST /messages/{message_id}/replay to replay.
        failed_webhook = Message.objects.create(
            event=Event.objects.get(pk=event_id),
            subscriber=Subscriber.objects.get(external_id="seed-ada"),
            channel=Channel.WEBHOOK,
            status=MessageStatus.FAILED,
            failed_at=timezone.now(),
            content={"body": {"seed": True}},
        )
        DeliveryAttempt.objects.create(
            message=failed_webhook,
            provider="webhook",
            outcome=AttemptOutcome.PERMANENT,
            response_status=400,
            provider_message_id=f"endpoint:{endpoint_id}",
        )
        inbox_hash = subscriber_hash(secret=inbox_secret_get().secret, external_id="seed-ada")
    return {
        "external_id": "seed-ada",
        "key": "seed.watchers",
        "event_id": str(event_id),
        "message_id": str(message.id),
        "inbox_message_id": str(in_app.id),
        "replayable_message_id": str(failed_webhook.id),
        "replay_since": (timezone.now() - timedelta(days=1)).isoformat(),
        "inbox_hash": inbox_hash,
        "rule_id": str(rule_id),
        "integration_id": str(integration_id),
        "endpoint_id": str(endpoint_id),
        "version": "1",
    }


def _cases(operation: APIOperation, known_ids: dict[str, str]) -> st.SearchStrategy[Case]:
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    names = re.findall(r"{([^}]+)}", operation.path)
    if operation.path.startswith(INBOX_SUBSCRIBER_PATHS):
        known_ids = {**known_ids, "message_id": known_ids["inbox_message_id"]}
    elif operation.path == MESSAGE_REPLAY_PATH:
        known_ids = {**known_ids, "message_id": known_ids["replayable_message_id"]}
    if names and all(name in known_ids for name in names):
        existing = {name: known_ids[name] for name in names}
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=existing))
        if operation.path == ENDPOINT_REPLAY_PATH:
            strategies.append(
                operation.as_strategy(
                    GenerationMode.POSITIVE,
                    path_parameters=existing,
                    body={"since": known_ids["replay_since"]},
                    media_type="application/json",
                )
            )
    return st.one_of(strategies)


@pytest.fixture(scope="module")
def undeclared_statuses() -> Iterator[dict[str, set[int]]]:
    seen: dict[str, set[int]] = defaultdict(set)
    yield seen
    if seen:
        lines = "".join(f"\n  {label}: {sorted(codes)}" for label, codes in sorted(seen.items()))
        warnings.warn(
            UndeclaredStatus(f"operations answered with statuses they do not declare:{lines}"),
            stacklevel=1,
        )


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_operation_conforms_to_the_document(
    operation: APIOperation,
    api_a: ApiClient,
    known_ids: dict[str, str],
    undeclared_statuses: dict[str, set[int]],
) -> None:
    headers = {"Authorization": f"Bearer {api_a.token}"}
    if operation.path.startswith(INBOX_SUBSCRIBER_PATHS):
        headers = {
            "X-Herald-Tenant": "alpha",
            "X-Herald-Subscriber": "seed-ada",
            "X-Herald-Subscriber-Hash": known_ids["inbox_hash"],
        }

    @given(case=_cases(operation, known_ids))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    def sends(case: Case) -> None:
        with _connection_kept(), transaction.atomic():
            # buffered: the response is read and closed (request_finished) right here.
            response = case.call(headers=headers, buffered=True)
            transaction.set_rollback(True)
        if case.operation.responses.find_by_status_code(response.status_code) is None:
            undeclared_statuses[operation.label].add(response.status_code)
        case.validate_response(response, checks=CHECKS, headers=headers)

    sends()


# --- the document itself ----------------------------------------------------------


@pytest.fixture
def document(db: None) -> dict[str, Any]:
    response = Client().get(OPENAPI_URL)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def test_document_is_openapi_3_and_lists_every_router(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.")
    assert {
        "/api/v1/me",
        "/api/v1/events",
        "/api/v1/events/batch",
        "/api/v1/events/{event_id}",
        "/api/v1/subscribers",
        "/api/v1/subscribers/bulk",
        "/api/v1/subscribers/{external_id}",
        "/api/v1/subscribers/{external_id}/preferences",
        "/api/v1/topics",
        "/api/v1/topics/{key}",
        "/api/v1/topics/{key}/subscribers",
        "/api/v1/topics/{key}/subscribers/remove",
        "/api/v1/messages",
        "/api/v1/messages/{message_id}",
        "/api/v1/messages/{message_id}/replay",
        "/api/v1/integrations",
        "/api/v1/integrations/providers",
        "/api/v1/integrations/{integration_id}",
        "/api/v1/webhook-endpoints",
        "/api/v1/webhook-endpoints/{endpoint_id}",
        "/api/v1/webhook-endpoints/{endpoint_id}/replay",
        "/api/v1/stats",
    } <= set(document["paths"])


def test_document_declares_bearer_authentication(document: dict[str, Any]) -> None:
    schemes: dict[str, Any] = document.get("components", {}).get("securitySchemes", {})
    bearer = {
        name
        for name, scheme in schemes.items()
        if scheme.get("type") == "http" and str(scheme.get("scheme", "")).lower() == "bearer"
    }
    assert bearer, f"no HTTP bearer scheme in components.securitySchemes: {schemes!r}"
    unauthenticated = [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if not path.startswith(INBOX_SUBSCRIBER_PATHS)
        and not any(
            set(requirement) & bearer
            for requirement in operation.get("security", document.get("security", []))
        )
    ]
    assert not unauthenticated, f"operations that do not require the bearer key: {unauthenticated}"


def test_inbox_operations_require_the_three_subscriber_headers(document: dict[str, Any]) -> None:
    schemes: dict[str, Any] = document["components"]["securitySchemes"]
    inbox = [
        (f"{method.upper()} {path}", operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if path.startswith(INBOX_SUBSCRIBER_PATHS)
    ]
    assert len(inbox) == 6
    for label, operation in inbox:
        [requirement] = operation["security"]  # one requirement: all its schemes together
        headers = {schemes[name]["name"] for name in requirement if schemes[name]["in"] == "header"}
        assert headers == {
            "X-Herald-Tenant",
            "X-Herald-Subscriber",
            "X-Herald-Subscriber-Hash",
        }, label


def test_error_responses_are_declared_as_problem_json(document: dict[str, Any]) -> None:
    wrong = [
        f"{method.upper()} {path} {status}: {sorted(declared.get('content') or {})}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for status, declared in operation["responses"].items()
        if status[0] in "45" and PROBLEM_JSON not in (declared.get("content") or {})
    ]
    assert not wrong, f"error responses not declared as {PROBLEM_JSON}:\n" + "\n".join(wrong)


def test_docs_page_renders(db: None) -> None:
    response = Client().get(DOCS_URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert OPENAPI_URL.encode() in response.content
