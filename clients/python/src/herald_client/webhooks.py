"""Verifying the webhooks Herald sends to the tenant's endpoints (Standard Webhooks).

Each request carries ``webhook-id`` (stable across retries: drop duplicates by
it), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``: one or more
space-separated ``v1,<base64 HMAC-SHA256>`` of ``"{id}.{timestamp}.{body}"``,
one per secret while the endpoint's secret is being rotated. Verify the body
exactly as received, before parsing it.

    verifier = WebhookVerifier("whsec_…")
    webhook = verifier.verify(request.body, request.headers)   # raises if forged
"""

import base64
import binascii
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

DEFAULT_TOLERANCE = timedelta(minutes=5)


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh webhook from Herald: answer it with 400."""


@dataclass(frozen=True, kw_only=True)
class VerifiedWebhook:
    id: str
    """``webhook-id``: the same on every retry of this webhook."""
    timestamp: datetime
    payload: Any
    """The body, parsed as JSON."""


class WebhookVerifier:
    """Checks signatures against the endpoint's secret (or several: the new and the
    old during a rotation) and refuses timestamps further than ``tolerance`` from
    now, so that a captured request can not be replayed later."""

    def __init__(
        self, secret: str | Sequence[str], *, tolerance: timedelta = DEFAULT_TOLERANCE
    ) -> None:
        secrets = [secret] if isinstance(secret, str) else list(secret)
        if not secrets:
            raise ValueError("a webhook verifier needs at least one secret")
        try:
            self._signers = [Webhook(value) for value in secrets]
        except (binascii.Error, ValueError, EmptyWebhookSecretError) as error:
            raise ValueError(f"not a webhook secret (whsec_…): {error}") from None
        self.tolerance = tolerance

    def verify(
        self, body: bytes | str, headers: Mapping[str, str], *, now: datetime | None = None
    ) -> VerifiedWebhook:
        lowered = {name.lower(): value for name, value in headers.items()}
        msg_id = lowered.get("webhook-id", "")
        stamp = lowered.get("webhook-timestamp", "")
        signatures = lowered.get("webhook-signature", "")
        if not (msg_id and stamp and signatures):
            raise WebhookVerificationError(
                "missing webhook-id, webhook-timestamp or webhook-signature header"
            )
        if not stamp.isdigit():
            raise WebhookVerificationError("webhook-timestamp is not a Unix time in seconds")
        timestamp = datetime.fromtimestamp(int(stamp), tz=UTC)
        if abs((now or datetime.now(UTC)) - timestamp) > self.tolerance:
            raise WebhookVerificationError("webhook-timestamp is too far from now")
        try:
            text = body.decode() if isinstance(body, bytes) else body
        except UnicodeDecodeError:
            raise WebhookVerificationError("the body is not UTF-8") from None
        offered = [_signature_bytes(item) for item in signatures.split()]
        for signer in self._signers:
            expected = _signature_bytes(signer.sign(msg_id, timestamp, text))
            if any(hmac.compare_digest(expected, given) for given in offered if given):
                break
        else:
            raise WebhookVerificationError("no signature matches")
        try:
            payload = json.loads(text)
        except ValueError:
            raise WebhookVerificationError("the body is not JSON") from None
        return VerifiedWebhook(id=msg_id, timestamp=timestamp, payload=payload)


def _signature_bytes(versioned: str) -> bytes:
    """The HMAC of one ``v1,<base64>`` entry; b"" for another version or bad base64."""
    version, _, encoded = versioned.partition(",")
    if version != "v1":
        return b""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return b""
