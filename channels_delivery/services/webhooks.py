"""A tenant's webhook endpoints: created with a checked URL and a signing secret,
rotated without breaking receivers, disabled with a reason; and the Standard
Webhooks signature headers every delivery carries.

A rotation keeps the previous secret signing next to the new one for
HERALD_WEBHOOK_SECRET_OVERLAP_HOURS, so a receiver can switch its verifying
secret at any time in that window: each request carries one ``v1,`` signature
per active secret in ``webhook-signature``, and a receiver that knows either
secret accepts it.
"""

import base64
import binascii
import logging
import secrets as random_secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from channels_delivery.catalogue import Channel
from channels_delivery.crypto import secrets_decrypt, secrets_encrypt
from channels_delivery.models import (
    CallbackType,
    DeliveryAttempt,
    Message,
    MessageStatus,
    WebhookEndpoint,
)
from channels_delivery.providers.base import ConfigInvalid, ProviderResult, ResultKind
from channels_delivery.ssrf import UnsafeUrl, url_check
from herald.pagination import DEFAULT_LIMIT, Page, cursor_paginate

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format's prefix, not a secret
SECRET_BYTES = 32
# The Standard Webhooks spec asks for secrets of 24 to 64 random bytes.
SECRET_MIN_BYTES, SECRET_MAX_BYTES = 24, 64
DEFAULT_OVERLAP_HOURS = 24
URL_MAX_LENGTH = WebhookEndpoint._meta.get_field("url").max_length or 2048
DESCRIPTION_MAX_LENGTH = WebhookEndpoint._meta.get_field("description").max_length or 200
REASON_MAX_LENGTH = WebhookEndpoint._meta.get_field("disabled_reason").max_length or 500
EVENT_TYPE_KEY_MAX_LENGTH = 200  # rules_engine.EventType.key
EVENT_TYPES_MAX = 100


# --- secrets ----------------------------------------------------------------------


def webhook_secret_generate() -> str:
    """A new ``whsec_`` secret: base64 of SECRET_BYTES random bytes."""
    return SECRET_PREFIX + base64.b64encode(random_secrets.token_bytes(SECRET_BYTES)).decode()


def _secret_checked(secret: object) -> str:
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ConfigInvalid({"secret": f"must start with {SECRET_PREFIX!r}"})
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigInvalid(
            {"secret": f"must be {SECRET_PREFIX!r} followed by standard base64"}
        ) from None
    if not SECRET_MIN_BYTES <= len(raw) <= SECRET_MAX_BYTES:
        raise ConfigInvalid(
            {
                "secret": f"must encode {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes, "
                f"not {len(raw)}"
            }
        )
    return secret


def _overlap() -> timedelta:
    hours = getattr(settings, "HERALD_WEBHOOK_SECRET_OVERLAP_HOURS", DEFAULT_OVERLAP_HOURS)
    return timedelta(hours=max(0, int(hours)))


def endpoint_signing_secrets(
    *, endpoint: WebhookEndpoint, now: datetime | None = None
) -> list[str]:
    """The secrets that sign a delivery now: the current one, then the previous
    one while its overlap lasts. Raises crypto.SecretsUnreadable when no
    configured key opens them."""
    stored = secrets_decrypt(token=endpoint.secrets)
    active = [stored["current"]] if stored.get("current") else []
    previous, expires = stored.get("previous"), stored.get("previous_expires_at")
    if previous and expires and datetime.fromisoformat(expires) > (now or timezone.now()):
        active.append(previous)
    return active


def endpoint_secret(*, endpoint: WebhookEndpoint) -> str:
    """The current secret, for the tenant admin who configures the receiver."""
    return secrets_decrypt(token=endpoint.secrets).get("current", "")


# --- endpoints --------------------------------------------------------------------


def _url_checked(url: object) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ConfigInvalid({"url": "required: an http(s) URL"})
    url = url.strip()
    if len(url) > URL_MAX_LENGTH:
        raise ConfigInvalid({"url": f"at most {URL_MAX_LENGTH} characters"})
    try:
        url_check(url)
    except UnsafeUrl as refused:
        raise ConfigInvalid({"url": refused.reason}) from None
    return url


def _description_checked(description: object) -> str:
    if not isinstance(description, str):
        raise ConfigInvalid({"description": "must be a string"})
    description = description.strip()
    if len(description) > DESCRIPTION_MAX_LENGTH:
        raise ConfigInvalid({"description": f"at most {DESCRIPTION_MAX_LENGTH} characters"})
    return description


