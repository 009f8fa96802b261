"""A tenant's web push state: its VAPID key pair (``PushSettings``, generated on
first use, the private key encrypted at rest) and its subscribers' browser
subscriptions, which the webpush provider removes when a push service says
they are gone (channels_delivery.providers.push)."""

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db import transaction
from py_vapid import Vapid  # type: ignore[import-untyped]

from channels_delivery.catalogue import Channel
from channels_delivery.crypto import SecretsUnreadable, secrets_decrypt, secrets_encrypt
from channels_delivery.models import PushSettings
from rules_engine.models import Subscriber


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _new_key_pair() -> tuple[str, str]:
    """(private key: the raw 32-byte scalar, public key: the uncompressed point), base64url."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_numbers().private_value.to_bytes(32, "big")
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return _b64url(private), _b64url(public)


def _settings_row() -> PushSettings:
    """The current schema's push settings, with a key pair generated on first use."""
    existing = PushSettings.objects.filter(pk=PushSettings.SINGLETON_PK).first()
    if existing is not None:
        return existing
    private, public = _new_key_pair()
    # get_or_create: two first uses at once keep one key pair.
    row, _ = PushSettings.objects.get_or_create(
        pk=PushSettings.SINGLETON_PK,
        defaults={
            "private_key": secrets_encrypt(values={"private_key": private}),
            "public_key": public,
            "contact": settings.HERALD_VAPID_CONTACT,
        },
    )
    return row


def push_public_key_get() -> str:
    """The current tenant's VAPID public key (base64url), the ``applicationServerKey``
    its frontend subscribes browsers with; generated on first use."""
    return _settings_row().public_key


def push_vapid() -> tuple[Any, str]:
    """(the tenant's signing key, its contact); raises SecretsUnreadable."""
    row = _settings_row()
    private = secrets_decrypt(token=row.private_key).get("private_key")
    if not private:
        raise SecretsUnreadable("the stored VAPID private key is empty")
    return Vapid.from_raw(private.encode()), row.contact


def push_subscriptions_forget(*, external_id: str, endpoints: Sequence[str]) -> int:
    """Remove the subscriptions with these endpoints from a subscriber's
    channels["push"] (under the row's lock); returns how many were removed."""
    gone = set(endpoints)
    with transaction.atomic():
        subscriber = Subscriber.objects.select_for_update().filter(external_id=external_id).first()
        if subscriber is None:
            return 0
        channels = dict(subscriber.channels or {})
        current = channels.get(Channel.PUSH.value)
        if isinstance(current, Mapping):
            kept: Any = None if current.get("endpoint") in gone else current
            removed = 0 if kept is not None else 1
        elif isinstance(current, list):
            kept = [
                item
                for item in current
                if not (isinstance(item, Mapping) and item.get("endpoint") in gone)
            ]
            removed = len(current) - len(kept)
        else:
            return 0
        if not removed:
            return 0
        if kept:
            channels[Channel.PUSH.value] = kept
        else:
            del channels[Channel.PUSH.value]
        subscriber.channels = channels
        subscriber.save(update_fields=["channels", "updated_at"])
    return removed
