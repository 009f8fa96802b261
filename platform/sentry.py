"""Sentry initialisation: errors from web, workers and Redis, tagged by tenant.

The tenant tag is read from the database connection at the moment an event is
captured, so web requests and Celery tasks are tagged the same way without
each code path remembering to do it.

Secrets are scrubbed twice. By name: Sentry's denylist (Authorization, cookies,
``password``, ``token``…) plus the names Herald keeps secrets under, applied
at every depth, so an integration's config dict in a local variable is masked
too (Sentry's default looks at top-level names only). By shape: API keys and
webhook signing secrets are recognisable, so one quoted in a log line, an
exception message or a variable with an innocent name is masked wherever it is.
"""

import re
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.redis import RedisIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber
from sentry_sdk.types import Event, Hint

# Providers' secret_fields (channels_delivery/providers) and the models' and
# webhook addresses' encrypted ``secrets``.
HERALD_SECRET_NAMES = ["auth_token", "secret_key", "secrets", "signing_secret", "webhook_secret"]

SECRET_SHAPES = re.compile(
    r"hk_(?:live|test)_[A-Za-z0-9]{40}"  # tenants.services API key tokens
    r"|whsec_[A-Za-z0-9+/=]{16,}"  # webhook signing secrets (Standard Webhooks)
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # any credential in a header's form
)
MASK = "[Filtered]"


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return SECRET_SHAPES.sub(MASK, value)
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask(item) for item in value]
    return value


def tag_tenant(event: Event, hint: Hint) -> Event:
    from django.db import connection

    schema_name = getattr(connection, "schema_name", None)
    if schema_name:
        event.setdefault("tags", {})["tenant"] = schema_name
    return event


def before_send(event: Event, hint: Hint) -> Event:
    """Tag the tenant, then mask secrets by shape (the event is plain JSON by now)."""
    masked: Event = _mask(tag_tenant(event, hint))
    return masked


def sentry_init(
    *, dsn: str, environment: str, traces_sample_rate: float = 0.0, **options: Any
) -> None:
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        traces_sample_rate=traces_sample_rate,
        # send_default_pii is left unset: it defaults to False (no user data,
        # cookies or bodies), and sentry-sdk 2.75 deprecates passing it.
        integrations=[DjangoIntegration(), CeleryIntegration(), RedisIntegration()],
        event_scrubber=EventScrubber(
            denylist=[*DEFAULT_DENYLIST, *HERALD_SECRET_NAMES], recursive=True
        ),
        before_send=before_send,
        **options,
    )
