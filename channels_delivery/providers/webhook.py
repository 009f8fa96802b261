"""Webhooks: the rendered JSON body POSTed to a tenant's endpoint, signed the
Standard Webhooks way (https://www.standardwebhooks.com).

``webhook-id`` is the message's idempotency key, the same on every retry, so
a receiver can drop a delivery it already processed; ``webhook-timestamp`` is
the time of this attempt, which the signature covers to stop replays. A 410
Gone answer marks the result ``disable_endpoint``: the receiver asked us to stop.
"""

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from channels_delivery.catalogue import Channel
from channels_delivery.providers.base import (
    ConfigInvalid,
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_register,
)
from channels_delivery.providers.http import POST_TIMEOUT_SECONDS, address_result, json_post
from channels_delivery.providers.sms import HttpAnswer
from channels_delivery.services.webhooks import webhook_signature_headers
from channels_delivery.ssrf import MAX_TIMEOUT_SECONDS


def timeout_checked(config: Mapping[str, Any], *, known: frozenset[str]) -> dict[str, Any]:
    """A config of at most ``timeout`` (seconds, up to the SSRF guard's cap)."""
    errors = {name: "unknown field" for name in config if name not in known}
    timeout = config.get("timeout", POST_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        errors["timeout"] = "must be a number of seconds"
    elif not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        errors["timeout"] = f"must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds"
    if errors:
        raise ConfigInvalid(errors)
    return {"timeout": float(timeout)}


def _body(value: object) -> tuple[bytes, str]:
    """(the bytes to send, why there are none)."""
    if isinstance(value, Mapping | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(), ""
    if not isinstance(value, str) or not value.strip():
        return b"", "the message has no body"
    try:
        json.loads(value)
    except (ValueError, RecursionError):
        return b"", "the message body is not valid JSON"
    return value.encode(), ""


def _endpoint(address: Mapping[str, Any]) -> tuple[str, list[str], str]:
    """(url, signing secrets, why the address is unusable)."""
    url, secrets = address.get("url"), address.get("secrets")
    if not isinstance(url, str) or not url:
        return "", [], "the webhook endpoint has no URL"
    if (
        not isinstance(secrets, list | tuple)
        or not secrets
        or not all(isinstance(secret, str) and secret for secret in secrets)
    ):
        return "", [], "the webhook endpoint has no signing secret"
    return url, list(secrets), ""


@provider_register
class WebhookProvider:
    """Config: timeout in seconds (optional). Address: endpoint_id, url, secrets
    (the active ``whsec_`` secrets, from services.webhooks.endpoint_address)."""

    channel: ClassVar[str] = Channel.WEBHOOK.value
    key: ClassVar[str] = "webhook"
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    known_fields: ClassVar[frozenset[str]] = frozenset({"timeout"})
    config_fields: ClassVar[frozenset[str]] = known_fields

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return timeout_checked(config, known=self.known_fields)

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        try:
            config = self.validate_config(config)
        except ConfigInvalid as invalid:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(invalid))
        url, secrets, unusable = _endpoint(message.address)
        if unusable:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=unusable)
        body, missing = _body(message.content.get("body"))
        if missing:
            return ProviderResult(kind=ResultKind.PERMANENT, error=missing)
        try:
            headers = webhook_signature_headers(
                msg_id=message.idempotency_key or message.message_id,
                timestamp=int(time.time()),
                body=body,
                secrets=secrets,
            )
        except ValueError as invalid:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(invalid))
        outcome = json_post(url=url, body=body, headers=headers, timeout=config["timeout"])
        result = address_result(outcome)
        if isinstance(outcome, HttpAnswer) and outcome.status == 410:
            return dataclasses.replace(
                result,
                disable_endpoint=True,
                error="HTTP 410 Gone: the receiver says this endpoint no longer exists; "
                "it is disabled",
            )
        return result
