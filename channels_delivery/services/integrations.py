"""A tenant's integrations: created and updated through their provider's
validation, secrets split off and encrypted, and read back in send order.

Secrets are write-only: nothing here returns them except ``integration_config``,
which the delivery code calls to send. An update that leaves a secret out (or
blank, as a form does) keeps the stored value; ``None`` removes it.
"""

import logging
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction

from channels_delivery.catalogue import BUILT_IN_CHANNELS, Channel
from channels_delivery.crypto import secrets_decrypt, secrets_encrypt
from channels_delivery.models import Integration
from channels_delivery.providers.base import ConfigInvalid, Provider, provider_get
from herald.pagination import DEFAULT_LIMIT, Page, cursor_paginate

logger = logging.getLogger(__name__)

NAME_MAX_LENGTH = Integration._meta.get_field("name").max_length or 100


def _provider_for(*, channel: str, provider: str) -> Provider:
    if channel not in Channel.values:
        raise ConfigInvalid(
            {"channel": f"unknown channel {channel!r}; one of {', '.join(Channel.values)}"}
        )
    try:
        return provider_get(channel=channel, key=provider)
    except LookupError as error:
        raise ConfigInvalid({"provider": str(error)}) from None


def _channel_takes_integrations(channel: str) -> None:
    """Raise ConfigInvalid at ``channel`` for a channel Herald delivers itself."""
    if channel not in BUILT_IN_CHANNELS:
        return
    detail = f"the {channel} channel is built in and takes no integration"
    if channel == Channel.WEBHOOK:
        detail += "; webhooks go to the tenant's webhook endpoints (/api/v1/webhook-endpoints)"
    raise ConfigInvalid({"channel": detail})


def _name_checked(name: str) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        raise ConfigInvalid({"name": "required"})
    if len(name) > NAME_MAX_LENGTH:
        raise ConfigInvalid({"name": f"at most {NAME_MAX_LENGTH} characters"})
    return name


def _priority_checked(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigInvalid({"priority": "must be an integer"})
    if not -1000 <= priority <= 1000:
        raise ConfigInvalid({"priority": "must be between -1000 and 1000"})
    return priority


def _split(
    *, provider: Provider, config: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate the whole config, then separate what is stored in clear from the
    secrets."""
    validated = provider.validate_config(config)
    public = {key: value for key, value in validated.items() if key not in provider.secret_fields}
    secret = {
        key: value
        for key, value in validated.items()
        if key in provider.secret_fields and value not in (None, "")
    }
    return public, secret


class IntegrationExists(ConfigInvalid):
    """The channel has an integration of that name already: a conflict, which the
    API answers with 409 rather than a field error."""


RATE_LIMIT_MAX = 100_000


def _rate_checked(rate: object) -> int | None:
    """A messages-per-second limit: a whole number from 1 to RATE_LIMIT_MAX, None
    for no limit (0 also means none, for an update that removes it)."""
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int) or not 0 <= rate <= RATE_LIMIT_MAX:
        raise ConfigInvalid(
            {
                "rate_limit_per_second": f"must be a whole number of messages a second "
                f"from 1 to {RATE_LIMIT_MAX} (or none)"
            }
        )
    return rate or None


def _save(integration: Integration) -> None:
    try:
        with transaction.atomic():
            integration.save()
    except IntegrityError:
        raise IntegrationExists(
            {"name": f"an integration named {integration.name!r} exists on this channel"}
        ) from None


def integration_create(
    *,
    channel: str,
    provider: str,
    name: str,
    config: Mapping[str, Any],
    priority: int = 0,
    enabled: bool = True,
    rate_limit_per_second: int | None = None,
) -> Integration:
    """A new integration; ``config`` holds the provider's fields, secrets included.
    ``rate_limit_per_second``: the provider's sending limit (None: none).
    Raises ConfigInvalid naming each bad field; a built-in channel
    (catalogue.BUILT_IN_CHANNELS) at ``channel``."""
    _channel_takes_integrations(channel)
    implementation = _provider_for(channel=channel, provider=provider)
    public, secret = _split(provider=implementation, config=config)
    integration = Integration(
        channel=channel,
        provider=provider,
        name=_name_checked(name),
        config=public,
        secrets=secrets_encrypt(values=secret),
        priority=_priority_checked(priority),
        enabled=bool(enabled),
        rate_limit_per_second=_rate_checked(rate_limit_per_second),
    )
    _save(integration)
    logger.info("integration %s created: %s", integration.pk, integration)
    return integration


def integration_update(
    *,
    integration: Integration,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    priority: int | None = None,
    enabled: bool | None = None,
    rate_limit_per_second: int | None = None,
) -> Integration:
    """Change what is given. ``config`` replaces the non-secret fields; a secret
    field absent from it or blank keeps its stored value, and ``None`` clears it.
    ``rate_limit_per_second`` 0 removes the limit."""
    if rate_limit_per_second is not None:
        integration.rate_limit_per_second = _rate_checked(rate_limit_per_second) or None
    if name is not None:
        integration.name = _name_checked(name)
    if priority is not None:
        integration.priority = _priority_checked(priority)
    if enabled is not None:
        integration.enabled = bool(enabled)
    if config is not None:
        implementation = _provider_for(channel=integration.channel, provider=integration.provider)
        merged: dict[str, Any] = secrets_decrypt(token=integration.secrets)
        for key, value in config.items():
            if key in implementation.secret_fields:
                if value is None:
                    merged.pop(key, None)
                elif value != "":
                    merged[key] = value
            else:
                merged[key] = value
        public, secret = _split(provider=implementation, config=merged)
        integration.config = public
        integration.secrets = secrets_encrypt(values=secret)
    _save(integration)
    logger.info("integration %s updated: %s", integration.pk, integration)
    return integration


def integration_config(*, integration: Integration) -> dict[str, Any]:
    """The config a provider sends with: the stored fields plus the decrypted
    secrets. Raises crypto.SecretsUnreadable when no configured key opens them."""
    return {**integration.config, **secrets_decrypt(token=integration.secrets)}


def integration_secret_fields_set(*, integration: Integration) -> list[str]:
    """Which secrets are stored (never their values), for a form to show 'set'."""
    return sorted(secrets_decrypt(token=integration.secrets))


def integrations_for(*, channel: str) -> list[Integration]:
    """The enabled integrations of ``channel`` in send order: primary, then fallbacks."""
    return list(
        Integration.objects.filter(channel=channel, enabled=True).order_by("priority", "pk")
    )


def integration_delete(*, integration: Integration) -> None:
    """Delete the integration. Messages and attempts that used it keep their
    history (their link to it is cleared); the channel sends through the
    integrations left, or fails with a config error when none is."""
    pk = integration.pk
    integration.delete()
    logger.info("integration %s deleted", pk)


def integration_get(*, integration_id: int) -> Integration | None:
    return Integration.objects.filter(pk=integration_id).first()


def integration_list(
    *, channel: str | None = None, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[Integration]:
    """Integrations by priority then id (send order within a channel), a page at
    a time; ``channel`` filters."""
    integrations = Integration.objects.all()
    if channel is not None:
        integrations = integrations.filter(channel=channel)
    return cursor_paginate(
        integrations, field="priority", cursor=cursor, limit=limit, descending=False
    )
