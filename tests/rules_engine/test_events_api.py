"""POST /events, POST /events/batch and GET /events/{id}."""

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from rules_engine.event_types import event_types_forget
from rules_engine.models import Event, EventType
from tenants.authentication import api_key_cache
from tenants.models import ApiKey, Tenant
from tests.conftest import ApiClient
from tests.factories import api_key_issue
from tests.threads import in_own_connection

pytestmark = pytest.mark.django_db

ORDER_SCHEMA = {
    "type": "object",
    "required": ["order_id", "items"],
    "properties": {
        "order_id": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
            },
        },
    },
}


def post(client: Client, body: Any, url: str = "/api/v1/events", **headers: str) -> Any:
    return client.post(url, body, content_type="application/json", headers=headers)


def events_of(tenant: Tenant) -> list[Event]:
    with tenant_context(tenant):
        return list(Event.objects.all())


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:herald:problem:{slug}"
    return body


@pytest.fixture
def order_type(tenant_a: Tenant) -> Iterator[None]:
    with tenant_context(tenant_a):
        EventType.objects.create(key="order.shipped", payload_schema=ORDER_SCHEMA)
        event_types_forget(schema_name="alpha")
    yield
    event_types_forget(schema_name="alpha")


# --- POST /events ---------------------------------------------------------------


def test_event_is_stored_and_handed_to_the_pipeline_after_commit(
    api_a: ApiClient,
    tenant_a: Tenant,
    django_capture_on_commit_callbacks: Any,
    published: list[tuple[str, list[str]]],
) -> None:
    body = {
        "event": "order.shipped",
        "to": ["u-1", {"id": "u-2", "email": "u2@example.com", "phone": "+14155550100"}],
        "topic": "orders",
        "payload": {"order_id": "A1"},
        "actor": "u-9",
        "tenant_data": {"region": "eu"},
    }
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post(api_a, body)
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "accepted"
    assert published == []  # nothing before the commit
    for callback in callbacks:
        callback()
    assert published == [("alpha", [accepted["id"]])]

    (event,) = events_of(tenant_a)
    assert str(event.id) == accepted["id"]
    assert event.event_type_key == "order.shipped"
    assert event.recipients == [
        "u-1",
        {"id": "u-2", "email": "u2@example.com", "phone": "+14155550100"},
    ]
    assert (event.topic, event.actor, event.tenant_data) == ("orders", "u-9", {"region": "eu"})
    assert event.payload == {"order_id": "A1"}


def test_scheduled_event_waits_for_its_time(
    api_a: ApiClient, django_capture_on_commit_callbacks: Any
) -> None:
    later = (timezone.now() + timedelta(hours=2)).isoformat()
    with django_capture_on_commit_callbacks() as callbacks:
        response = post(api_a, {"event": "reminder", "send_at": later})
    assert response.status_code == 202
    assert callbacks == []


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/event"),
        ({"event": ""}, "/event"),
        ({"event": "has space"}, "/event"),
        ({"event": "message.failed"}, "/event"),  # a status callback's name
        ({"event": "x", "to": "u-1"}, "/to"),
        ({"event": "x", "to": [{"id": "u", "email": "nope"}]}, "/to/0"),
        ({"event": "x", "to": [{"id": "u", "phone": "0155512"}]}, "/to/0"),
        ({"event": "x", "payload": [1, 2]}, "/payload"),
        ({"event": "x", "send_at": "2026-01-01T10:00:00"}, "/send_at"),
        ({"event": "x", "surprise": 1}, "/surprise"),
    ],
)
def test_invalid_event_is_422_naming_the_field(api_a: ApiClient, body: dict, pointer: str) -> None:
    problem = assert_problem(post(api_a, body), 422, "validation-failed")
    pointers = [error["pointer"] for error in problem["errors"]]
    assert any(p.startswith(pointer) for p in pointers), pointers


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"to": [{"id": "u", "email": "nope"}]}, "/to/0/email"),
        ({"to": ["u-1", {"id": "u", "phone": "0155512"}]}, "/to/1/phone"),
        ({"to": [{"email": "x@example.com"}]}, "/to/0/id"),
        ({"to": [{"id": "u", "surprise": 1}]}, "/to/0/surprise"),
        ({"to": [["u-1"]]}, "/to/0"),
        ({"to": [""]}, "/to/0"),
        ({"actor": {"id": "u", "phone": "1"}}, "/actor/phone"),
    ],
)
def test_an_invalid_recipient_is_named_at_its_own_field(
    api_a: ApiClient, body: dict, pointer: str
) -> None:
    """One error, where the mistake is: an inline profile is not also reported as
    "not a string", and no schema branch name shows in the pointer."""
    problem = assert_problem(post(api_a, {"event": "x", **body}), 422, "validation-failed")
    assert [error["pointer"] for error in problem["errors"]] == [pointer]


