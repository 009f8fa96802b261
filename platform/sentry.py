"""Sentry initialisation: errors from web, workers and Redis, tagged by tenant.

The tenant tag is read from the database connection at the moment an event is
captured, so web requests and Celery tasks are tagged the same way without
each code path remembering to do it.
"""

from typing import Any

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.redis import RedisIntegration
from sentry_sdk.types import Event, Hint


def tag_tenant(event: Event, hint: Hint) -> Event:
    from django.db import connection

    schema_name = getattr(connection, "schema_name", None)
    if schema_name:
        event.setdefault("tags", {})["tenant"] = schema_name
    return event


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
        before_send=tag_tenant,
        **options,
    )
