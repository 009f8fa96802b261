"""Chat providers (Slack-compatible and Discord incoming webhooks) over a real
local HTTP sink: the payload each service expects, and what its answers mean."""

import json
import time
from typing import Any

import pytest

from channels_delivery import ssrf
from channels_delivery.providers.base import (
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_get,
    providers_for,
)
from channels_delivery.providers.chat import DiscordProvider, SlackProvider
from tests.channels_delivery.sinks import HttpSink

BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Order A-17* shipped"}}]


@pytest.fixture(autouse=True)
def _loopback_allowed(settings: Any) -> None:
    """The sink listens on 127.0.0.1, which the SSRF guard refuses in production."""
    settings.HERALD_ALLOW_LOOPBACK_URLS = True


def chat(url: str, text: Any = "Order A-17 shipped", blocks: Any = None) -> RenderedMessage:
    content: dict[str, Any] = {"text": text}
    if blocks is not None:
        content["blocks"] = blocks
    return RenderedMessage(message_id="m-1", channel="chat", content=content, address={"url": url})


def slack(message: RenderedMessage, **config: Any) -> ProviderResult:
    return SlackProvider().send(message, {"timeout": 2, **config})


def test_slack_and_discord_are_registered_for_chat() -> None:
    assert providers_for("chat") == ["discord", "slack"]
    assert isinstance(provider_get(channel="chat", key="slack"), SlackProvider)
    assert isinstance(provider_get(channel="chat", key="discord"), DiscordProvider)


def test_slack_posts_text_and_blocks_as_json(sink: HttpSink) -> None:
    sink.reply(200, "ok")
    result = slack(chat(f"{sink.url}/services/T0/B0/x", blocks=json.dumps(BLOCKS)))
    assert result.kind is ResultKind.ACCEPTED
    [request] = sink.requests
    assert request.method == "POST"
    assert request.path == "/services/T0/B0/x"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {"text": "Order A-17 shipped", "blocks": BLOCKS}


def test_slack_without_blocks_sends_only_text(sink: HttpSink) -> None:
    slack(chat(f"{sink.url}/hook", text="héllo ☕"))
    [request] = sink.requests
    assert json.loads(request.body) == {"text": "héllo ☕"}


@pytest.mark.parametrize(
    ("message_args", "error"),
    [
        ({"text": ""}, "has no text"),
        ({"text": None}, "has no text"),
        ({"blocks": "[not json"}, "not valid JSON"),
        ({"blocks": '{"type": "section"}'}, "must be a JSON list"),
    ],
)
def test_an_undeliverable_message_is_permanent_without_a_request(
    sink: HttpSink, message_args: dict[str, Any], error: str
) -> None:
    result = slack(chat(f"{sink.url}/hook", **message_args))
    assert result.kind is ResultKind.PERMANENT
    assert error in result.error
    assert sink.requests == []


def test_a_bare_chat_url_in_the_profile_is_used(sink: HttpSink) -> None:
    message = RenderedMessage(
        message_id="m-1",
        channel="chat",
        content={"text": "hi"},
        address={"subscriber": "u-1", "target": f"{sink.url}/bare"},
    )
    assert slack(message).kind is ResultKind.ACCEPTED
    assert [request.path for request in sink.requests] == ["/bare"]


def test_a_subscriber_without_a_chat_url_is_permanent() -> None:
    result = slack(chat(""))
    assert result.kind is ResultKind.PERMANENT
    assert "no chat URL" in result.error


def test_slack_error_codes_are_shown_and_4xx_is_permanent(sink: HttpSink) -> None:
    sink.reply(404, "no_service")
    result = slack(chat(f"{sink.url}/hook"))
    assert result.kind is ResultKind.PERMANENT
    assert result.error == "HTTP 404: no_service"
    sink.reply(403, "invalid_token")
    result = slack(chat(f"{sink.url}/hook"))
    assert result.kind is ResultKind.PERMANENT
    assert "invalid_token" in result.error
    assert result.disable_endpoint is False


def test_a_redirect_is_not_followed(sink: HttpSink) -> None:
    sink.reply(302, headers={"Location": "http://127.0.0.1:1/elsewhere"})
    result = slack(chat(f"{sink.url}/hook"))
    assert result.kind is ResultKind.PERMANENT
    assert "redirects are not followed" in result.error
    assert len(sink.requests) == 1


def test_429_and_5xx_are_retryable_with_retry_after(sink: HttpSink) -> None:
    sink.reply(429, "rate_limited", headers={"Retry-After": "30"})
    result = slack(chat(f"{sink.url}/hook"))
    assert result.kind is ResultKind.RETRYABLE
    assert result.retry_after_seconds == 30
    sink.reply(500)
    assert slack(chat(f"{sink.url}/hook")).kind is ResultKind.RETRYABLE


def test_a_timeout_is_retryable(sink: HttpSink) -> None:
    sink.reply(200, delay=3)
    started = time.monotonic()
    result = slack(chat(f"{sink.url}/hook"), timeout=0.3)
    assert result.kind is ResultKind.RETRYABLE
    assert time.monotonic() - started < 2


def test_a_private_chat_url_is_refused_as_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ssrf, "resolver", lambda host, port: ["192.168.1.20"])
    result = slack(chat("https://chat.intranet.test/hooks/abc"))
    assert result.kind is ResultKind.CONFIG_ERROR
    assert "192.168.1.20" in result.error


def test_bad_config_is_a_config_error(sink: HttpSink) -> None:
    result = SlackProvider().send(chat(f"{sink.url}/hook"), {"timeout": 0})
    assert result.kind is ResultKind.CONFIG_ERROR
    assert "timeout" in result.error
    assert sink.requests == []


def test_discord_posts_content_without_mentions(sink: HttpSink) -> None:
    sink.reply(204)
    result = DiscordProvider().send(
        chat(f"{sink.url}/api/webhooks/1/x", text="@everyone shipped", blocks=BLOCKS),
        {"timeout": 2},
    )
    assert result.kind is ResultKind.ACCEPTED
    [request] = sink.requests
    assert json.loads(request.body) == {
        "content": "@everyone shipped",
        "allowed_mentions": {"parse": []},
    }


def test_discord_content_is_cut_to_its_limit(sink: HttpSink) -> None:
    DiscordProvider().send(chat(f"{sink.url}/hook", text="x" * 2500), {})
    [request] = sink.requests
    content = json.loads(request.body)["content"]
    assert len(content) == 2000
    assert content.endswith("…")
