"""Signed links in emails: one-click unsubscribe (RFC 8058), the open pixel, and
click redirects.

Every link carries a token made with ``django.core.signing``: the tenant's
schema and what the link is about, so answering it needs no lookup table and
no tenant hostname. Each kind of token has its own salt, so one kind can never
be replayed as another; a click token carries its target URL, so the redirect
goes only where Herald wrote the link (no open redirect).
"""

import dataclasses
import html
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import signing
from django.db.models import Exists, OuterRef

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message
from channels_delivery.providers.base import RenderedMessage
from rules_engine.models import Event, EventType
from tenants.db import tenant_connection

UNSUBSCRIBE_SALT = "herald.tracking.unsubscribe"
OPEN_SALT = "herald.tracking.open"
CLICK_SALT = "herald.tracking.click"
UNSUBSCRIBE_PREFIX = "/u/"
OPEN_PREFIX = "/o/"
OPEN_SUFFIX = ".gif"
CLICK_PREFIX = "/c/"
# Links longer than this are left as they are: the token would make the URL
# longer than mail clients and proxies reliably keep.
CLICK_URL_MAX = 2000

# <a ... href="..."> or href='...'; the quote is kept to write the new value back.
_ANCHOR_HREF = re.compile(
    r"""(<a\b[^>]*?\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE | re.DOTALL
)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


class TokenInvalid(ValueError):
    """A tracking token that was not signed by Herald, was altered, or is malformed."""


@dataclass(frozen=True, kw_only=True)
class UnsubscribeToken:
    schema: str
    subscriber_id: int
    event_type: str
    channel: str


@dataclass(frozen=True, kw_only=True)
class OpenToken:
    schema: str
    message_id: uuid.UUID


@dataclass(frozen=True, kw_only=True)
class ClickToken:
    schema: str
    message_id: uuid.UUID
    url: str


def _public_url(path: str) -> str:
    return settings.HERALD_PUBLIC_URL.rstrip("/") + path


def _loads(token: str, *, salt: str) -> dict[str, Any]:
    try:
        value = signing.loads(token, salt=salt)
    except signing.BadSignature:
        raise TokenInvalid("the link's token is not valid (altered or not Herald's)") from None
    except ValueError:  # a compressed payload that does not decompress or parse
        raise TokenInvalid("the link's token is malformed") from None
    if not isinstance(value, dict):
        raise TokenInvalid("the link's token is malformed")
    return value


def _string(value: dict[str, Any], name: str) -> str:
    field = value.get(name)
    if not isinstance(field, str):
        raise TokenInvalid(f"the link's token has no {name}")
    return field


def _uuid(value: dict[str, Any], name: str) -> uuid.UUID:
    try:
        return uuid.UUID(_string(value, name))
    except ValueError:
        raise TokenInvalid(f"the link's token has a malformed {name}") from None


def _is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


# --- tokens ------------------------------------------------------------------------


def unsubscribe_token_make(
    *, schema: str, subscriber_id: int, event_type: str, channel: str = Channel.EMAIL
) -> str:
    payload = {"s": schema, "sub": subscriber_id, "et": event_type, "ch": str(channel)}
    return signing.dumps(payload, salt=UNSUBSCRIBE_SALT, compress=True)


def unsubscribe_token_read(token: str) -> UnsubscribeToken:
    """Raises TokenInvalid."""
    value = _loads(token, salt=UNSUBSCRIBE_SALT)
    subscriber_id = value.get("sub")
    if not isinstance(subscriber_id, int) or isinstance(subscriber_id, bool):
        raise TokenInvalid("the link's token has no subscriber")
    channel = _string(value, "ch")
    if channel not in Channel.values:
        raise TokenInvalid(f"the link's token names an unknown channel {channel!r}")
    return UnsubscribeToken(
        schema=_string(value, "s"),
        subscriber_id=subscriber_id,
        event_type=_string(value, "et"),
        channel=channel,
    )


def open_token_make(*, schema: str, message_id: uuid.UUID) -> str:
    return signing.dumps({"s": schema, "m": str(message_id)}, salt=OPEN_SALT)


def open_token_read(token: str) -> OpenToken:
    """Raises TokenInvalid."""
    value = _loads(token, salt=OPEN_SALT)
    return OpenToken(schema=_string(value, "s"), message_id=_uuid(value, "m"))


def click_token_make(*, schema: str, message_id: uuid.UUID, url: str) -> str:
    if not _is_web_url(url):
        raise ValueError(f"only http(s) links are tracked, not {url!r}")
    payload = {"s": schema, "m": str(message_id), "u": url}
    return signing.dumps(payload, salt=CLICK_SALT, compress=True)


def click_token_read(token: str) -> ClickToken:
    """Raises TokenInvalid, also for a target that is not an http(s) URL."""
    value = _loads(token, salt=CLICK_SALT)
    url = _string(value, "u")
    if not _is_web_url(url):
        raise TokenInvalid("the link's target is not an http(s) URL")
    return ClickToken(schema=_string(value, "s"), message_id=_uuid(value, "m"), url=url)


# --- links ---------------------------------------------------------------------------


def unsubscribe_url(*, schema: str, subscriber_id: int, event_type: str) -> str:
    token = unsubscribe_token_make(
        schema=schema, subscriber_id=subscriber_id, event_type=event_type
    )
    return _public_url(f"{UNSUBSCRIBE_PREFIX}{token}")


def tracking_rewrite(html_body: str, message: Message, *, schema: str | None = None) -> str:
    """``html_body`` with its http(s) links sent through signed click redirects and an
    open pixel added (before ``</body>``, or at the end)."""
    schema = schema or tenant_connection.schema_name

    def rewrite(match: re.Match[str]) -> str:
        quoted = match.group(2) if match.group(2) is not None else match.group(3)
        target = html.unescape(quoted).strip()
        if not _is_web_url(target) or len(target) > CLICK_URL_MAX:
            return match.group(0)  # mailto:, anchors, templates' placeholders: untouched
        token = click_token_make(schema=schema, message_id=message.id, url=target)
        return f'{match.group(1)}"{html.escape(_public_url(CLICK_PREFIX + token))}"'

    rewritten = _ANCHOR_HREF.sub(rewrite, html_body)
    pixel_src = _public_url(
        f"{OPEN_PREFIX}{open_token_make(schema=schema, message_id=message.id)}{OPEN_SUFFIX}"
    )
    pixel = (
        f'<img src="{html.escape(pixel_src)}" width="1" height="1" alt="" '
        'style="display:none;border:0;width:1px;height:1px">'
    )
    ends = list(_BODY_END.finditer(rewritten))
    if ends:
        at = ends[-1].start()
        return rewritten[:at] + pixel + rewritten[at:]
    return rewritten + pixel


def tracking_prepare(rendered: RenderedMessage, *, message: Message) -> RenderedMessage:
    """The email as it is sent: with List-Unsubscribe headers (RFC 8058) unless its
    event type is critical, and with tracked links and a pixel when it has html.
    Other channels are returned as they are."""
    if rendered.channel != Channel.EMAIL:
        return rendered
    schema = tenant_connection.schema_name
    headers = dict(rendered.headers)
    # One query: the event's type, and whether it is critical (no unsubscribing).
    critical_type = EventType.objects.filter(key=OuterRef("event_type_key"), is_critical=True)
    row = (
        Event.objects.filter(pk=message.event_id)
        .annotate(critical=Exists(critical_type))
        .values_list("event_type_key", "critical")
        .first()
    )
    event_type, critical = row if row is not None else ("", False)
    if message.subscriber_id is not None and event_type and not critical:
        link = unsubscribe_url(
            schema=schema, subscriber_id=message.subscriber_id, event_type=event_type
        )
        headers["List-Unsubscribe"] = f"<{link}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    content = rendered.content
    body = content.get("html")
    if isinstance(body, str) and body:
        content = {**content, "html": tracking_rewrite(body, message, schema=schema)}
    return dataclasses.replace(rendered, headers=headers, content=content)
