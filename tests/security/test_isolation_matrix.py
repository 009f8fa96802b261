"""Tenant isolation, proven operation by operation: beta's credentials never reach alpha's rows.

Alpha (tenant A) gets one object of every kind the API and the dashboard name,
each carrying the word ``alphaonly`` somewhere only A's own reads would show
(a name, an e-mail address, a payload value, a template subject...). Beta
(tenant B) then calls:

* every operation of the OpenAPI document, read from the app when the test
  runs, so an endpoint added later is covered without touching this file; an
  operation whose path names a parameter this file can not fill fails the test;
* every change page of every ModelAdmin on the tenant dashboard site;
* the inbox API and the inbox WebSocket, with B's subscriber hash.

B's answer must be a 404 problem (or, in the dashboard, 404 or a redirect away)
and must contain none of A's marker strings, A's secrets or the ids of A's
other rows. Finally A's objects are read back with A's key and must be exactly
as they were: B's writes (PATCH, DELETE, replay, rotate) changed nothing of A's.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.catalogue import Channel
from channels_delivery.consumers import CLOSE_UNAUTHORIZED
from channels_delivery.inbox_auth import inbox_secret_get, subscriber_hash
from channels_delivery.models import (
    AttemptOutcome,
    DeliveryAttempt,
    Integration,
    Message,
    MessageStatus,
    WebhookEndpoint,
)
from channels_delivery.routing import websocket_urlpatterns
from dashboard.sites import tenant_admin_site
from rules_engine.models import Event, EventType, Layout, Rule, Subscriber, Template, Topic
from tenants.models import ApiKey, Tenant
from tests.conftest import TENANT_PASSWORD, ApiClient

pytestmark = pytest.mark.django_db

OPENAPI_URL = "/api/v1/openapi.json"
INBOX_PREFIX = "/api/v1/inbox/messages"
MARKER = "alphaonly"
PROBLEM_JSON = "application/problem+json"
HTTP_METHODS = ("get", "put", "post", "patch", "delete")
TRACKING_TOKEN = re.compile(rb"/hooks/esp/[^/\"]+/")

# Bodies for operations whose request is validated before the object is looked
# up: a valid body, so the 404 (or its absence) is about the object, not the body.
BODIES: dict[str, dict[str, Any]] = {
    "PUT /api/v1/subscribers/{external_id}": {"email": "bob@example.org", "name": "Bob"},
    "PUT /api/v1/subscribers/{external_id}/preferences": {
        "preferences": [{"channel": "email", "enabled": False}]
    },
    "POST /api/v1/topics/{key}/subscribers": {"subscribers": ["ada-a"]},
    "POST /api/v1/topics/{key}/subscribers/remove": {"subscribers": ["ada-a"]},
    "PUT /api/v1/event-types/{key}": {"name": "Beta's own"},
    "PUT /api/v1/layouts/{key}": {"html": "<div>{{ content }}</div>"},
    "PATCH /api/v1/rules/{rule_id}": {"name": "Renamed by beta"},
    "POST /api/v1/rules/{rule_id}/test": {"payload": {}},
    "PATCH /api/v1/templates/{key}": {"variants": {"en": {"subject": "x", "html": "<p>x</p>"}}},
    "PATCH /api/v1/integrations/{integration_id}": {"name": "Renamed by beta"},
    "PATCH /api/v1/webhook-endpoints/{endpoint_id}": {"description": "Renamed by beta"},
    "POST /api/v1/webhook-endpoints/{endpoint_id}/rotate-secret": {},
    "POST /api/v1/webhook-endpoints/{endpoint_id}/replay": {"since": "REPLAY_SINCE"},
}


@dataclass(frozen=True, kw_only=True)
class Alpha:
    """A's objects: what fills a path parameter, and what must never reach B."""

    ids: dict[str, str]  # path parameter name -> value naming one of A's objects
    secrets: tuple[str, ...]  # A's inbox secret, webhook secret, API key
    uuids: tuple[str, ...]  # ids of A's rows that B's requests never name

    def leaks(self, body: str, *, asked: str = "") -> list[str]:
        """A's strings found in ``body`` that are not simply an echo of ``asked``."""
        found = [MARKER] if MARKER in body.lower() else []
        found += [secret for secret in self.secrets if secret in body]
        found += [uuid for uuid in self.uuids if uuid in body and uuid not in asked]
        return found