def test_an_invalid_recipient_in_a_batch_is_named_at_its_field(api_a: ApiClient) -> None:
    events = [{"event": "x", "to": [{"id": "u", "phone": "0155512"}]}]
    response = post(api_a, {"events": events}, "/api/v1/events/batch")
    assert response.status_code == 202
    (result,) = response.json()["results"]
    assert [error["pointer"] for error in result["errors"]] == ["/to/0/phone"]


def test_payload_is_validated_against_the_event_type_schema(
    api_a: ApiClient, order_type: None
) -> None:
    bad = {"order_id": "A1", "items": [{"qty": 2}]}
    problem = assert_problem(
        post(api_a, {"event": "order.shipped", "payload": bad}), 422, "validation-failed"
    )
    assert problem["errors"] == [
        {"pointer": "/payload/items/0", "detail": "'sku' is a required property"}
    ]
    good = {"order_id": "A1", "items": [{"sku": "S-1", "qty": 2}]}
    assert post(api_a, {"event": "order.shipped", "payload": good}).status_code == 202


def test_schema_change_applies_to_the_next_event(api_a: ApiClient, tenant_a: Tenant) -> None:
    from rules_engine.services.event_types import event_type_save

    with tenant_context(tenant_a):
        event_type_save(key="invoice.paid", payload_schema={"type": "object"})
    assert post(api_a, {"event": "invoice.paid", "payload": {}}).status_code == 202
    with tenant_context(tenant_a):
        saved = event_type_save(
            key="invoice.paid", payload_schema={"type": "object", "required": ["amount"]}
        )
    assert saved.schema_version == 2
    assert_problem(post(api_a, {"event": "invoice.paid", "payload": {}}), 422, "validation-failed")


