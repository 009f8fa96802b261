"""Chat through incoming webhooks: Slack's format (which Mattermost and
Rocket.Chat accept too) and Discord's.

The address is the subscriber's own hook URL (``channels["chat"]``), so it goes
through the SSRF guard like any tenant-supplied URL, and a refusal of that
URL is the address's failure (``http.address_result``).
"""

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from channels_delivery.catalogue import Channel
from channels_delivery.providers.base import (
    ConfigInvalid,
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_register,
)
from channels_delivery.providers.http import address_result, json_post
from channels_delivery.providers.sms import HttpAnswer
from channels_delivery.providers.webhook import timeout_checked

DISCORD_CONTENT_MAX = 2000  # Discord refuses longer message content
TRUNCATED = "…"


def _hook_url(address: Mapping[str, Any]) -> str:
    # {"url": ...} when the subscriber's channels["chat"] is an object; "target"
    # when it is the bare URL (services.delivery puts a plain value there).
    for name in ("url", "target"):
        url = address.get(name)
        if isinstance(url, str) and url:
            return url
    return ""


def _text(message: RenderedMessage) -> str:
    text = message.content.get("text")
    return text if isinstance(text, str) else ""


def _blocks(value: object) -> tuple[list[Any] | None, str]:
    """(Slack blocks, why they are unusable); the template renders them as a JSON list."""
    if value is None or value == "":
        return None, ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None, "the message's blocks are not valid JSON"
    if not isinstance(value, list):
        return None, "the message's blocks must be a JSON list of Slack blocks"
    return value, ""


def _chat_send(
    *, message: RenderedMessage, config: Mapping[str, Any], payload: Mapping[str, Any]
) -> ProviderResult:
    url = _hook_url(message.address)
    if not url:
        return ProviderResult(kind=ResultKind.PERMANENT, error="the subscriber has no chat URL")
    body = json.dumps(payload, ensure_ascii=False).encode()
    outcome = json_post(url=url, body=body, headers={}, timeout=config["timeout"])
    detail = ""
    if isinstance(outcome, HttpAnswer) and not 200 <= outcome.status < 300:
        # Slack answers an error as a short plain-text code: invalid_token, no_service...
        detail = outcome.body.decode("utf-8", errors="replace").strip()[:200]
    return address_result(outcome, detail=detail)


@provider_register
class SlackProvider:
    """Slack-compatible incoming webhook: {"text", "blocks"?}. Config: timeout."""

    channel: ClassVar[str] = Channel.CHAT.value
    key: ClassVar[str] = "slack"
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    known_fields: ClassVar[frozenset[str]] = frozenset({"timeout"})
    config_fields: ClassVar[frozenset[str]] = known_fields

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return timeout_checked(config, known=self.known_fields)

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        try:
            config = self.validate_config(config)
        except ConfigInvalid as invalid:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(invalid))
        text = _text(message)
        if not text.strip():
            return ProviderResult(kind=ResultKind.PERMANENT, error="the message has no text")
        blocks, unusable = _blocks(message.content.get("blocks"))
        if unusable:
            return ProviderResult(kind=ResultKind.PERMANENT, error=unusable)
        # ``text`` stays with blocks: Slack shows it in notifications and to screen readers.
        payload: dict[str, Any] = {"text": text}
        if blocks is not None:
            payload["blocks"] = blocks
        return _chat_send(message=message, config=config, payload=payload)


@provider_register
class DiscordProvider:
    """Discord incoming webhook: {"content"}, cut to 2,000 characters (blocks
    are Slack's and are not sent). Config: timeout."""

    channel: ClassVar[str] = Channel.CHAT.value
    key: ClassVar[str] = "discord"
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    known_fields: ClassVar[frozenset[str]] = frozenset({"timeout"})
    config_fields: ClassVar[frozenset[str]] = known_fields

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return timeout_checked(config, known=self.known_fields)

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        try:
            config = self.validate_config(config)
        except ConfigInvalid as invalid:
            return ProviderResult(kind=ResultKind.CONFIG_ERROR, error=str(invalid))
        text = _text(message)
        if not text.strip():
            return ProviderResult(kind=ResultKind.PERMANENT, error="the message has no text")
        if len(text) > DISCORD_CONTENT_MAX:
            text = text[: DISCORD_CONTENT_MAX - len(TRUNCATED)] + TRUNCATED
        # Mentions in rendered text must not ping @everyone or roles.
        payload = {"content": text, "allowed_mentions": {"parse": []}}
        return _chat_send(message=message, config=config, payload=payload)