def _event_types_checked(event_types: object) -> list[str]:
    if isinstance(event_types, str | bytes | Mapping) or not isinstance(event_types, Iterable):
        raise ConfigInvalid({"event_types": "must be a list of event type keys (empty: all)"})
    keys: list[str] = []
    for key in event_types:
        if not isinstance(key, str) or not key.strip():
            raise ConfigInvalid({"event_types": f"{key!r} is not an event type key"})
        key = key.strip()
        if len(key) > EVENT_TYPE_KEY_MAX_LENGTH:
            raise ConfigInvalid(
                {"event_types": f"{key[:40]!r}... is longer than {EVENT_TYPE_KEY_MAX_LENGTH}"}
            )
        if key not in keys:
            keys.append(key)
    if len(keys) > EVENT_TYPES_MAX:
        raise ConfigInvalid({"event_types": f"at most {EVENT_TYPES_MAX} event types"})
    return keys


def endpoint_create(
    *,
    url: str,
    description: str = "",
    event_types: Sequence[str] = (),
    secret: str | None = None,
    enabled: bool = True,
) -> WebhookEndpoint:
    """A new endpoint with a generated secret (or ``secret``, a ``whsec_`` value
    the tenant brings). Raises ConfigInvalid naming the bad field."""
    endpoint = WebhookEndpoint(
        url=_url_checked(url),
        description=_description_checked(description),
        event_types=_event_types_checked(event_types),
        secrets=secrets_encrypt(
            values={
                "current": webhook_secret_generate() if secret is None else _secret_checked(secret)
            }
        ),
        enabled=bool(enabled),
    )
    endpoint.save()
    logger.info("webhook endpoint %s created", endpoint.pk)
    return endpoint


def endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    description: str | None = None,
    event_types: Sequence[str] | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change what is given. Enabling an endpoint clears why it was disabled and
    its failure streak."""
    if url is not None:
        endpoint.url = _url_checked(url)
    if description is not None:
        endpoint.description = _description_checked(description)
    if event_types is not None:
        endpoint.event_types = _event_types_checked(event_types)
    if enabled is not None:
        if enabled and not endpoint.enabled:
            endpoint.disabled_reason = ""
            endpoint.failing_since = None
        endpoint.enabled = bool(enabled)
    endpoint.save()
    logger.info("webhook endpoint %s updated", endpoint.pk)
    return endpoint


def endpoint_secret_rotate(
    *, endpoint: WebhookEndpoint, secret: str | None = None, now: datetime | None = None
) -> str:
    """Give the endpoint a new current secret and return it. The old one keeps
    signing for the overlap; a secret that was still overlapping from an
    earlier rotation stops now (two secrets at most). The row is locked so two
    rotations at once can not both keep the same old secret."""
    new_secret = webhook_secret_generate() if secret is None else _secret_checked(secret)
    now = now or timezone.now()
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        stored = secrets_decrypt(token=locked.secrets)
        values = {"current": new_secret}
        overlap = _overlap()
        if stored.get("current") and overlap:
            values["previous"] = stored["current"]
            values["previous_expires_at"] = (now + overlap).astimezone(UTC).isoformat()
        locked.secrets = secrets_encrypt(values=values)
        locked.save(update_fields=["secrets", "updated_at"])
    endpoint.secrets = locked.secrets
    logger.info("webhook endpoint %s: secret rotated", endpoint.pk)
    return new_secret


def endpoint_disable(
    *, endpoint: WebhookEndpoint, reason: str, now: datetime | None = None
) -> WebhookEndpoint:
    """Stop delivering to the endpoint; ``reason`` is shown to the tenant admin
    (e.g. "the receiver answered 410 Gone"), and sent in an ``endpoint.disabled``
    callback to the tenant's other endpoints that subscribe to it."""
    from channels_delivery.services.callbacks import callbacks_emit

    if not isinstance(reason, str) or not reason.strip():
        raise ConfigInvalid({"reason": "required: say why the endpoint is disabled"})
    now = now or timezone.now()
    with transaction.atomic():
        was_enabled = endpoint.enabled
        endpoint.enabled = False
        endpoint.disabled_reason = reason.strip()[:REASON_MAX_LENGTH]
        endpoint.save(update_fields=["enabled", "disabled_reason", "updated_at"])
        if was_enabled:
            callbacks_emit(
                callback_type=CallbackType.ENDPOINT_DISABLED,
                data={
                    "endpoint_id": endpoint.pk,
                    "url": endpoint.url,
                    "description": endpoint.description,
                    "reason": endpoint.disabled_reason,
                    "failing_since": endpoint.failing_since.astimezone(UTC).isoformat()
                    if endpoint.failing_since
                    else None,
                },
                exclude_endpoint_id=endpoint.pk,
                now=now,
            )
    logger.info("webhook endpoint %s disabled: %s", endpoint.pk, endpoint.disabled_reason)
    return endpoint


