"""Guards at the edge: CSRF on the dashboard's forms, a limit on failed API key
lookups per client, and hostile JSON bodies that must end in a 4xx problem,
never a server error."""

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.middleware.csrf import get_token
from django.test import Client
from django_tenants.utils import tenant_context

from herald.limits import api_key_failures_key, client_address, limits_redis
from herald.problems import PROBLEM_CONTENT_TYPE
from rules_engine.models import Event, EventType
from tenants.models import Tenant
from tests.conftest import TENANT_PASSWORD, ApiClient
from tests.factories import api_key_issue

pytestmark = pytest.mark.django_db

CLIENT_IP = "203.0.113.7"
OTHER_IP = "203.0.113.8"
EVENTS_URL = "/api/v1/events"


def problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith(PROBLEM_CONTENT_TYPE)
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"].endswith(slug), body
    assert body["status"] == status
    return body


# --- CSRF ------------------------------------------------------------------------------


def csrf_client(slug: str) -> Client:
    return Client(enforce_csrf_checks=True, HTTP_HOST=f"{slug}.localhost")


def login_form(slug: str) -> dict[str, str]:
    return {"username": f"admin@{slug}.example.com", "password": TENANT_PASSWORD}


def test_the_tenant_login_refuses_a_post_without_the_csrf_token(tenant_a: Tenant) -> None:
    client = csrf_client("alpha")
    response = client.post("/admin/login/", login_form("alpha"))
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_the_tenant_login_accepts_the_csrf_token_it_handed_out(tenant_a: Tenant) -> None:
    client = csrf_client("alpha")
    page = client.get("/admin/login/")
    assert page.status_code == 200
    token = page.context["csrf_token"]
    response = client.post("/admin/login/", {**login_form("alpha"), "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert client.session["_auth_user_id"]


def logged_in_csrf_client(slug: str) -> tuple[Client, str]:
    client = csrf_client(slug)
    token = client.get("/admin/login/").context["csrf_token"]
    response = client.post("/admin/login/", {**login_form(slug), "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    # Login rotates the token; the change form hands out the current one.
    return client, token


def test_a_change_form_refuses_a_post_without_the_csrf_token(tenant_a: Tenant) -> None:
    with tenant_context(tenant_a):
        event_type = EventType.objects.create(key="csrf.probe", description="before")
    client, _ = logged_in_csrf_client("alpha")
    url = f"/admin/rules_engine/eventtype/{event_type.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    form = {"key": "csrf.probe", "description": "after", "_save": "Save"}

    refused = client.post(url, form)
    assert refused.status_code == 403
    with tenant_context(tenant_a):
        assert EventType.objects.get(pk=event_type.pk).description == "before"

    # A token from another session is no better than none.
    stranger = csrf_client("alpha")
    foreign = get_token(stranger.get("/admin/login/").wsgi_request)
    assert client.post(url, {**form, "csrfmiddlewaretoken": foreign}).status_code == 403
    with tenant_context(tenant_a):
        assert EventType.objects.get(pk=event_type.pk).description == "before"


def test_csrf_is_enforced_by_the_middleware_for_every_dashboard_form() -> None:
    """The check is not per view: it is Django's middleware, and nothing exempts the admin."""
    assert "django.middleware.csrf.CsrfViewMiddleware" in django_settings.MIDDLEWARE


# --- failed API keys per client ----------------------------------------------------------


@pytest.fixture
def failure_counters() -> Iterator[None]:
    """The counters live in Redis, outside the rolled-back transaction."""
    keys = [api_key_failures_key(CLIENT_IP), api_key_failures_key(OTHER_IP)]
    limits_redis().delete(*keys)
    yield
    limits_redis().delete(*keys)


def wrong_key(index: int) -> str:
    return f"hk_test_{index:040d}"


@pytest.mark.rate_limited
def test_wrong_keys_from_one_client_are_refused_with_429(
    failure_counters: None, settings: Any, tenant_a: Tenant
) -> None:
    settings.HERALD_API_KEY_FAILURES_PER_MINUTE = 10
    client = Client(REMOTE_ADDR=CLIENT_IP)
    statuses = []
    for index in range(25):
        response = client.get(
            "/api/v1/event-types", headers={"Authorization": f"Bearer {wrong_key(index)}"}
        )
        statuses.append(response.status_code)
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429] * 15
    body = problem(response, 429, "too-many-failed-keys")
    assert "10 failed API key" in body["detail"]
    assert 1 <= int(response["Retry-After"]) <= 60

    # A correct key that no process has seen yet is not even looked up: a guess
    # that happens to be right is refused like the wrong ones.
    valid = api_key_issue(tenant=tenant_a).token
    blocked = client.get("/api/v1/event-types", headers={"Authorization": f"Bearer {valid}"})
    problem(blocked, 429, "too-many-failed-keys")

    # Other clients are not affected.
    other = Client(REMOTE_ADDR=OTHER_IP)
    ok = other.get("/api/v1/event-types", headers={"Authorization": f"Bearer {valid}"})
    assert ok.status_code == 200
    assert (
        other.get(
            "/api/v1/event-types", headers={"Authorization": f"Bearer {wrong_key(99)}"}
        ).status_code
        == 401
    )


@pytest.mark.rate_limited
def test_missing_and_malformed_keys_count_as_failures(
    failure_counters: None, settings: Any
) -> None:
    settings.HERALD_API_KEY_FAILURES_PER_MINUTE = 3
    client = Client(REMOTE_ADDR=CLIENT_IP)
    assert client.get("/api/v1/event-types").status_code == 401
    assert (
        client.get("/api/v1/event-types", headers={"Authorization": "Bearer x"}).status_code == 401
    )
    assert (
        client.get("/api/v1/event-types", headers={"Authorization": "Basic eA=="}).status_code
        == 401
    )
    problem(client.get("/api/v1/event-types"), 429, "too-many-failed-keys")


@pytest.mark.rate_limited
def test_a_key_already_in_use_keeps_working_from_a_blocked_address(
    failure_counters: None, settings: Any, api_a: ApiClient
) -> None:
    """A proxy's address may be shared: a key this process has already verified
    is not held up by another client's failures behind the same address."""
    settings.HERALD_API_KEY_FAILURES_PER_MINUTE = 2
    client = Client(REMOTE_ADDR=CLIENT_IP)
    headers = {"Authorization": f"Bearer {api_a.token}"}
    assert client.get("/api/v1/event-types", headers=headers).status_code == 200
    for index in range(3):
        client.get("/api/v1/event-types", headers={"Authorization": f"Bearer {wrong_key(index)}"})
    assert client.get("/api/v1/event-types", headers=headers).status_code == 200


@pytest.mark.rate_limited
def test_zero_turns_the_failure_limit_off(failure_counters: None, settings: Any) -> None:
    settings.HERALD_API_KEY_FAILURES_PER_MINUTE = 0
    client = Client(REMOTE_ADDR=CLIENT_IP)
    for index in range(30):
        response = client.get(
            "/api/v1/event-types", headers={"Authorization": f"Bearer {wrong_key(index)}"}
        )
        assert response.status_code == 401
    assert not limits_redis().exists(api_key_failures_key(CLIENT_IP))


PROXY_IP = "10.1.2.3"


@pytest.mark.rate_limited
def test_behind_a_trusted_proxy_each_client_has_a_budget_of_its_own(
    failure_counters: None, settings: Any
) -> None:
    """Every request comes from the proxy; its X-Forwarded-For names the client.
    What the client wrote there itself (a new address each time) does not count."""
    settings.HERALD_API_KEY_FAILURES_PER_MINUTE = 2
    settings.HERALD_TRUSTED_PROXIES = ["10.0.0.0/8"]
    proxy = Client(REMOTE_ADDR=PROXY_IP)

    def wrong_key_via_proxy(forwarded: str) -> int:
        headers = {"Authorization": "Bearer x", "X-Forwarded-For": forwarded}
        return proxy.get("/api/v1/event-types", headers=headers).status_code

    forged = [wrong_key_via_proxy(f"198.51.100.{n}, {CLIENT_IP}") for n in range(4)]
    assert forged == [401, 401, 429, 429]
    assert wrong_key_via_proxy(OTHER_IP) == 401  # another client of the same proxy


@pytest.mark.rate_limited
def test_x_forwarded_for_from_an_untrusted_peer_is_not_believed(
    failure_counters: None, settings: Any
) -> None:
    settings.HERALD_API_KEY_FAILURES_PER_MINUTE = 2
    settings.HERALD_TRUSTED_PROXIES = ["10.0.0.0/8"]
    client = Client(REMOTE_ADDR=CLIENT_IP)
    statuses = [
        client.get(
            "/api/v1/event-types",
            headers={"Authorization": "Bearer x", "X-Forwarded-For": f"198.51.100.{n}"},
        ).status_code
        for n in range(3)
    ]
    assert statuses == [401, 401, 429]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        (CLIENT_IP, "", CLIENT_IP),  # no proxy
        (CLIENT_IP, "198.51.100.1", CLIENT_IP),  # an untrusted peer's header is ignored
        (PROXY_IP, "", PROXY_IP),  # the proxy's own request
        (PROXY_IP, CLIENT_IP, CLIENT_IP),
        (PROXY_IP, f"198.51.100.1, {CLIENT_IP}", CLIENT_IP),  # the left part is forgeable
        (PROXY_IP, f"{CLIENT_IP}, 10.9.9.9", CLIENT_IP),  # two proxies in a row
        (PROXY_IP, "10.9.9.9, 10.8.8.8", "10.9.9.9"),  # a client inside the trusted range
        (PROXY_IP, "not-an-address", "not-an-address"),  # what the proxy said, as it said it
        ("2001:db8::1", "2001:db8:1::5", "2001:db8:1::5"),
    ],
)
def test_the_client_address_is_the_right_most_hop_no_trusted_proxy_added(
    settings: Any, peer: str, forwarded: str, client: str
) -> None:
    settings.HERALD_TRUSTED_PROXIES = ["10.0.0.0/8", "2001:db8::1"]
    meta = {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": forwarded}
    assert client_address(meta) == client


def test_without_trusted_proxies_the_peer_is_the_client(settings: Any) -> None:
    settings.HERALD_TRUSTED_PROXIES = []
    meta = {"REMOTE_ADDR": PROXY_IP, "HTTP_X_FORWARDED_FOR": CLIENT_IP}
    assert client_address(meta) == PROXY_IP


# --- hostile JSON to POST /events ---------------------------------------------------------


def post_raw(api: ApiClient, body: bytes) -> Any:
    return api.post(EVENTS_URL, body, content_type="application/json")


def assert_still_serving(api: ApiClient, tenant: Tenant) -> None:
    response = api.post(EVENTS_URL, {"event": "still.alive"}, content_type="application/json")
    assert response.status_code == 202, response.content
    with tenant_context(tenant):
        assert Event.objects.filter(event_type_key="still.alive").exists()


def test_a_body_over_the_limit_is_413(api_a: ApiClient, tenant_a: Tenant) -> None:
    limit = django_settings.HERALD_MAX_BODY_BYTES
    body = json.dumps({"event": "big", "payload": {"blob": "x" * limit}}).encode()
    started = time.monotonic()
    response = post_raw(api_a, body)
    body_problem = problem(response, 413, "body-too-large")
    assert body_problem["max_bytes"] == limit
    assert str(limit) in body_problem["detail"]
    assert time.monotonic() - started < 5
    assert_still_serving(api_a, tenant_a)


def test_ten_thousand_levels_of_nesting_are_refused(api_a: ApiClient, tenant_a: Tenant) -> None:
    for opener, closer in (b"[", b"]"), (b'{"a":', b"}"):
        body = b'{"event": "deep", "payload": ' + opener * 10_000 + b"1" + closer * 10_000 + b"}"
        response = post_raw(api_a, body)
        deep = problem(response, 400, "json-too-deep")
        assert deep["max_depth"] == django_settings.HERALD_MAX_JSON_DEPTH
        assert "deeper than" in deep["detail"]
    assert_still_serving(api_a, tenant_a)


def test_invalid_utf8_is_refused_naming_the_byte(api_a: ApiClient, tenant_a: Tenant) -> None:
    body = b'{"event": "bytes", "payload": {"name": "caf\xc3\x28 \xff"}}'
    response = post_raw(api_a, body)
    refused = problem(response, 400, "malformed-json")
    assert "UTF-8" in refused["detail"]
    assert refused["position"] == body.index(b"\xc3")
    assert_still_serving(api_a, tenant_a)


def test_an_integer_with_100000_digits_is_a_4xx_problem(api_a: ApiClient, tenant_a: Tenant) -> None:
    """Python refuses to convert integers past 4,300 digits (CVE-2020-10735); the
    refusal must reach the client as a 4xx, not a 500 or a hung worker."""
    body = b'{"event": "number", "payload": {"n": ' + b"9" * 100_000 + b"}}"
    started = time.monotonic()
    response = post_raw(api_a, body)
    assert 400 <= response.status_code < 500, response.content[:300]
    assert response["Content-Type"].startswith(PROBLEM_CONTENT_TYPE)
    assert time.monotonic() - started < 5
    with tenant_context(tenant_a):
        assert not Event.objects.filter(event_type_key="number").exists()
    assert_still_serving(api_a, tenant_a)


def test_an_integer_with_100000_digits_is_named_as_the_problem(api_a: ApiClient) -> None:
    body = b'{"event": "number", "payload": {"n": ' + b"9" * 100_000 + b"}}"
    refused = problem(post_raw(api_a, body), 400, "malformed-json")
    assert "digits" in refused["detail"]


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1e" + b"9" * 100_000])
def test_a_number_too_large_for_a_double_is_refused(api_a: ApiClient, number: bytes) -> None:
    """Python reads these as ±Infinity, which PostgreSQL's jsonb refuses: a 500 today."""
    body = b'{"event": "number", "payload": {"n": ' + number + b"}}"
    refused = problem(post_raw(api_a, body), 400, "malformed-json")
    assert "number" in refused["detail"].lower()


def test_a_decimal_with_100000_digits_is_refused(api_a: ApiClient) -> None:
    """Accepted today and silently rounded to a double's 17 digits."""
    body = b'{"event": "number", "payload": {"n": 1.' + b"5" * 100_000 + b"}}"
    refused = problem(post_raw(api_a, body), 400, "malformed-json")
    assert "digits" in refused["detail"]


def test_duplicate_keys_are_refused(api_a: ApiClient, tenant_a: Tenant) -> None:
    """Parsers disagree on which of two equal keys wins: a proxy or signature
    check that reads the first would see another event than Herald stores."""
    body = b'{"event": "dup.one", "event": "dup.two", "payload": {}}'
    response = post_raw(api_a, body)
    refused = problem(response, 400, "malformed-json")
    assert "duplicate" in refused["detail"].lower()
    assert "event" in refused["detail"]