def test_a_recreated_event_type_never_meets_its_old_schema(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    """Deleted and declared again, the type restarts at schema version 1: the
    validator cache must not hand it the earlier version 1's schema."""
    from rules_engine.services.event_types import event_type_save

    with tenant_context(tenant_a):
        event_type_save(key="refund.issued", payload_schema={"required": ["amount"]})
    assert_problem(post(api_a, {"event": "refund.issued", "payload": {}}), 422, "validation-failed")
    with tenant_context(tenant_a):
        EventType.objects.filter(key="refund.issued").delete()
        again = event_type_save(key="refund.issued", payload_schema={"type": "object"})
    assert again.schema_version == 1
    assert post(api_a, {"event": "refund.issued", "payload": {}}).status_code == 202


def test_unknown_event_type_is_accepted_unless_strict(api_a: ApiClient, tenant_a: Tenant) -> None:
    assert post(api_a, {"event": "never.declared"}).status_code == 202
    Tenant.objects.filter(pk=tenant_a.pk).update(strict_event_types=True)
    api_key_cache.clear()
    problem = assert_problem(post(api_a, {"event": "never.declared"}), 422, "unknown-event-type")
    assert problem["errors"][0]["pointer"] == "/event"


def test_key_without_events_write_can_not_send(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant
) -> None:
    reader = api_client_for(tenant_a, scopes=["messages:read", "subscribers:write"])
    assert_problem(post(reader, {"event": "x"}), 403, "insufficient-scope")
    assert_problem(
        post(reader, {"events": [{"event": "x"}]}, "/api/v1/events/batch"),
        403,
        "insufficient-scope",
    )
    assert events_of(tenant_a) == []


def test_warm_post_issues_one_statement(
    api_a: ApiClient, order_type: None, django_assert_num_queries: Any
) -> None:
    """Warm: the key and event types are cached, and the connection is already on
    the tenant's schema (no SET search_path), so the INSERT is all."""
    body = {"event": "order.shipped", "payload": {"order_id": "A", "items": []}}
    assert post(api_a, body).status_code == 202  # warms the key and event-type caches
    with django_assert_num_queries(1) as captured:
        assert post(api_a, body).status_code == 202
    assert captured.captured_queries[0]["sql"].startswith('INSERT INTO "rules_engine_event"')
    with django_assert_num_queries(2):  # INSERT … ON CONFLICT DO NOTHING; SELECT the holder
        assert post(api_a, body, **{"Idempotency-Key": "warm-1"}).status_code == 202


def test_alternating_tenants_each_land_in_their_own_schema(
    api_a: ApiClient, api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    """The connection keeps its schema between requests; a new tenant switches it."""
    sent: dict[str, list[str]] = {"a": [], "b": []}
    for client, name in ((api_a, "a"), (api_b, "b"), (api_b, "b"), (api_a, "a"), (api_b, "b")):
        sent[name].append(post(client, {"event": f"from.{name}"}).json()["id"])
    assert sorted(str(e.id) for e in events_of(tenant_a)) == sorted(sent["a"])
    assert sorted(str(e.id) for e in events_of(tenant_b)) == sorted(sent["b"])
    assert {e.event_type_key for e in events_of(tenant_b)} == {"from.b"}


# --- Idempotency ---------------------------------------------------------------------


def test_same_key_replays_the_original_response(api_a: ApiClient, tenant_a: Tenant) -> None:
    body = {"event": "order.shipped", "payload": {"n": 1}}
    first = post(api_a, body, **{"Idempotency-Key": "order-1"})
    second = post(api_a, body, **{"Idempotency-Key": "order-1"})
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert "Idempotent-Replayed" not in first
    assert second["Idempotent-Replayed"] == "true"
    assert len(events_of(tenant_a)) == 1


def test_key_in_the_body_works_like_the_header(api_a: ApiClient, tenant_a: Tenant) -> None:
    body = {"event": "x", "idempotency_key": "body-1"}
    assert post(api_a, body).json() == post(api_a, body, **{"Idempotency-Key": "body-1"}).json()
    assert len(events_of(tenant_a)) == 1
    problem = assert_problem(
        post(api_a, body, **{"Idempotency-Key": "other"}), 422, "validation-failed"
    )
    assert problem["errors"][0]["pointer"] == "/idempotency_key"


def test_same_key_with_another_body_is_refused(api_a: ApiClient, tenant_a: Tenant) -> None:
    post(api_a, {"event": "x", "payload": {"n": 1}}, **{"Idempotency-Key": "k"})
    assert_problem(
        post(api_a, {"event": "x", "payload": {"n": 2}}, **{"Idempotency-Key": "k"}),
        422,
        "idempotency-key-reused",
    )
    assert len(events_of(tenant_a)) == 1


def test_key_is_free_again_after_the_window(api_a: ApiClient, tenant_a: Tenant) -> None:
    first = post(api_a, {"event": "x"}, **{"Idempotency-Key": "old"}).json()
    with tenant_context(tenant_a):
        Event.objects.filter(pk=first["id"]).update(created_at=timezone.now() - timedelta(days=8))
    second = post(api_a, {"event": "x", "payload": {"new": True}}, **{"Idempotency-Key": "old"})
    assert second.status_code == 202
    assert "Idempotent-Replayed" not in second
    assert second.json()["id"] != first["id"]
    assert len(events_of(tenant_a)) == 2


def test_keys_are_per_tenant(
    api_a: ApiClient, api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    a = post(api_a, {"event": "x"}, **{"Idempotency-Key": "shared"}).json()
    b = post(api_b, {"event": "x", "payload": {"b": 1}}, **{"Idempotency-Key": "shared"})
    assert b.status_code == 202
    assert b.json()["id"] != a["id"]


def test_invalid_idempotency_header_is_422(api_a: ApiClient) -> None:
    assert_problem(
        post(api_a, {"event": "x"}, **{"Idempotency-Key": "x" * 256}), 422, "validation-failed"
    )


def test_concurrent_duplicates_create_one_event(tenant_a: Tenant) -> None:
    """Eight requests at once with one key, each in its own connection, committed."""
    key_name = f"race-{uuid.uuid4().hex[:8]}"
    token = in_own_connection(lambda: api_key_issue(tenant=tenant_a, scopes=["admin"]).token)
    barrier = threading.Barrier(8)
    responses: list[Any] = []
    lock = threading.Lock()

    def send() -> None:
        client = Client(headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key_name})
        barrier.wait(10)
        try:
            response = client.post(
                "/api/v1/events",
                {"event": "race", "payload": {"n": 1}},
                content_type="application/json",
            )
            with lock:
                responses.append(response)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    def count_and_clean() -> int:
        with tenant_context(tenant_a):
            rows = Event.objects.filter(idempotency_key=key_name)
            count = rows.count()
            rows.delete()
        ApiKey.objects.filter(tenant=tenant_a, revoked_at=None).delete()
        return count

    count = in_own_connection(count_and_clean)
    assert [r.status_code for r in responses] == [202] * 8
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(1 for r in responses if r.get("Idempotent-Replayed") == "true") == 7
    assert count == 1


# --- POST /events/batch ----------------------------------------------------------


def test_batch_accepts_valid_items_and_reports_invalid_ones(
    api_a: ApiClient, tenant_a: Tenant, order_type: None
) -> None:
    events = [
        {"event": "signup"},
        {"to": ["u-1"]},  # no event
        {"event": "order.shipped", "payload": {"order_id": "A"}},  # schema: items missing
        {"event": "signup", "to": ["u-2"], "idempotency_key": "b-1"},
    ]
    response = post(api_a, {"events": events}, "/api/v1/events/batch")
    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected", "accepted"]
    assert results[1]["errors"][0]["pointer"] == "/event"
    assert results[2]["type"] == "urn:herald:problem:validation-failed"
    assert results[2]["errors"][0]["pointer"] == "/payload"
    stored = {str(e.id) for e in events_of(tenant_a)}
    assert stored == {results[0]["id"], results[3]["id"]}


def test_batch_of_a_thousand_uses_a_bounded_number_of_queries(
    api_a: ApiClient, tenant_a: Tenant, django_assert_max_num_queries: Any
) -> None:
    events = [{"event": "bulk", "to": [f"u-{i}"], "payload": {"i": i}} for i in range(1000)]
    post(api_a, {"events": [{"event": "warm"}]}, "/api/v1/events/batch")
    with django_assert_max_num_queries(4):
        response = post(api_a, {"events": events}, "/api/v1/events/batch")
    assert response.json()["accepted"] == 1000
    with tenant_context(tenant_a):
        assert Event.objects.filter(event_type_key="bulk").count() == 1000


def test_batch_items_are_idempotent_too(api_a: ApiClient, tenant_a: Tenant) -> None:
    events = [
        {"event": "x", "idempotency_key": "i-1"},
        {"event": "x", "idempotency_key": "i-1"},  # the same request twice in one batch
        {"event": "x", "payload": {"other": 1}, "idempotency_key": "i-1"},
    ]
    results = post(api_a, {"events": events}, "/api/v1/events/batch").json()["results"]
    assert results[0]["status"] == "accepted"
    assert results[0]["replayed"] is False
    assert (results[1]["id"], results[1]["replayed"]) == (results[0]["id"], True)
    assert results[2]["type"] == "urn:herald:problem:idempotency-key-reused"
    again = post(api_a, {"events": events[:1]}, "/api/v1/events/batch").json()["results"][0]
    assert (again["id"], again["replayed"]) == (results[0]["id"], True)
    assert len(events_of(tenant_a)) == 1


def test_batch_over_a_thousand_is_refused(api_a: ApiClient, tenant_a: Tenant) -> None:
    problem = assert_problem(
        post(api_a, {"events": [{"event": "x"}] * 1001}, "/api/v1/events/batch"),
        422,
        "batch-too-large",
    )
    assert problem["max_items"] == 1000
    assert events_of(tenant_a) == []


def test_batch_keeps_integers_beyond_64_bits_exact(api_a: ApiClient, tenant_a: Tenant) -> None:
    big = 123456789012345678901234567890
    body = f'{{"events": [{{"event": "x", "payload": {{"n": {big}, "m": -{big}}}}}]}}'
    assert post(api_a, body.encode(), "/api/v1/events/batch").status_code == 202
    (event,) = events_of(tenant_a)
    assert event.payload == {"n": big, "m": -big}


def test_batch_hands_events_to_the_pipeline_in_chunks(
    api_a: ApiClient,
    django_capture_on_commit_callbacks: Any,
    published: list[tuple[str, list[str]]],
) -> None:
    events = [{"event": "x", "payload": {"i": i}} for i in range(250)]
    with django_capture_on_commit_callbacks(execute=True):
        results = post(api_a, {"events": events}, "/api/v1/events/batch").json()["results"]
    assert [(schema, len(chunk)) for schema, chunk in published] == [
        ("alpha", 100),
        ("alpha", 100),
        ("alpha", 50),
    ]
    assert sorted(i for _, chunk in published for i in chunk) == sorted(r["id"] for r in results)


# --- GET /events/{id} ----------------------------------------------------------------


def test_event_reads_back_with_its_outcome(api_a: ApiClient, tenant_a: Tenant) -> None:
    from rules_engine.services.pipeline import event_process

    accepted = post(api_a, {"event": "signup", "to": ["u-1"]}).json()
    with tenant_context(tenant_a):
        event_process(event_id=uuid.UUID(accepted["id"]))
    body = api_a.get(f"/api/v1/events/{accepted['id']}").json()
    assert body["id"] == accepted["id"]
    assert body["status"] == "no_match"
    assert body["outcome"]["matched_rules"] == []
    assert body["recipients"] == ["u-1"]
    assert body["messages"] == []


@pytest.mark.parametrize("event_id", ["not-a-uuid", str(uuid.uuid4())])
def test_unknown_event_is_404(api_a: ApiClient, event_id: str) -> None:
    assert_problem(api_a.get(f"/api/v1/events/{event_id}"), 404, "not-found")


def test_another_tenants_event_is_404(api_a: ApiClient, api_b: ApiClient) -> None:
    accepted = post(api_a, {"event": "secret", "payload": {"pin": "1234"}}).json()
    response = api_b.get(f"/api/v1/events/{accepted['id']}")
    assert_problem(response, 404, "not-found")
    assert "1234" not in response.content.decode()


def test_reading_needs_messages_read(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, api_a: ApiClient
) -> None:
    accepted = post(api_a, {"event": "x"}).json()
    writer = api_client_for(tenant_a, scopes=["events:write"])
    assert_problem(writer.get(f"/api/v1/events/{accepted['id']}"), 403, "insufficient-scope")


# --- Errors around the endpoints ----------------------------------------------------


def test_malformed_json_says_where_it_broke(api_a: ApiClient) -> None:
    problem = assert_problem(post(api_a, b'{"event": "x",\n "to": [}'), 400, "malformed-json")
    assert (problem["line"], problem["column"]) == (2, 9)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_not_stored(
    api_a: ApiClient, tenant_a: Tenant, token: str
) -> None:
    body = f'{{"event": "x", "payload": {{"amount": {token}}}}}'.encode()
    problem = assert_problem(post(api_a, body), 400, "malformed-json")
    assert token in problem["detail"]
    batch = f'{{"events": [{{"event": "x", "payload": {{"n": {token}}}}}]}}'.encode()
    assert_problem(post(api_a, batch, "/api/v1/events/batch"), 400, "malformed-json")
    assert events_of(tenant_a) == []


def test_invalid_utf8_is_400(api_a: ApiClient) -> None:
    assert_problem(post(api_a, b'{"event": "\xff"}'), 400, "malformed-json")


@pytest.mark.parametrize("depth", [33, 5000])
def test_deep_json_is_400(api_a: ApiClient, depth: int) -> None:
    body = b'{"event": "x", "payload": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    assert_problem(post(api_a, body), 400, "json-too-deep")


def test_oversized_body_is_413(api_a: ApiClient, settings: Any) -> None:
    settings.HERALD_MAX_BODY_BYTES = 1024
    problem = assert_problem(
        post(api_a, {"event": "x", "payload": {"blob": "x" * 2000}}), 413, "body-too-large"
    )
    assert problem["max_bytes"] == 1024


def test_wrong_method_is_405_problem(api_a: ApiClient) -> None:
    response = api_a.delete("/api/v1/events")
    problem = assert_problem(response, 405, "method-not-allowed")
    assert response["Allow"] == "POST"
    assert "DELETE" in problem["detail"]


def test_unknown_path_is_404_problem(api_a: ApiClient) -> None:
    assert_problem(api_a.get("/api/v1/nowhere"), 404, "not-found")


def test_events_of_one_tenant_never_appear_in_another(
    api_a: ApiClient, api_b: ApiClient, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    post(api_a, {"event": "x"})
    post(api_a, {"events": [{"event": "y"}]}, "/api/v1/events/batch")
    assert len(events_of(tenant_a)) == 2
    assert events_of(tenant_b) == []


def test_nul_character_is_422_not_a_server_error(api_a: ApiClient, tenant_a: Tenant) -> None:
    body = b'{"event": "x", "payload": {"note": "a\\u0000b"}}'
    problem = assert_problem(post(api_a, body), 422, "nul-character")
    assert problem["pointer"] == "/payload/note"
    assert events_of(tenant_a) == []
    escaped_backslash = b'{"event": "x", "payload": {"note": "a\\\\u0000b"}}'  # text, not NUL
    assert post(api_a, escaped_backslash).status_code == 202


def test_send_at_is_stored_in_utc_whatever_its_offset(api_a: ApiClient, tenant_a: Tenant) -> None:
    # PostgreSQL refuses offsets beyond ±15:59; Herald converts to UTC first.
    later = timezone.now() + timedelta(days=2)
    local = later.astimezone(timezone.get_fixed_timezone(16 * 60)).isoformat()
    assert post(api_a, {"event": "x", "send_at": local}).status_code == 202
    batch = post(api_a, {"events": [{"event": "y", "send_at": local}]}, "/api/v1/events/batch")
    assert batch.json()["accepted"] == 1
    with tenant_context(tenant_a):
        stored = {e.send_at for e in Event.objects.all() if e.send_at is not None}
    assert len(stored) == 1
    assert abs((stored.pop() - later).total_seconds()) < 1


@pytest.mark.parametrize("send_at", ["9999-12-31T23:00:00-10:00", "2999-01-01T00:00:00+00:00"])
def test_send_at_out_of_range_is_422(api_a: ApiClient, send_at: str) -> None:
    problem = assert_problem(
        post(api_a, {"event": "x", "send_at": send_at}), 422, "validation-failed"
    )
    assert problem["errors"][0]["pointer"] == "/send_at"


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/subscribers/a%00",
        "/api/v1/topics/a%00/subscribers",
        "/api/v1/subscribers?email=%00",
        "/api/v1/messages?subscriber=x%00",
    ],
)
def test_nul_in_the_url_is_400_not_a_server_error(api_a: ApiClient, url: str) -> None:
    assert_problem(api_a.get(url), 400, "nul-character")


def test_batch_stores_events_exactly_as_the_single_endpoint(
    api_a: ApiClient, tenant_a: Tenant
) -> None:
    later = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    full = {
        "event": "order.shipped",
        "to": ["u-1", {"id": "u-2", "email": "u2@example.com"}],
        "topic": "orders",
        "payload": {"items": [{"sku": "S", "qty": 2}], "note": 'é ü \\ " end'},
        "actor": "u-9",
        "tenant_data": {"region": "eu"},
        "send_at": later.isoformat(),
        "idempotency_key": "same-fields",
    }
    bare = {"event": "bare"}
    single = [post(api_a, full).json()["id"], post(api_a, bare).json()["id"]]
    batch_body = {"events": [{**full, "idempotency_key": "same-fields-2"}, bare]}
    batch = [r["id"] for r in post(api_a, batch_body, "/api/v1/events/batch").json()["results"]]
    fields = [
        "event_type_key", "recipients", "topic", "payload", "actor", "tenant_data", "send_at",
        "status", "outcome", "processed_at",
    ]  # fmt: skip
    with tenant_context(tenant_a):
        rows = {str(row["id"]): row for row in Event.objects.values("id", *fields)}
        for single_id, batch_id in zip(single, batch, strict=True):
            assert {k: rows[single_id][k] for k in fields} == {k: rows[batch_id][k] for k in fields}
        # Missing optional fields are SQL NULL in both paths, not JSON null.
        assert Event.objects.filter(id__in=[single[1], batch[1]], actor__isnull=True).count() == 2
        hashes = {Event.objects.get(id=i).request_hash for i in (batch[0], single[0])}
        assert len(hashes) == 1
