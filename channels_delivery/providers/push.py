"""Web push (RFC 8030): the rendered notification, encrypted for each of the
subscriber's browser subscriptions (RFC 8291, aes128gcm) and signed with the
tenant's own VAPID key (RFC 8292).

Each tenant has one VAPID key pair (``PushSettings``), generated on first use;
its frontend subscribes browsers with ``services.push.push_public_key_get()`` as the
``applicationServerKey``, so a push service accepts our requests only for
subscriptions made with that key. The endpoint URL is tenant-supplied data, so
the request goes through the SSRF guard like a webhook.

A push service answers 201 (or 202) when it took the message. 404 or 410 means
the browser unsubscribed: the provider removes that subscription from the
subscriber's ``channels["push"]`` itself (services.push), because the subscription is the only
thing that knows the endpoint (there is no endpoint row to disable as for
webhooks). 429 and 5xx are retried, other 4xx are permanent.
"""

import binascii
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from py_vapid import VapidException  # type: ignore[import-untyped]
from pywebpush import WebPusher, WebPushException  # type: ignore[import-untyped]

from channels_delivery.catalogue import Channel
from channels_delivery.crypto import SecretsUnreadable
from channels_delivery.providers.base import (
    ConfigInvalid,
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_register,
)
from channels_delivery.providers.http import POST_TIMEOUT_SECONDS, address_result
from channels_delivery.providers.sms import HttpAnswer
from channels_delivery.services.push import push_subscriptions_forget, push_vapid
from channels_delivery.ssrf import UnsafeUrl, safe_request

# How long a push service keeps a message for a browser that is offline: a
# notification a day late is stale.
TTL_SECONDS = 24 * 3600
URGENCY = "normal"
# RFC 8292 caps a VAPID token's lifetime at 24 hours; a fresh one is signed per request.
VAPID_EXPIRY_SECONDS = 12 * 3600
# The rendered fields a push notification carries (rules_engine.templating).
PAYLOAD_FIELDS = ("title", "body", "icon", "url")
# RFC 8291 leaves 4078 bytes for the plaintext of one aes128gcm record.
MAX_PAYLOAD_BYTES = 4078
GONE_STATUSES = frozenset({404, 410})


def _subscriptions(address: Mapping[str, Any]) -> list[Any]:
    """What the subscriber's channels["push"] held: one subscription (merged into
    the address by the delivery code) or a list of them (under ``target``)."""
    if "endpoint" in address:
        return [{"endpoint": address.get("endpoint"), "keys": address.get("keys")}]
    target = address.get("target")
    if isinstance(target, list):
        return target
    return [] if target is None else [target]


def _subscription_problem(subscription: Any) -> str:
    """Why a subscription can not be sent to ("" if it can)."""
    if not isinstance(subscription, Mapping):
        return "a push subscription must be an object {endpoint, keys: {p256dh, auth}}"
    endpoint, keys = subscription.get("endpoint"), subscription.get("keys")
    if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("https", "http"):
        return "a push subscription has no https endpoint URL"
    if not isinstance(keys, Mapping) or not all(
        isinstance(keys.get(name), str) and keys.get(name) for name in ("p256dh", "auth")
    ):
        return "a push subscription lacks keys.p256dh or keys.auth"
    return ""