def _disable_after() -> timedelta:
    return timedelta(days=float(settings.HERALD_WEBHOOK_DISABLE_AFTER_DAYS))


def _is_slow(*, result: ProviderResult, elapsed_seconds: float | None) -> bool:
    """Slow: took HERALD_WEBHOOK_SLOW_SECONDS or more, or gave no answer in time."""
    if elapsed_seconds is not None and elapsed_seconds >= settings.HERALD_WEBHOOK_SLOW_SECONDS:
        return True
    return result.response_status is None and "timed out" in result.error.lower()


def endpoint_delivery_record(
    *,
    endpoint_id: int,
    result: ProviderResult,
    now: datetime | None = None,
    elapsed_seconds: float | None = None,
) -> WebhookEndpoint | None:
    """Keep an endpoint's health in step with a delivery to it: a success ends a
    failure streak, the first failure starts one (``failing_since``), and the
    endpoint is disabled when a result asks for it (410 Gone) or when it has been
    failing for HERALD_WEBHOOK_DISABLE_AFTER_DAYS. A slow answer (or none) puts
    it in the slow lane for HERALD_WEBHOOK_SLOW_LANE_SECONDS; a quick one takes
    it out. None when the endpoint was deleted meanwhile."""
    now = now or timezone.now()
    slow = _is_slow(result=result, elapsed_seconds=elapsed_seconds)
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().filter(pk=endpoint_id).first()
        if endpoint is None:
            return None
        changed: list[str] = []
        if slow:
            endpoint.slow_until = now + timedelta(seconds=settings.HERALD_WEBHOOK_SLOW_LANE_SECONDS)
            changed.append("slow_until")
        elif endpoint.slow_until is not None and elapsed_seconds is not None:
            endpoint.slow_until = None
            changed.append("slow_until")
        if result.kind is ResultKind.ACCEPTED:
            if endpoint.failing_since is not None:
                endpoint.failing_since = None
                changed.append("failing_since")
        elif endpoint.failing_since is None:
            endpoint.failing_since = now
            changed.append("failing_since")
        if changed:
            endpoint.save(update_fields=[*changed, "updated_at"])
        if result.kind is ResultKind.ACCEPTED or not endpoint.enabled:
            return endpoint
        if result.disable_endpoint:
            endpoint_disable(
                endpoint=endpoint, reason=result.error or "the receiver asked to stop", now=now
            )
        elif (
            endpoint.failing_since is not None and endpoint.failing_since <= now - _disable_after()
        ):
            days = (now - endpoint.failing_since).total_seconds() / 86400
            endpoint_disable(
                endpoint=endpoint,
                reason=(
                    f"every delivery failed for {days:.1f} days (since "
                    f"{endpoint.failing_since:%Y-%m-%d %H:%M} UTC); the last: {result.error}"
                ),
                now=now,
            )
    return endpoint


def endpoint_is_slow(*, endpoint: WebhookEndpoint, now: datetime | None = None) -> bool:
    return endpoint.slow_until is not None and endpoint.slow_until > (now or timezone.now())


def endpoints_receiving(*, event_type: str) -> list[WebhookEndpoint]:
    """The enabled endpoints whose event filter lets ``event_type`` through, oldest
    first: a rule's webhook action delivers to every one of them."""
    enabled = WebhookEndpoint.objects.filter(enabled=True).order_by("created_at", "pk")
    return [endpoint for endpoint in enabled if endpoint.receives(event_type)]


def endpoint_address(*, endpoint: WebhookEndpoint, now: datetime | None = None) -> dict[str, Any]:
    """What the ``webhook`` provider sends to: RenderedMessage.address."""
    return {
        "endpoint_id": endpoint.pk,
        "url": endpoint.url,
        "secrets": endpoint_signing_secrets(endpoint=endpoint, now=now),
    }


def endpoint_get(*, endpoint_id: int) -> WebhookEndpoint | None:
    return WebhookEndpoint.objects.filter(pk=endpoint_id).first()


