"""One JSON POST to a URL that belongs to the recipient, and what its answer means.

Webhook endpoints and chat incoming webhooks share this: the URL is the
address (a tenant's endpoint, a subscriber's Slack hook), not an integration's
credentials. So on top of ``sms.http_result``, the one status-code mapping, a
redirect or a 401/403 is a PERMANENT failure of this address rather than a
config error of the integration: nothing the tenant's provider settings could fix.
"""

import dataclasses

import httpx

from channels_delivery.providers.base import ProviderResult, ResultKind
from channels_delivery.providers.sms import HttpAnswer, http_result
from channels_delivery.ssrf import MAX_TIMEOUT_SECONDS, UnsafeUrl, safe_request

POST_TIMEOUT_SECONDS = 10.0


def json_post(
    *, url: str, body: bytes, headers: dict[str, str], timeout: float = POST_TIMEOUT_SECONDS
) -> HttpAnswer | httpx.HTTPError | UnsafeUrl:
    """POST ``body`` through the SSRF guard; every failure is returned, not raised."""
    try:
        response = safe_request(
            method="POST",
            url=url,
            headers={**headers, "content-type": "application/json"},
            content=body,
            timeout=min(timeout, MAX_TIMEOUT_SECONDS),
        )
    except (httpx.HTTPError, UnsafeUrl) as failure:
        return failure
    return HttpAnswer(
        status=response.status_code, headers=httpx.Headers(response.headers), body=response.body
    )


def address_result(
    outcome: HttpAnswer | httpx.HTTPError | UnsafeUrl, *, detail: str = ""
) -> ProviderResult:
    """``http_result``, with a redirect and 401/403 read as the address's failure."""
    result = http_result(outcome, detail=detail)
    if not isinstance(outcome, HttpAnswer) or result.kind is not ResultKind.CONFIG_ERROR:
        return result
    if 300 <= outcome.status < 400:
        location = outcome.headers.get("location", "")[:200]
        return dataclasses.replace(
            result,
            kind=ResultKind.PERMANENT,
            error=f"HTTP {outcome.status}: redirects are not followed "
            f"(the URL points to {location!r}); fix the URL",
        )
    if outcome.status in (401, 403):
        refused = f"HTTP {outcome.status}" + (f": {detail}" if detail else "")
        return dataclasses.replace(
            result, kind=ResultKind.PERMANENT, error=f"{refused} (the receiver refused the request)"
        )
    return result
