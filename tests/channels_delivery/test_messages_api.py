"""GET /api/v1/messages and GET /api/v1/messages/{id}."""

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.models import AttemptOutcome, DeliveryAttempt, Message, MessageStatus
from rules_engine.models import Event, Subscriber
from tenants.models import ApiScope, Tenant
from tests.conftest import ApiClient

pytestmark = pytest.mark.django_db

URL = "/api/v1/messages"


@pytest.fixture
def reader_a(api_client_for: Callable[..., ApiClient], tenant_a: Tenant) -> ApiClient:
    return api_client_for(tenant_a, scopes=[ApiScope.MESSAGES_READ])


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:herald:problem:{slug}"
    return body


class Data:
    """Rows of one tenant, made inside its schema."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.now = timezone.now()

    def event(self, key: str = "order.shipped") -> Event:
        with tenant_context(self.tenant):
            return Event.objects.create(event_type_key=key)

    def subscriber(self, external_id: str) -> Subscriber:
        with tenant_context(self.tenant):
            return Subscriber.objects.create(external_id=external_id)

    def message(
        self,
        *,
        event: Event,
        subscriber: Subscriber | None = None,
        channel: str = Channel.EMAIL,
        status: str = MessageStatus.QUEUED,
        age_seconds: float = 0,
        content: dict[str, Any] | None = None,
    ) -> Message:
        with tenant_context(self.tenant):
            return Message.objects.create(
                event=event,
                subscriber=subscriber,
                channel=channel,
                status=status,
                content=content or {"subject": "Hello"},
                created_at=self.now - timedelta(seconds=age_seconds),
            )


def same_instant(text: str | None, moment: datetime | None) -> bool:
    """The API writes times to the millisecond (Django's JSON encoder)."""
    if text is None or moment is None:
        return text is None and moment is None
    return abs(datetime.fromisoformat(text) - moment) < timedelta(milliseconds=1)


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["items"]]


def test_list_is_newest_first_with_every_field(reader_a: ApiClient, tenant_a: Tenant) -> None:
    data = Data(tenant_a)
    event = data.event()
    ada = data.subscriber("ada")
    older = data.message(event=event, subscriber=ada, age_seconds=10, content={"subject": "Hi"})
    newer = data.message(event=event, subscriber=None, channel=Channel.SMS)

    response = reader_a.get(URL)
    assert response.status_code == 200
    body = response.json()
    assert body["next_cursor"] is None
    assert [item["id"] for item in body["items"]] == [str(newer.id), str(older.id)]
    item = body["items"][1]
    assert item["event_id"] == str(event.id)
    assert item["subscriber_id"] == "ada"
    assert item["channel"] == "email"
    assert item["status"] == "queued"
    assert item["content"] == {"subject": "Hi"}
    assert same_instant(item["created_at"], older.created_at)
    assert same_instant(item["updated_at"], older.updated_at)
    assert body["items"][0]["subscriber_id"] is None