def _send(client: Client, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = getattr(client, method)(path, body, content_type="application/json")
    assert response.status_code < 300, (method, path, response.content)
    result: dict[str, Any] = response.json() if response.content else {}
    return result


@pytest.fixture
def alpha(api_a: ApiClient, tenant_a: Tenant) -> Alpha:
    """One of everything in A, marked, made through the API where it can be."""
    _send(
        api_a,
        "put",
        "/api/v1/subscribers/ada-a",
        {"email": f"ada.{MARKER}@example.com", "name": f"Ada {MARKER}"},
    )
    _send(api_a, "post", "/api/v1/topics", {"key": "seed.watchers", "name": f"{MARKER} topic"})
    _send(api_a, "post", "/api/v1/topics/seed.watchers/subscribers", {"subscribers": ["ada-a"]})
    event_id = _send(
        api_a,
        "post",
        "/api/v1/events",
        {"event": "seed.sent", "to": ["ada-a"], "payload": {"note": f"{MARKER} payload"}},
    )["id"]
    _send(api_a, "put", "/api/v1/event-types/seed.watchers", {"name": f"{MARKER} type"})
    _send(
        api_a, "put", "/api/v1/layouts/seed.watchers", {"html": f"<div>{MARKER} {{{{ content }}}}"}
    )
    email = {"subject": f"{MARKER} subject", "html": f"<p>{MARKER} body</p>"}
    _send(
        api_a,
        "post",
        "/api/v1/templates",
        {"key": "seed.watchers", "channel": "email", "variants": {"en": email}},
    )
    rule_id = _send(
        api_a,
        "post",
        "/api/v1/rules",
        {
            "name": f"{MARKER} rule",
            "event_type": "seed.watchers",
            "actions": [{"channel": "email", "template": "seed.watchers"}],
            "recipients": {"kind": "topic", "topic": "seed.watchers"},
        },
    )["id"]
    integration_id = _send(
        api_a,
        "post",
        "/api/v1/integrations",
        {
            "channel": "email",
            "provider": "anymail",  # an ESP: it has a tracking webhook to read too
            "name": f"{MARKER} ESP",
            "config": {
                "esp": "postmark",
                "api_key": f"pm-{MARKER}-token-7f3a9c2e51",
                "from_email": "Alpha <no-reply@alpha.example>",
            },
        },
    )["id"]
    tracking = _send(api_a, "get", f"/api/v1/integrations/{integration_id}/tracking-webhook", {})
    endpoint = _send(
        api_a,
        "post",
        "/api/v1/webhook-endpoints",
        {
            "url": f"https://93.184.216.34/{MARKER}",
            "description": f"{MARKER} endpoint",
            "event_types": ["seed.watchers"],
        },
    )
    endpoint_secret = _send(api_a, "get", f"/api/v1/webhook-endpoints/{endpoint['id']}/secret", {})
    with tenant_context(tenant_a):
        event = Event.objects.get(pk=event_id)
        ada = Subscriber.objects.get(external_id="ada-a")
        email_message = Message.objects.create(
            event=event,
            subscriber=ada,
            channel=Channel.EMAIL,
            status=MessageStatus.DELIVERED,
            content={"subject": f"{MARKER} message"},
        )
        in_app = Message.objects.create(
            event=event,
            subscriber=ada,
            channel=Channel.IN_APP,
            status=MessageStatus.DELIVERED,
            content={"title": f"{MARKER} inbox", "body": "Hi", "action_url": "https://a.test/"},
        )
        failed = Message.objects.create(
            event=event,
            subscriber=ada,
            channel=Channel.WEBHOOK,
            status=MessageStatus.FAILED,
            failed_at=timezone.now(),
            content={"body": {"note": MARKER}},
        )
        DeliveryAttempt.objects.create(
            message=failed,
            provider="webhook",
            outcome=AttemptOutcome.PERMANENT,
            response_status=400,
            provider_message_id=f"endpoint:{endpoint['id']}",
        )
        inbox_secret = inbox_secret_get().secret
    uuids = (str(event_id), str(email_message.id), str(in_app.id), str(failed.id))
    return Alpha(
        ids={
            "event_id": str(event_id),
            "external_id": "ada-a",
            "key": "seed.watchers",
            "message_id": str(email_message.id),
            "inbox_message_id": str(in_app.id),
            "replayable_message_id": str(failed.id),
            "rule_id": str(rule_id),
            "version": "1",
            "integration_id": str(integration_id),
            "endpoint_id": str(endpoint["id"]),
        },
        secrets=tuple(
            secret
            for secret in (
                inbox_secret,
                tracking["password"],
                *map(str, endpoint_secret.values()),
                api_a.token,
            )
            if len(secret) >= 16
        ),
        uuids=tuple(uuid for uuid in uuids if len(uuid) >= 16),
    )


def _operations(client: Client) -> list[tuple[str, str, dict[str, Any]]]:
    response = client.get(OPENAPI_URL)
    assert response.status_code == 200, response.content
    document: dict[str, Any] = response.json()
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def _filled(method: str, path: str, ids: dict[str, str]) -> str:
    """``path`` with A's ids; fails on a parameter this matrix does not know."""
    if path.startswith(INBOX_PREFIX):
        ids = {**ids, "message_id": ids["inbox_message_id"]}
    elif path.endswith("/replay") and path.startswith("/api/v1/messages/"):
        ids = {**ids, "message_id": ids["replayable_message_id"]}
    unknown = [name for name in re.findall(r"{([^}]+)}", path) if name not in ids]
    assert not unknown, (
        f"{method} {path}: the isolation matrix can not fill {unknown}; create the object in "
        "the alpha fixture and add its id to Alpha.ids"
    )
    return re.sub(r"{([^}]+)}", lambda match: ids[match.group(1)], path)


def _read_back(
    api_a: ApiClient, operations: list[tuple[str, str, dict[str, Any]]], alpha: Alpha
) -> dict[str, tuple[int, bytes]]:
    """Everything A's key can read, to compare before and after B's calls."""
    seen: dict[str, tuple[int, bytes]] = {}
    for method, path, _ in operations:
        # A's objects by id; lists and stats hold times relative to now.
        if method != "GET" or "{" not in path or path.startswith(INBOX_PREFIX):
            continue
        url = _filled(method, path, alpha.ids)
        response = api_a.get(url)
        # The ESP tracking hook's URL carries a token signed with the time of reading.
        content = TRACKING_TOKEN.sub(b"/hooks/esp/<token>/", response.content)
        if path.endswith("/tracking-webhook"):
            content = b""  # derived from that token (its password too): not stored data
        seen[url] = (response.status_code, content)
    return seen


def _inbox_client(tenant: Tenant, external_id: str, *, signed_by: Tenant | None = None) -> Client:
    with tenant_context(signed_by or tenant):
        signature = subscriber_hash(secret=inbox_secret_get().secret, external_id=external_id)
    return Client(
        headers={
            "X-Herald-Tenant": tenant.slug,
            "X-Herald-Subscriber": external_id,
            "X-Herald-Subscriber-Hash": signature,
        }
    )


def test_every_api_operation_refuses_tenant_b_with_a_404_and_no_data(
    alpha: Alpha, api_a: ApiClient, api_b: ApiClient, tenant_b: Tenant
) -> None:
    operations = _operations(api_b)
    assert len(operations) >= 60, "the document lost operations"
    before = _read_back(api_a, operations, alpha)
    # The ids are right: A's own key reads every one of them.
    assert {url: status for url, (status, _) in before.items() if status != 200} == {}
    with tenant_context(tenant_b):
        Subscriber.objects.create(external_id="bob-b")
    beta_inbox = _inbox_client(tenant_b, "bob-b")
    replay_since = (timezone.now() - timedelta(days=1)).isoformat()
    problems: list[str] = []
    checked_by_id = 0
    for method, path, operation in operations:
        label = f"{method} {path}"
        url = _filled(method, path, alpha.ids)
        body = {
            name: (replay_since if value == "REPLAY_SINCE" else value)
            for name, value in BODIES.get(label, {}).items()
        }
        client = beta_inbox if path.startswith(INBOX_PREFIX) else api_b
        with transaction.atomic():
            # Rolled back: B's upsert of a key must not make B's next call find B's own row.
            response = getattr(client, method.lower())(url, body, content_type="application/json")
            transaction.set_rollback(True)
        text = response.content.decode(errors="replace")
        leaks = alpha.leaks(text, asked=url)
        if leaks:
            problems.append(f"{label}: B's answer contains A's {leaks}")
        if response.status_code >= 500:
            problems.append(f"{label}: {response.status_code}")
        if "{" not in path:
            if method == "GET" and response.status_code != 200:
                problems.append(f"{label}: B's list answered {response.status_code}: {text}")
            continue
        if "404" not in operation["responses"]:
            # An upsert by key (PUT): B gets its own object under that key, A's is untouched.
            if response.status_code >= 300:
                problems.append(f"{label}: B's upsert answered {response.status_code}: {text}")
            continue
        checked_by_id += 1
        if response.status_code != 404:
            problems.append(f"{label}: B got {response.status_code}, not 404: {text[:300]}")
        elif response["Content-Type"] != PROBLEM_JSON or response.json().get("status") != 404:
            problems.append(f"{label}: the 404 is not problem+json: {text[:300]}")
    assert not problems, "\n".join(problems)
    assert checked_by_id >= 40
    assert _read_back(api_a, operations, alpha) == before, "B's calls changed A's objects"


def test_b_lists_contain_none_of_a_even_with_a_filters(alpha: Alpha, api_b: ApiClient) -> None:
    """Filters naming A's rows (subscriber, event) find nothing in B's lists."""
    for url in (
        f"/api/v1/messages?subscriber={alpha.ids['external_id']}",
        f"/api/v1/messages?event={alpha.ids['event_id']}",
        f"/api/v1/subscribers?email=ada.{MARKER}@example.com",
        "/api/v1/rules?event_type=seed.watchers",
    ):
        response = api_b.get(url)
        assert response.status_code in (200, 404), (url, response.content)
        assert not alpha.leaks(response.content.decode(), asked=url), url
        if response.status_code == 200:
            assert response.json()["items"] == [], url


# --- the inbox: subscriber hashes are per tenant -------------------------------------------


def test_an_inbox_hash_signed_by_b_does_not_open_a_subscriber_of_a(
    alpha: Alpha, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    # B's secret signing A's subscriber id, presented to A: a forged hash.
    forged = _inbox_client(tenant_a, "ada-a", signed_by=tenant_b)
    response = forged.get(INBOX_PREFIX)
    assert response.status_code == 401, response.content
    assert response["Content-Type"] == PROBLEM_JSON
    assert not alpha.leaks(response.content.decode())
    url = f"{INBOX_PREFIX}/{alpha.ids['inbox_message_id']}/read"
    assert forged.post(url).status_code == 401
    # A's own hash still works, so the 401 above is about the signer, not the setup.
    genuine = _inbox_client(tenant_a, "ada-a")
    assert MARKER in genuine.get(INBOX_PREFIX).content.decode()


def test_an_inbox_hash_of_b_presented_as_a_is_refused(alpha: Alpha, tenant_a: Tenant) -> None:
    with tenant_context(Tenant.objects.get(slug="beta")):
        Subscriber.objects.create(external_id="ada-a")  # same external id in B
        beta_hash = subscriber_hash(secret=inbox_secret_get().secret, external_id="ada-a")
    client = Client(
        headers={
            "X-Herald-Tenant": tenant_a.slug,
            "X-Herald-Subscriber": "ada-a",
            "X-Herald-Subscriber-Hash": beta_hash,
        }
    )
    response = client.get(INBOX_PREFIX)
    assert response.status_code == 401, response.content
    assert not alpha.leaks(response.content.decode())


# --- the inbox WebSocket ----------------------------------------------------------------


@pytest.fixture
def _websocket_ready(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A layer per test, and the consumer's queries in the test's transaction
    (as tests/channels_delivery/test_consumers.py does)."""
    channel_layers.backends.clear()
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)
    yield
    channel_layers.backends.clear()


def _socket_answer(query: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    application = URLRouter(websocket_urlpatterns)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        socket = WebsocketCommunicator(application, f"/ws/inbox?{urlencode(query)}")
        await socket.connect()
        first = await socket.receive_output(timeout=5)
        closed = (
            first if first["type"] == "websocket.close" else await socket.receive_output(timeout=5)
        )
        await socket.disconnect()
        return first, closed

    answer: tuple[dict[str, Any], dict[str, Any]] = async_to_sync(scenario)()
    return answer


@pytest.mark.usefixtures("_websocket_ready")
@pytest.mark.parametrize("who", ["b-signs-a-subscriber", "b-subscriber-claims-a"])
def test_the_inbox_websocket_refuses_b_credentials_for_a(
    alpha: Alpha, tenant_a: Tenant, tenant_b: Tenant, who: str
) -> None:
    with tenant_context(tenant_b):
        Subscriber.objects.create(external_id="bob-b")
        secret = inbox_secret_get().secret
    subscriber = "ada-a" if who == "b-signs-a-subscriber" else "bob-b"
    query = {
        "tenant": tenant_a.slug,
        "subscriber": subscriber,
        "hash": subscriber_hash(secret=secret, external_id=subscriber),
    }
    first, closed = _socket_answer(query)
    assert closed["type"] == "websocket.close"
    assert closed["code"] == CLOSE_UNAUTHORIZED
    assert not alpha.leaks(str(first)), first


@pytest.mark.usefixtures("_websocket_ready")
def test_the_inbox_websocket_opens_for_a_own_hash(alpha: Alpha, tenant_a: Tenant) -> None:
    """The refusals above are about B's credentials: A's own are accepted."""
    application = URLRouter(websocket_urlpatterns)
    with tenant_context(tenant_a):
        signature = subscriber_hash(secret=inbox_secret_get().secret, external_id="ada-a")
    query = urlencode({"tenant": tenant_a.slug, "subscriber": "ada-a", "hash": signature})

    async def scenario() -> bool:
        socket = WebsocketCommunicator(application, f"/ws/inbox?{query}")
        connected, _ = await socket.connect()
        await socket.disconnect()
        return bool(connected)

    assert async_to_sync(scenario)()


# --- the dashboard --------------------------------------------------------------------------


def _admin_client(slug: str) -> Client:
    client = Client(HTTP_HOST=f"{slug}.localhost")
    response = client.post(
        "/admin/login/", {"username": f"admin@{slug}.example.com", "password": TENANT_PASSWORD}
    )
    assert response.status_code == 302, "login failed"
    return client


def _alpha_rows(tenant_a: Tenant) -> dict[type[models.Model], models.Model]:
    """One of A's rows per model the tenant dashboard registers, marked where it can be."""
    with tenant_context(tenant_a):
        user = get_user_model().objects.create_user(
            username=f"{MARKER}@example.com", email=f"{MARKER}@example.com", password="x" * 20
        )
        rows: dict[type[models.Model], models.Model] = {
            Subscriber: Subscriber.objects.get(external_id="ada-a"),
            Topic: Topic.objects.get(key="seed.watchers"),
            Integration: Integration.objects.get(name=f"{MARKER} ESP"),
            WebhookEndpoint: WebhookEndpoint.objects.get(description=f"{MARKER} endpoint"),
            Event: Event.objects.filter(event_type_key="seed.sent").get(),
            Message: Message.objects.filter(channel=Channel.EMAIL).get(),
            EventType: EventType.objects.get(key="seed.watchers"),
            Rule: Rule.objects.get(name=f"{MARKER} rule"),
            Template: Template.objects.get(key="seed.watchers"),
            Layout: Layout.objects.get(key="seed.watchers"),
            Group: Group.objects.create(name=f"{MARKER} role"),
            get_user_model(): user,
        }
    rows[ApiKey] = ApiKey.objects.filter(tenant=tenant_a).latest("pk")
    return rows


def test_every_dashboard_change_page_refuses_b_admin(
    alpha: Alpha, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    rows = _alpha_rows(tenant_a)
    beta = _admin_client("beta")
    unknown = [model for model in tenant_admin_site._registry if model not in rows]
    assert not unknown, f"no alpha row for these dashboard models: {unknown}; add one"
    alpha_admin = _admin_client("alpha")
    problems: list[str] = []
    for model in tenant_admin_site._registry:
        row = rows[model]
        meta = model._meta
        prefix = f"/admin/{meta.app_label}/{meta.model_name}"
        own = alpha_admin.get(f"{prefix}/{row.pk}/change/")
        assert own.status_code == 200, f"A's admin can not open {prefix}/{row.pk}/change/"
        with tenant_context(tenant_b):
            b_has_same_pk = model._default_manager.filter(pk=row.pk).exists()
        for url in (f"{prefix}/", f"{prefix}/{row.pk}/change/", f"{prefix}/{row.pk}/delete/"):
            # Followed, so the "doesn't exist" flash (an echo of B's own URL) is shown
            # on this request's final page, where ``asked`` excuses it.
            response = beta.get(url, follow=True)
            text = response.content.decode(errors="replace")
            leaks = alpha.leaks(text, asked=url)
            if leaks:
                problems.append(f"{url}: B's admin sees A's {leaks}")
            if url == f"{prefix}/":
                if response.status_code != 200:
                    problems.append(f"{url}: B's changelist answered {response.status_code}")
            elif b_has_same_pk:
                continue  # a per-schema pk B also has: B sees its own row, no marker above
            elif not response.redirect_chain and response.status_code not in (403, 404):
                # 403: the delete permission is refused before the row is looked up.
                problems.append(f"{url}: B's admin got {response.status_code}, not 404/redirect")
        with tenant_context(tenant_a):
            assert model._default_manager.filter(pk=row.pk).exists(), f"A's {model} row vanished"
    assert not problems, "\n".join(problems)


def test_b_admin_can_not_post_changes_to_a_rows(alpha: Alpha, tenant_a: Tenant) -> None:
    rows = _alpha_rows(tenant_a)
    beta = _admin_client("beta")
    with tenant_context(tenant_a):
        before = Rule.objects.values().get(pk=rows[Rule].pk)
    response = beta.post(f"/admin/rules_engine/rule/{rows[Rule].pk}/delete/", {"post": "yes"})
    assert response.status_code in (302, 404)
    response = beta.post(
        f"/admin/channels_delivery/integration/{rows[Integration].pk}/change/",
        {"name": "renamed by beta"},
    )
    assert response.status_code in (302, 404)
    with tenant_context(tenant_a):
        assert Rule.objects.values().get(pk=rows[Rule].pk) == before
        assert Integration.objects.get(pk=rows[Integration].pk).name == f"{MARKER} ESP"