def _origin(endpoint: str) -> str:
    """The push service's origin: the VAPID audience, and the label in errors (the
    path is the subscription's capability, kept out of the message timeline)."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def _payload(content: Mapping[str, Any]) -> tuple[bytes, str]:
    """(the notification's JSON, why there is none)."""
    title = content.get("title")
    if not isinstance(title, str) or not title.strip():
        return b"", "the push message has no title"
    payload = {
        name: content[name]
        for name in PAYLOAD_FIELDS
        if isinstance(content.get(name), str) and content[name]
    }
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_PAYLOAD_BYTES:
        return b"", (
            f"the push payload is {len(data)} bytes; a push message carries at most "
            f"{MAX_PAYLOAD_BYTES}: shorten the title or body"
        )
    return data, ""


def _send_one(
    *, subscription: Mapping[str, Any], data: bytes, vapid: Any, contact: str, timeout: float
) -> ProviderResult:
    endpoint = subscription["endpoint"]
    origin = _origin(endpoint)
    label = f"push subscription at {origin}: "
    try:
        encoded = WebPusher(dict(subscription)).encode(data, content_encoding="aes128gcm")
    except (WebPushException, ValueError, TypeError, binascii.Error) as invalid:
        # Bad p256dh/auth: the browser's keys are not a P-256 point and a secret.
        return ProviderResult(
            kind=ResultKind.PERMANENT, error=f"{label}its keys are unusable ({invalid})"
        )
    try:
        headers = vapid.sign(
            {"sub": contact, "aud": origin, "exp": int(time.time()) + VAPID_EXPIRY_SECONDS}
        )
    except VapidException as refused:
        return ProviderResult(
            kind=ResultKind.CONFIG_ERROR,
            error=f"{label}the VAPID claims are refused ({refused}); "
            "check HERALD_VAPID_CONTACT (a mailto: or https: URL)",
        )
    headers.update(
        {
            "TTL": str(TTL_SECONDS),
            "Urgency": URGENCY,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
    )
    try:
        response = safe_request(
            method="POST", url=endpoint, headers=headers, content=encoded["body"], timeout=timeout
        )
    except (httpx.HTTPError, UnsafeUrl) as failure:
        outcome: HttpAnswer | httpx.HTTPError | UnsafeUrl = failure
    else:
        outcome = HttpAnswer(
            status=response.status_code,
            headers=httpx.Headers(response.headers),
            body=response.body,
        )
    if isinstance(outcome, HttpAnswer) and outcome.status in GONE_STATUSES:
        return ProviderResult(
            kind=ResultKind.PERMANENT,
            response_status=outcome.status,
            error=f"{label}HTTP {outcome.status}: the browser unsubscribed; "
            "the subscription is removed",
            disable_endpoint=True,
        )
    result = address_result(outcome)
    if result.error:
        return ProviderResult(
            kind=result.kind,
            response_status=result.response_status,
            response_excerpt=result.response_excerpt,
            error=f"{label}{result.error}",
            retry_after_seconds=result.retry_after_seconds,
        )
    location = outcome.headers.get("location", "") if isinstance(outcome, HttpAnswer) else ""
    return ProviderResult(
        kind=result.kind,
        response_status=result.response_status,
        response_excerpt=result.response_excerpt,
        provider_message_id=location[:255],
    )


def _combined(results: Sequence[ProviderResult]) -> ProviderResult:
    """One result for the message: accepted when any browser took it (a retry
    would send it again to those that did); else a retry if any failure is worth
    one; else the first failure."""
    accepted = [result for result in results if result.kind is ResultKind.ACCEPTED]
    if accepted:
        return accepted[0]
    retryable = [result for result in results if result.kind is ResultKind.RETRYABLE]
    chosen = retryable[0] if retryable else results[0]
    waits = [result.retry_after_seconds for result in retryable if result.retry_after_seconds]
    return ProviderResult(
        kind=chosen.kind,
        response_status=chosen.response_status,
        response_excerpt=chosen.response_excerpt,
        error="; ".join(result.error for result in results if result.error)[:2000],
        retry_after_seconds=max(waits) if waits else None,
        disable_endpoint=all(result.disable_endpoint for result in results),
    )


@provider_register
class WebPushProvider:
    """Built in (no integration, no config). Address: the subscriber's
    channels["push"], one subscription {endpoint, keys: {p256dh, auth}} or a list."""

    channel: ClassVar[str] = Channel.PUSH.value
    key: ClassVar[str] = "webpush"
    config_fields: ClassVar[frozenset[str]] = frozenset()
    secret_fields: ClassVar[frozenset[str]] = frozenset()

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        if config:
            raise ConfigInvalid({name: "unknown field" for name in config})
        return {}

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        try:
            self.validate_config(config)
        except ConfigInvalid as invalid:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(invalid))
        data, missing = _payload(message.content)
        if missing:
            return ProviderResult(kind=ResultKind.PERMANENT, error=missing)
        subscriptions = _subscriptions(message.address)
        if not subscriptions:
            return ProviderResult(
                kind=ResultKind.PERMANENT, error="the subscriber has no push subscription"
            )
        try:
            vapid, contact = push_vapid()
        except SecretsUnreadable as unreadable:
            return ProviderResult(
                kind=ResultKind.CONFIG_ERROR,
                error=f"the tenant's VAPID key can not be read ({unreadable})",
            )
        results: list[ProviderResult] = []
        gone: list[str] = []
        for subscription in subscriptions:
            problem = _subscription_problem(subscription)
            if problem:
                results.append(ProviderResult(kind=ResultKind.PERMANENT, error=problem))
                continue
            result = _send_one(
                subscription=subscription,
                data=data,
                vapid=vapid,
                contact=contact,
                timeout=POST_TIMEOUT_SECONDS,
            )
            if result.disable_endpoint:
                gone.append(subscription["endpoint"])
            results.append(result)
        external_id = message.address.get("subscriber")
        if gone and isinstance(external_id, str):
            push_subscriptions_forget(external_id=external_id, endpoints=gone)
        return _combined(results)
