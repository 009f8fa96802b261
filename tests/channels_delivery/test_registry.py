"""The provider registry is complete and wired (STYLE.md 5 and 9)."""

import importlib
import pkgutil
import sys
from typing import Any, ClassVar

import pytest

from channels_delivery import providers
from channels_delivery.catalogue import BUILT_IN_CHANNELS, Channel
from channels_delivery.providers.base import (
    ConfigInvalid,
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_get,
    provider_register,
    providers_for,
)

# Channels whose providers are not built yet. A channel leaves this set in the
# change that registers its first provider: the test below fails until it does.
NOT_YET_PROVIDED: frozenset[Channel] = frozenset()


def test_every_module_under_providers_is_imported_at_startup() -> None:
    names = [module.name for module in pkgutil.iter_modules(providers.__path__)]
    assert "email" in names
    for name in names:
        assert f"channels_delivery.providers.{name}" in sys.modules, name


@pytest.mark.parametrize("channel", list(Channel))
def test_every_channel_has_a_provider_unless_marked_not_yet(channel: Channel) -> None:
    registered = providers_for(channel)
    if channel in NOT_YET_PROVIDED:
        assert registered == [], (
            f"{channel} now has providers {registered}: remove it from NOT_YET_PROVIDED"
        )
    else:
        assert registered, f"no provider is registered for the {channel} channel"


def test_every_registered_provider_is_complete() -> None:
    for channel in Channel:
        for key in providers_for(channel):
            provider = provider_get(channel=channel, key=key)
            assert provider.channel == channel
            assert provider.key == key
            assert isinstance(provider.secret_fields, frozenset)
            assert isinstance(provider.config_fields, frozenset)
            # A secret is one of the config's fields, stored apart.
            assert provider.secret_fields <= provider.config_fields, (channel, key)
            assert callable(provider.validate_config)
            assert callable(provider.send)


def test_config_fields_are_what_validate_config_accepts() -> None:
    """An unknown field is refused by name; every declared one is not refused as unknown."""
    for channel in Channel:
        for key in providers_for(channel):
            provider = provider_get(channel=channel, key=key)
            unknown = "surely-not-a-field"
            with pytest.raises(ConfigInvalid) as refused:
                provider.validate_config({unknown: "x"})
            assert unknown in refused.value.errors, (channel, key)
            for field in provider.config_fields:
                errors: dict[str, str] = {}
                try:
                    provider.validate_config({field: None})
                except ConfigInvalid as invalid:
                    errors = invalid.errors
                assert errors.get(field) != "unknown field", (channel, key, field)


def test_built_in_channels_are_those_the_delivery_core_serves_itself() -> None:
    from channels_delivery.services.delivery import BUILT_IN

    assert frozenset(BUILT_IN) == BUILT_IN_CHANNELS
    for channel in BUILT_IN_CHANNELS:
        assert BUILT_IN[channel] in providers_for(channel)


def test_email_providers_are_registered() -> None:
    assert {"smtp", "console"} <= set(providers_for(Channel.EMAIL))
    assert provider_get(channel="email", key="smtp").secret_fields == frozenset({"password"})


def test_unknown_provider_is_a_lookup_error_naming_it() -> None:
    with pytest.raises(LookupError, match="no provider 'carrier-pigeon' for the email channel"):
        provider_get(channel="email", key="carrier-pigeon")


def test_a_second_provider_with_the_same_key_is_refused() -> None:
    class Impostor:
        channel: ClassVar[str] = Channel.EMAIL
        key: ClassVar[str] = "smtp"
        config_fields: ClassVar[frozenset[str]] = frozenset()
        secret_fields: ClassVar[frozenset[str]] = frozenset()

        def validate_config(self, config: Any) -> dict[str, Any]:
            return dict(config)

        def send(self, message: RenderedMessage, config: Any) -> ProviderResult:
            return ProviderResult(kind=ResultKind.ACCEPTED)

    with pytest.raises(ValueError, match="email/smtp is registered already"):
        provider_register(Impostor)


def test_reimporting_a_provider_module_is_harmless() -> None:
    module = importlib.import_module("channels_delivery.providers.email")
    assert provider_register(module.SmtpProvider) is module.SmtpProvider
