"""Subscriber hashes: how a tenant's frontend reads one subscriber's inbox without an API key.

The tenant's backend computes ``hex(HMAC-SHA256(secret, external_id))`` with
the tenant's inbox secret (the secret string, UTF-8, is the key) and hands it to
the signed-in user's page, like Novu's subscriberHash. The page sends it with
the subscriber's external id and the tenant's slug; a hash can not be made for
another subscriber without the secret, and each tenant's secret is its own.
The secret is generated the first time it is asked for and can be rotated,
which invalidates every hash made with the old one at once.
"""

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context, tenant_context

from channels_delivery.crypto import SecretsUnreadable, secrets_decrypt, secrets_encrypt
from channels_delivery.models import InboxSettings
from rules_engine.models import Subscriber
from tenants.authentication import AuthenticationFailed
from tenants.models import Tenant

logger = logging.getLogger(__name__)

TENANT_HEADER = "X-Herald-Tenant"
SUBSCRIBER_HEADER = "X-Herald-Subscriber"
HASH_HEADER = "X-Herald-Subscriber-Hash"


@dataclass(frozen=True, kw_only=True)
class CredentialNames:
    """What the three credentials are called where they come from, for error messages."""

    tenant: str
    subscriber: str
    hash: str


HEADER_NAMES = CredentialNames(tenant=TENANT_HEADER, subscriber=SUBSCRIBER_HEADER, hash=HASH_HEADER)
QUERY_NAMES = CredentialNames(tenant="tenant", subscriber="subscriber", hash="hash")
# Subscriber.external_id's length: anything longer can not be a subscriber.
MAX_EXTERNAL_ID_LENGTH = 200


@dataclass(frozen=True, kw_only=True)
class InboxSecret:
    secret: str
    created_at: datetime
    rotated_at: datetime


@dataclass(frozen=True, kw_only=True)
class InboxPrincipal:
    """Who is reading an inbox: a subscriber of a tenant, proven by its hash.

    ``subscriber_id`` is None when the tenant has not created that subscriber
    (yet): the hash is still valid, and the inbox is simply empty.
    """

    tenant: Tenant
    external_id: str
    subscriber_id: int | None


def _new_secret() -> str:
    return secrets.token_hex(32)


def _secret_of(row: InboxSettings) -> InboxSecret:
    secret = secrets_decrypt(token=row.secret).get("secret")
    if not secret:
        raise SecretsUnreadable("the stored inbox secret is empty")
    return InboxSecret(secret=secret, created_at=row.created_at, rotated_at=row.rotated_at)


def inbox_secret_get() -> InboxSecret:
    """The current schema's inbox secret, generated on first use."""
    row, _ = InboxSettings.objects.get_or_create(
        pk=InboxSettings.SINGLETON_PK,
        defaults={"secret": secrets_encrypt(values={"secret": _new_secret()})},
    )
    return _secret_of(row)


def inbox_secret_rotate() -> InboxSecret:
    """Replace the current schema's inbox secret; hashes made with the old one stop working."""
    token = secrets_encrypt(values={"secret": _new_secret()})
    now = timezone.now()
    with transaction.atomic():
        row, created = InboxSettings.objects.select_for_update().get_or_create(
            pk=InboxSettings.SINGLETON_PK, defaults={"secret": token}
        )
        if not created:
            row.secret = token
            row.rotated_at = now
            row.save(update_fields=["secret", "rotated_at"])
    return _secret_of(row)


def subscriber_hash(*, secret: str, external_id: str) -> str:
    """What the tenant's backend computes for one subscriber (hex HMAC-SHA256)."""
    return hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest()


def _refused(slug: str, title: str, detail: str) -> AuthenticationFailed:
    return AuthenticationFailed(status=401, slug=slug, title=title, detail=detail)


def _invalid_hash(names: CredentialNames) -> AuthenticationFailed:
    # One answer for an unknown tenant, a tenant without a secret and a wrong
    # hash: the caller learns only that these credentials do not open an inbox.
    return _refused(
        "invalid-subscriber-hash",
        "Invalid subscriber hash",
        f"{names.hash} is not the HMAC-SHA256 of {names.subscriber} under this "
        "tenant's current inbox secret (was the secret rotated?).",
    )


def inbox_authenticate(
    *,
    tenant_slug: str | None,
    external_id: str | None,
    given_hash: str | None,
    names: CredentialNames = HEADER_NAMES,
) -> InboxPrincipal:
    """The subscriber these headers prove, or AuthenticationFailed (401, or 403
    for a suspended tenant). Leaves the connection's schema as it found it."""
    if not tenant_slug or not external_id or not given_hash:
        named = (
            (names.tenant, tenant_slug),
            (names.subscriber, external_id),
            (names.hash, given_hash),
        )
        missing = ", ".join(name for name, value in named if not value)
        raise _refused(
            "missing-subscriber-credentials",
            "Subscriber credentials required",
            f"The inbox needs {names.tenant}, {names.subscriber} and {names.hash}; "
            f"missing: {missing}.",
        )
    if len(external_id) > MAX_EXTERNAL_ID_LENGTH:
        raise _refused(
            "malformed-subscriber",
            "Malformed subscriber id",
            f"{names.subscriber} is longer than {MAX_EXTERNAL_ID_LENGTH} characters.",
        )
    with schema_context(get_public_schema_name()):
        tenant = Tenant.objects.select_related("plan").filter(slug=tenant_slug).first()
    if tenant is None:
        raise _invalid_hash(names)
    if not tenant.is_active:
        raise AuthenticationFailed(
            status=403,
            slug="tenant-suspended",
            title="Tenant suspended",
            detail="This tenant is suspended; contact the platform operator.",
        )
    with tenant_context(tenant):
        row = InboxSettings.objects.filter(pk=InboxSettings.SINGLETON_PK).first()
        if row is None:  # never generated: no hash can be valid, and a read must not make one
            raise _invalid_hash(names)
        try:
            secret = _secret_of(row).secret
        except SecretsUnreadable:
            logger.exception("tenant %s: the inbox secret can not be decrypted", tenant.slug)
            raise _invalid_hash(names) from None
        expected = subscriber_hash(secret=secret, external_id=external_id)
        if not hmac.compare_digest(expected.encode(), given_hash.strip().lower().encode()):
            raise _invalid_hash(names)
        subscriber_id = (
            Subscriber.objects.filter(external_id=external_id).values_list("pk", flat=True).first()
        )
    return InboxPrincipal(tenant=tenant, external_id=external_id, subscriber_id=subscriber_id)
