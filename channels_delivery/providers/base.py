"""What a provider is: a Protocol, the values that cross its boundary, and the registry.

A provider module declares the channel and key it serves, validates a tenant's
integration config, and sends one rendered message; it registers itself with
``@provider_register`` and ``channels_delivery.apps`` imports the modules. The
delivery task (one place) decides what a result means: retry with backoff,
fail over to the next integration, or stop (STYLE.md 5-7).
"""

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar


class ResultKind(enum.StrEnum):
    ACCEPTED = "accepted"  # the provider took the message
    RETRYABLE = "retryable"  # try again later (5xx, timeout, 429, connection refused)
    PERMANENT = "permanent"  # this message will never go through this way (4xx, bad address)
    CONFIG_ERROR = "config_error"  # the integration is wrong: no retry, shown to the tenant


@dataclass(frozen=True, kw_only=True)
class RenderedMessage:
    """A message as the pipeline rendered it, and where it goes."""

    message_id: str
    channel: str
    content: Mapping[str, Any]  # the rendered fields (subject, html, text, body...)
    address: Mapping[str, Any]  # email / phone / push subscription / chat url ...
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str = ""  # stable across retries (webhook-id)


@dataclass(frozen=True, kw_only=True)
class ProviderResult:
    kind: ResultKind
    provider_message_id: str = ""
    response_status: int | None = None
    response_excerpt: str = ""  # capped by the provider (RESPONSE_EXCERPT_MAX)
    error: str = ""  # readable, for the tenant's message timeline
    retry_after_seconds: float | None = None  # from Retry-After, when the provider said
    # The receiver said the endpoint is gone for good (a webhook's 410 Gone): the
    # delivery code disables the endpoint instead of sending to it again.
    disable_endpoint: bool = False


RESPONSE_EXCERPT_MAX = 2048


class ConfigInvalid(ValueError):
    """An integration's config is refused; ``errors`` maps field -> message."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{key}: {value}" for key, value in self.errors.items()))


class Provider(Protocol):
    channel: ClassVar[str]  # a channels_delivery.catalogue.Channel value
    key: ClassVar[str]  # unique per channel, e.g. "smtp", "twilio"
    # Every field the config takes, the secret ones included (the API lists them).
    config_fields: ClassVar[frozenset[str]]
    secret_fields: ClassVar[frozenset[str]]  # those of them stored encrypted, never shown

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config, normalised; raises ConfigInvalid naming each bad field."""
        ...

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        """Send one message; never raises for provider or network failures (returns a
        result of the right kind instead)."""
        ...


_registry: dict[tuple[str, str], type[Provider]] = {}


P = TypeVar("P", bound=type[Provider])


def provider_register(cls: P) -> P:
    key = (cls.channel, cls.key)
    if key in _registry and _registry[key] is not cls:
        raise ValueError(f"a provider {cls.channel}/{cls.key} is registered already")
    _registry[key] = cls
    return cls


def provider_get(*, channel: str, key: str) -> Provider:
    try:
        return _registry[(channel, key)]()
    except KeyError:
        raise LookupError(f"no provider {key!r} for the {channel} channel") from None


def providers_for(channel: str) -> list[str]:
    return sorted(key for registered_channel, key in _registry if registered_channel == channel)
