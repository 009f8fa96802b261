"""Provider secrets at rest: Fernet tokens under the keys in HERALD_ENCRYPTION_KEYS.

The first key encrypts and every key decrypts (MultiFernet), so a key is
rotated by putting the new one first, running ``herald integrations_rotate_keys``
(which re-encrypts every stored token with it), and only then removing the old
key from the list.
"""

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Model

logger = logging.getLogger(__name__)


class SecretsUnreadable(Exception):
    """A stored token that no configured key decrypts (its key was removed, or the
    column was altered by hand)."""


@functools.lru_cache(maxsize=4)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured(
            "HERALD_ENCRYPTION_KEYS is empty: provider secrets can not be encrypted"
        )
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as error:
        raise ImproperlyConfigured(
            f"HERALD_ENCRYPTION_KEYS holds a value that is not a Fernet key: {error}"
        ) from None


def _fernet() -> MultiFernet:
    # Keyed by the list itself so a changed setting (tests, a reload) takes effect.
    return _fernet_for(tuple(settings.HERALD_ENCRYPTION_KEYS))


def secrets_encrypt(*, values: Mapping[str, str]) -> str:
    """The token stored for ``values``; an empty mapping is stored as ''."""
    if not values:
        return ""
    plaintext = json.dumps(dict(values), sort_keys=True).encode()
    return _fernet().encrypt(plaintext).decode()


def secrets_decrypt(*, token: str) -> dict[str, str]:
    if not token:
        return {}
    try:
        plaintext = _fernet().decrypt(token.encode())
    except InvalidToken:
        raise SecretsUnreadable(
            "the stored secrets can not be decrypted with any key in HERALD_ENCRYPTION_KEYS "
            "(was the key they were written with removed before rotation?)"
        ) from None
    values = json.loads(plaintext)
    if not isinstance(values, dict):
        raise SecretsUnreadable("the stored secrets are not a JSON object")
    return values


@dataclass(frozen=True, kw_only=True)
class RotationCounts:
    rotated: int  # re-encrypted with the first key
    unreadable: int  # no configured key decrypts them: left as they were


def _encrypted_fields() -> list[tuple[type[Model], str]]:
    """Every column that holds a token of this module: key rotation rewrites them all."""
    from channels_delivery.models import InboxSettings, Integration, PushSettings, WebhookEndpoint

    return [
        (Integration, "secrets"),
        (WebhookEndpoint, "secrets"),
        (InboxSettings, "secret"),
        (PushSettings, "private_key"),
    ]


def secrets_rotate() -> RotationCounts:
    """Re-encrypt every stored secret in the current schema (integrations, webhook
    endpoints, the inbox secret) with the first key. Rows are locked while
    rewritten, so a concurrent update is not lost."""
    fernet = _fernet()
    rotated = unreadable = 0
    with transaction.atomic():
        for model, column in _encrypted_fields():
            rows = (
                model._default_manager.select_for_update()
                .exclude(**{column: ""})
                .only("pk", column)
            )
            for row in rows:
                try:
                    new_token = fernet.rotate(getattr(row, column).encode()).decode()
                except InvalidToken:
                    unreadable += 1
                    logger.warning(
                        "%s %s: %s not readable with any configured key",
                        model._meta.label,
                        row.pk,
                        column,
                    )
                    continue
                model._default_manager.filter(pk=row.pk).update(**{column: new_token})
                rotated += 1
    return RotationCounts(rotated=rotated, unreadable=unreadable)
