"""The subscriber hash: what the tenant's server computes for a signed-in user,
so that the user's browser (or app) may read that subscriber's inbox, and no other."""

import hashlib
import hmac


def subscriber_hash(*, secret: str, external_id: str) -> str:
    """hex(HMAC-SHA256(key=inbox secret, message=external id)), both as UTF-8;
    the secret comes from ``Herald.inbox.secret()``."""
    return hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest()
