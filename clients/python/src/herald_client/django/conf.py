"""The bridge's settings, read from Django's settings when used (tests may change them).

- ``HERALD_URL``: Herald's base URL, e.g. ``https://herald.example.com`` (required).
- ``HERALD_API_KEY``: an API key with the ``events:write`` scope (required).
- ``HERALD_TIMEOUT``: seconds one request to Herald may take (default 5).
- ``HERALD_OUTBOX_SEND_ON_COMMIT``: send each event as soon as its transaction
  commits (default True); False leaves every event to ``herald_outbox run``.
- ``HERALD_OUTBOX_MAX_DELAY``: the longest wait between two tries of one event,
  in seconds (default 300); the first retry comes after about 2 s, then doubling.
- ``HERALD_OUTBOX_LEASE``: seconds a sender owns an event it is sending before
  another may take it over (default 60; longer than HERALD_TIMEOUT).
"""

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


def setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def herald_url() -> str:
    return str(setting("HERALD_URL", ""))


def api_key() -> str:
    return str(setting("HERALD_API_KEY", ""))


def timeout() -> float:
    return float(setting("HERALD_TIMEOUT", 5.0))


def send_on_commit() -> bool:
    return bool(setting("HERALD_OUTBOX_SEND_ON_COMMIT", True))


def max_delay() -> float:
    return float(setting("HERALD_OUTBOX_MAX_DELAY", 300.0))


def lease_seconds() -> float:
    return float(setting("HERALD_OUTBOX_LEASE", 60.0))


def settings_check(
    *,
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[checks.CheckMessage]:
    """``manage.py check`` (and every ``runserver``/``migrate``) names a missing or
    malformed setting before the first event is lost to it."""
    problems: list[checks.CheckMessage] = []
    url = herald_url()
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        problems.append(
            checks.Error(
                f"HERALD_URL must be Herald's http(s) base URL, not {url!r}",
                hint="e.g. HERALD_URL = 'https://herald.example.com'",
                id="herald_client.E001",
            )
        )
    if not api_key():
        problems.append(
            # A warning: migrate and collectstatic run where no key is; events
            # wait in the outbox until one is set.
            checks.Warning(
                "HERALD_API_KEY is not set: events wait in the outbox until it is",
                hint="Create a key with the events:write scope in Herald's dashboard.",
                id="herald_client.W001",
            )
        )
    if lease_seconds() <= timeout():
        problems.append(
            checks.Error(
                f"HERALD_OUTBOX_LEASE ({lease_seconds():g} s) must be longer than "
                f"HERALD_TIMEOUT ({timeout():g} s)",
                hint="A sender still waiting for Herald would lose its event to another.",
                id="herald_client.E002",
            )
        )
    return problems