def test_filters(reader_a: ApiClient, tenant_a: Tenant) -> None:
    data = Data(tenant_a)
    shipped, refunded = data.event("order.shipped"), data.event("order.refunded")
    ada, bob = data.subscriber("ada"), data.subscriber("bob")
    ada_email = data.message(event=shipped, subscriber=ada, age_seconds=4)
    ada_sms = data.message(
        event=shipped, subscriber=ada, channel=Channel.SMS, status=MessageStatus.SENT, age_seconds=3
    )
    bob_email = data.message(
        event=refunded, subscriber=bob, status=MessageStatus.FAILED, age_seconds=2
    )
    bob_push = data.message(
        event=refunded, subscriber=bob, channel=Channel.PUSH, status=MessageStatus.SENT
    )

    def listed(**params: str) -> set[str]:
        return set(ids(reader_a.get(URL, params)))

    assert listed(subscriber="ada") == {str(ada_email.id), str(ada_sms.id)}
    assert listed(status="sent") == {str(ada_sms.id), str(bob_push.id)}
    assert listed(channel="email") == {str(ada_email.id), str(bob_email.id)}
    assert listed(event=str(refunded.id)) == {str(bob_email.id), str(bob_push.id)}
    assert listed(subscriber="bob", status="sent", channel="push") == {str(bob_push.id)}
    assert listed(subscriber="bob", channel="sms") == set()
    assert listed(subscriber="nobody") == set()
    assert listed(event=str(uuid.uuid4())) == set()


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"status": "lost"}, "status"),
        ({"channel": "pigeon"}, "channel"),
        ({"event": "not-a-uuid"}, "event"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_invalid_filters_are_422_naming_the_parameter(
    reader_a: ApiClient, params: dict[str, str], parameter: str
) -> None:
    body = assert_problem(reader_a.get(URL, params), 422, "validation-failed")
    assert len(body["errors"]) == 1
    assert body["errors"][0]["pointer"].endswith(f"/{parameter}")
    assert parameter in body["detail"]


def test_invalid_cursor_is_a_problem(reader_a: ApiClient) -> None:
    assert_problem(reader_a.get(URL, {"cursor": "garbage!"}), 400, "invalid-cursor")


def test_cursor_pagination_visits_every_message_once(reader_a: ApiClient, tenant_a: Tenant) -> None:
    data = Data(tenant_a)
    event = data.event()
    # Two share a timestamp: the page boundary falls between them.
    ages = [5, 4, 3, 3, 2, 1, 0]
    made = [data.message(event=event, age_seconds=age) for age in ages]
    expected = [
        str(m.id) for m in sorted(made, key=lambda m: (m.created_at, m.id.hex), reverse=True)
    ]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "3", "event": str(event.id)}
        if cursor:
            params["cursor"] = cursor
        body = reader_a.get(URL, params).json()
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages == 3