def endpoints_list(
    *, enabled: bool | None = None, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[WebhookEndpoint]:
    """Endpoints oldest first, a page at a time; ``enabled`` filters."""
    endpoints = WebhookEndpoint.objects.all()
    if enabled is not None:
        endpoints = endpoints.filter(enabled=enabled)
    return cursor_paginate(
        endpoints, field="created_at", cursor=cursor, limit=limit, descending=False
    )


def endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Its status callbacks go with it; messages already sent to it keep their
    attempts, and a delivery under way finds the endpoint gone and skips it."""
    pk = endpoint.pk
    endpoint.delete()
    logger.info("webhook endpoint %s deleted", pk)


# --- signing ----------------------------------------------------------------------


def webhook_signature_headers(
    *, msg_id: str, timestamp: datetime | int, body: bytes | str, secrets: Sequence[str]
) -> dict[str, str]:
    """The Standard Webhooks headers for one request: ``webhook-id``,
    ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``, which holds
    one space-separated ``v1,<base64>`` signature per secret.

    ``body`` must be exactly the bytes sent. Raises ValueError for no secrets,
    a secret that is not a ``whsec_`` value, or a body that is not UTF-8 (the
    signature covers text).
    """
    if not msg_id:
        raise ValueError("a webhook needs a message id (webhook-id)")
    if not secrets:
        raise ValueError("a webhook needs at least one signing secret")
    when = (
        datetime.fromtimestamp(timestamp, tz=UTC)
        if isinstance(timestamp, int)
        else timestamp.astimezone(UTC)
    )
    # standardwebhooks signs text, so the body's bytes are decoded as they were sent.
    data = body.decode("utf-8") if isinstance(body, bytes) else body
    signatures = []
    for secret in secrets:
        try:
            signer = Webhook(_secret_checked(secret))
        except ConfigInvalid as invalid:
            raise ValueError(f"a signing secret is invalid: {invalid.errors['secret']}") from None
        signatures.append(signer.sign(msg_id, when, data))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


# --- replay -----------------------------------------------------------------------


class ReplayRefused(Exception):
    """The message can not be replayed; the message says why."""


REPLAY_NOTE = "replayed"


def _replayable(*, since: datetime | None = None) -> QuerySet[Message]:
    failed = Message.objects.filter(channel=Channel.WEBHOOK, status=MessageStatus.FAILED)
    return failed if since is None else failed.filter(failed_at__gte=since)


def webhook_message_replay(*, message_id: uuid.UUID | str) -> Message:
    """Queue a failed webhook message again, with a fresh retry schedule; it goes
    to the enabled endpoints that receive its event type and have not accepted it
    yet (those that did are not sent it twice). The earlier attempts are kept.
    Raises ReplayRefused for a message that is not a failed webhook message.

    The one way out of ``failed`` (services.delivery.TRANSITIONS keeps it
    terminal): guarded here by the WHERE clause under a row lock."""
    from channels_delivery.services.dispatch import messages_enqueue

    with transaction.atomic():
        message = Message.objects.select_for_update().filter(pk=message_id).first()
        if message is None:
            raise ReplayRefused(f"there is no message {message_id}")
        if not _replayable().filter(pk=message.pk).exists():
            raise ReplayRefused(
                f"message {message.pk} is a {message.channel} message that is {message.status}; "
                "only failed webhook messages can be replayed"
            )
        _replay(ids=[message.pk])
        messages_enqueue(message_ids=[message.pk])
        message.refresh_from_db()
    logger.info("webhook message %s replayed", message.pk)
    return message


def webhook_messages_replay_failed(*, since: datetime, endpoint_id: int | None = None) -> int:
    """Replay every webhook message that failed at or after ``since`` (only those
    that were tried at ``endpoint_id``, if given); returns how many. Failed
    status callbacks since then are queued again too (those to ``endpoint_id``)."""
    from channels_delivery.services.callbacks import callbacks_replay_failed
    from channels_delivery.services.delivery import ENDPOINT_MARK
    from channels_delivery.services.dispatch import messages_enqueue

    with transaction.atomic():
        failed = _replayable(since=since)
        if endpoint_id is not None:
            tried_there = DeliveryAttempt.objects.filter(
                message=OuterRef("pk"), provider_message_id=f"{ENDPOINT_MARK}{endpoint_id}"
            )
            failed = failed.filter(Exists(tried_there))
        ids = list(
            failed.order_by("failed_at")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", flat=True)
        )
        _replay(ids=ids)
        messages_enqueue(message_ids=ids)
    callbacks = callbacks_replay_failed(since=since, endpoint_id=endpoint_id)
    logger.info(
        "replayed %s webhook messages and %s callbacks failed since %s", len(ids), callbacks, since
    )
    return len(ids)


def _replay(*, ids: Sequence[uuid.UUID]) -> None:
    now = timezone.now()
    for start in range(0, len(ids), 1000):
        Message.objects.filter(
            pk__in=ids[start : start + 1000], status=MessageStatus.FAILED
        ).update(
            status=MessageStatus.QUEUED,
            attempt_count=0,
            next_attempt_at=None,
            failed_at=None,
            error=f"{REPLAY_NOTE} at {now:%Y-%m-%d %H:%M:%S} UTC",
            updated_at=now,
        )
