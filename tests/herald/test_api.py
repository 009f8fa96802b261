"""The API's error handling: every failure leaves as application/problem+json."""

import json
from typing import Any

import pytest
from django.test import RequestFactory

from herald.api import InsufficientScope, insufficient_scope, require_scope, unexpected_error
from herald.problems import PROBLEM_CONTENT_TYPE
from tenants.authentication import ApiKeyPrincipal
from tenants.models import Tenant


def test_unexpected_error_is_a_logged_500_problem(caplog: pytest.LogCaptureFixture) -> None:
    request = RequestFactory().get("/api/v1/me")
    response = unexpected_error(request, RuntimeError("secret internals"))
    assert response.status_code == 500
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    body = json.loads(response.content)
    assert body["type"] == "urn:herald:problem:internal-error"
    assert "secret internals" not in response.content.decode()
    assert any(record.exc_info and record.levelname == "ERROR" for record in caplog.records)


@pytest.mark.django_db
def test_scope_check(tenant_a: Tenant) -> None:
    request = RequestFactory().get("/api/v1/anything")
    request.api_key = ApiKeyPrincipal(  # type: ignore[attr-defined]
        key_id=1,
        name="k",
        prefix="hk_test_abcdefgh",
        scopes=frozenset({"events:write"}),
        expires_at=None,
        revoked_at=None,
        tenant=tenant_a,
    )
    assert require_scope(request, "events:write").key_id == 1
    with pytest.raises(InsufficientScope, match="messages:read") as refused:
        require_scope(request, "messages:read")
    response = insufficient_scope(request, refused.value)
    assert response.status_code == 403
    assert json.loads(response.content)["required_scope"] == "messages:read"

    request.api_key = ApiKeyPrincipal(  # type: ignore[attr-defined]
        key_id=2,
        name="a",
        prefix="hk_test_abcdefgi",
        scopes=frozenset({"admin"}),
        expires_at=None,
        revoked_at=None,
        tenant=tenant_a,
    )
    assert require_scope(request, "messages:read").key_id == 2


@pytest.mark.django_db
def test_openapi_documents_bearer_auth_and_problem_errors(client: Any) -> None:
    document = client.get("/api/v1/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert any(s == {"type": "http", "scheme": "bearer"} for s in schemes.values())
    send = document["paths"]["/api/v1/events"]["post"]
    assert send["security"]
    for status in ("400", "401", "403", "413", "422", "429", "500"):
        assert "application/problem+json" in send["responses"][status]["content"], status
    assert "application/json" in send["responses"]["202"]["content"]