def test_detail_has_the_attempt_timeline(reader_a: ApiClient, tenant_a: Tenant) -> None:
    data = Data(tenant_a)
    event = data.event()
    message = data.message(
        event=event, subscriber=data.subscriber("ada"), status=MessageStatus.DELIVERED
    )
    start = timezone.now()
    with tenant_context(tenant_a):
        # Written out of order: the timeline is ordered by started_at.
        second = DeliveryAttempt.objects.create(
            message=message,
            provider="smtp",
            started_at=start,
            finished_at=start + timedelta(milliseconds=120),
            outcome=AttemptOutcome.ACCEPTED,
            response_status=250,
            response_excerpt="250 OK queued",
            latency_ms=120,
        )
        first = DeliveryAttempt.objects.create(
            message=message,
            provider="ses",
            started_at=start - timedelta(minutes=5),
            finished_at=None,
            outcome=AttemptOutcome.RETRYABLE,
            response_status=None,
            error="connection timed out",
        )

    response = reader_a.get(f"{URL}/{message.id}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == str(message.id)
    assert body["event_id"] == str(event.id)
    assert body["subscriber_id"] == "ada"
    assert body["status"] == "delivered"
    assert body["channel"] == "email"
    assert body["content"] == {"subject": "Hello"}
    assert same_instant(body["created_at"], message.created_at)
    assert same_instant(body["updated_at"], message.updated_at)
    assert body["attempts"] == [
        {
            "provider": "ses",
            "started_at": body["attempts"][0]["started_at"],
            "finished_at": None,
            "outcome": "retryable",
            "response_status": None,
            "response_excerpt": "",
            "error": "connection timed out",
            "latency_ms": None,
        },
        {
            "provider": "smtp",
            "started_at": body["attempts"][1]["started_at"],
            "finished_at": body["attempts"][1]["finished_at"],
            "outcome": "accepted",
            "response_status": 250,
            "response_excerpt": "250 OK queued",
            "error": "",
            "latency_ms": 120,
        },
    ]
    assert same_instant(body["attempts"][0]["started_at"], first.started_at)
    assert same_instant(body["attempts"][1]["started_at"], second.started_at)
    assert same_instant(body["attempts"][1]["finished_at"], second.finished_at)


def test_detail_of_an_erased_subscriber_is_null(reader_a: ApiClient, tenant_a: Tenant) -> None:
    data = Data(tenant_a)
    message = data.message(event=data.event())
    body = reader_a.get(f"{URL}/{message.id}").json()
    assert body["subscriber_id"] is None
    assert body["attempts"] == []


@pytest.mark.parametrize("message_id", ["not-a-uuid", "12345", str(uuid.uuid4())])
def test_unknown_or_malformed_id_is_404(reader_a: ApiClient, message_id: str) -> None:
    assert_problem(reader_a.get(f"{URL}/{message_id}"), 404, "not-found")


@pytest.mark.parametrize("scopes", [[ApiScope.EVENTS_WRITE], [ApiScope.SUBSCRIBERS_WRITE]])
def test_messages_need_the_messages_read_scope(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, scopes: list[str]
) -> None:
    message = Data(tenant_a).message(event=Data(tenant_a).event())
    client = api_client_for(tenant_a, scopes=scopes)
    body = assert_problem(client.get(URL), 403, "insufficient-scope")
    assert body["required_scope"] == "messages:read"
    assert_problem(client.get(f"{URL}/{message.id}"), 403, "insufficient-scope")


def test_admin_key_reads_messages(api_a: ApiClient, tenant_a: Tenant) -> None:
    message = Data(tenant_a).message(event=Data(tenant_a).event())
    assert str(message.id) in ids(api_a.get(URL))
    assert api_a.get(f"{URL}/{message.id}").status_code == 200


def test_another_tenants_messages_are_invisible(
    api_client_for: Callable[..., ApiClient], tenant_a: Tenant, tenant_b: Tenant
) -> None:
    data_a, data_b = Data(tenant_a), Data(tenant_b)
    message_a = data_a.message(event=data_a.event(), subscriber=data_a.subscriber("shared-id"))
    message_b = data_b.message(event=data_b.event(), subscriber=data_b.subscriber("shared-id"))
    reader_b = api_client_for(tenant_b, scopes=[ApiScope.MESSAGES_READ])

    assert_problem(reader_b.get(f"{URL}/{message_a.id}"), 404, "not-found")
    listed = ids(reader_b.get(URL, {"limit": "200"}))
    assert str(message_a.id) not in listed
    assert str(message_b.id) in listed
    assert ids(reader_b.get(URL, {"subscriber": "shared-id"})) == [str(message_b.id)]
    assert ids(reader_b.get(URL, {"event": str(message_a.event_id)})) == []


def selects(captured: CaptureQueriesContext) -> int:
    """Queries other than django-tenants' per-cursor SET search_path."""
    return sum(1 for query in captured.captured_queries if not query["sql"].startswith("SET "))


def test_list_costs_a_bounded_number_of_queries(
    reader_a: ApiClient, tenant_a: Tenant, django_assert_max_num_queries: Any
) -> None:
    data = Data(tenant_a)
    events = [data.event() for _ in range(5)]
    for index in range(50):
        data.message(
            event=events[index % 5],
            subscriber=data.subscriber(f"subscriber-{index}"),
            age_seconds=index,
        )
    assert reader_a.get(URL).status_code == 200  # the key is warm from here on

    with django_assert_max_num_queries(4) as captured:
        response = reader_a.get(URL, {"limit": "50"})
    assert selects(captured) == 1  # messages JOIN subscribers
    items = response.json()["items"]
    assert len(items) == 50
    assert {item["subscriber_id"] for item in items} == {f"subscriber-{i}" for i in range(50)}

    message_id = items[0]["id"]
    with django_assert_max_num_queries(4) as captured:
        assert reader_a.get(f"{URL}/{message_id}").status_code == 200
    assert selects(captured) == 2  # the message JOIN its subscriber; its attempts
