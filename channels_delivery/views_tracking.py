"""The links in emails, answered on Herald's public address for every tenant:
``/u/<token>`` (one-click unsubscribe, RFC 8058), ``/o/<token>.gif`` (the open
pixel) and ``/c/<token>`` (click redirect).

The tenant middleware hands these paths here before any tenant lookup: the
signed token names the schema, and each answer runs in it with
``schema_context``. No login and no CSRF token: mail clients post the
unsubscribe themselves, and the signature is the proof.
"""

import base64
import html
import logging
import uuid

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django_tenants.utils import get_public_schema_name, schema_context

from channels_delivery.models import Message, MessageStatus
from channels_delivery.services.delivery import TransitionRefused, message_transition
from channels_delivery.tracking import (
    CLICK_PREFIX,
    OPEN_PREFIX,
    OPEN_SUFFIX,
    UNSUBSCRIBE_PREFIX,
    TokenInvalid,
    UnsubscribeToken,
    click_token_read,
    open_token_read,
    unsubscribe_token_read,
)
from rules_engine.models import Subscriber
from rules_engine.services.preferences import (
    CriticalEventTypeOptOut,
    PreferenceSetting,
    preference_subscriber_set,
)
from rules_engine.services.subscribers import InvalidInput
from tenants.models import Tenant

logger = logging.getLogger(__name__)

TRACKING_PREFIXES = (UNSUBSCRIBE_PREFIX, OPEN_PREFIX, CLICK_PREFIX)
# The smallest transparent GIF (1x1, 43 bytes).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


class UnsubscribeRefused(ValueError):
    """A genuine unsubscribe token that can not be honoured: the tenant or the
    subscriber is gone, or the event type is critical."""


def is_tracking_path(path: str) -> bool:
    return path.startswith(TRACKING_PREFIXES)


def _tenant_schema(schema: str) -> bool:
    """Whether ``schema`` is an active tenant's: a token outlives a deleted tenant."""
    if schema == get_public_schema_name():
        return False
    return Tenant.objects.filter(schema_name=schema, is_active=True).exists()


def _status_record(*, schema: str, message_id: uuid.UUID, to: str) -> bool:
    """Move the message to ``to`` if its status allows; False when it does not
    (opened twice, clicked before, never sent) or the message is gone."""
    if not _tenant_schema(schema):
        return False
    with schema_context(schema):
        try:
            message_transition(message_id=message_id, to=to)
        except (TransitionRefused, Message.DoesNotExist):
            return False
    return True


def unsubscribe_apply(*, token: str) -> UnsubscribeToken:
    """Opt the token's subscriber out of its event type on its channel, in the token's
    tenant only. Idempotent. Raises TokenInvalid or UnsubscribeRefused."""
    read = unsubscribe_token_read(token)
    if not _tenant_schema(read.schema):
        raise UnsubscribeRefused("this sender no longer sends through Herald")
    with schema_context(read.schema):
        subscriber = Subscriber.objects.filter(pk=read.subscriber_id).first()
        if subscriber is None:
            raise UnsubscribeRefused("this address is no longer on the sender's list")
        setting = PreferenceSetting(channel=read.channel, enabled=False, event_type=read.event_type)
        try:
            preference_subscriber_set(subscriber=subscriber, settings=[setting])
        except CriticalEventTypeOptOut:
            raise UnsubscribeRefused(
                f"{read.event_type} messages are essential and can not be unsubscribed from"
            ) from None
        except InvalidInput as invalid:
            raise UnsubscribeRefused(f"the unsubscribe link is not usable: {invalid}") from None
    return read


def _page(*, title: str, body: str, status: int = 200) -> HttpResponse:
    document = (
        "<!doctype html><html><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>"
        '<body style="font-family:sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem">'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HttpResponse(document, status=status, headers=NO_STORE)


def _bad_link(reason: str) -> HttpResponse:
    return _page(title="This link is not valid", body=f"<p>{html.escape(reason)}.</p>", status=400)


def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET: a page whose button posts here. POST (the mail client's one-click, or
    the button): record the opt-out."""
    if request.method == "GET" or request.method == "HEAD":
        try:
            read = unsubscribe_token_read(token)
        except TokenInvalid as invalid:
            return _bad_link(str(invalid))
        form = (
            f"<p>Stop receiving <strong>{html.escape(read.event_type)}</strong> "
            f"messages by {html.escape(read.channel)}?</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return _page(title="Unsubscribe", body=form)
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD, POST"})
    try:
        read = unsubscribe_apply(token=token)
    except (TokenInvalid, UnsubscribeRefused) as refused:
        return _bad_link(str(refused))
    except DatabaseError:
        logger.exception("database unavailable while unsubscribing")
        return HttpResponse("Service unavailable", status=503, headers={"Retry-After": "5"})
    return _page(
        title="You are unsubscribed",
        body=f"<p>You will no longer receive {html.escape(read.event_type)} messages "
        f"by {html.escape(read.channel)}.</p>",
    )


def open_pixel(request: HttpRequest, token: str) -> HttpResponse:
    """Mark the message opened and answer the pixel; a bad token is a 400."""
    try:
        read = open_token_read(token)
    except TokenInvalid:
        return HttpResponse(status=400, headers=NO_STORE)
    try:
        _status_record(schema=read.schema, message_id=read.message_id, to=MessageStatus.OPENED)
    except DatabaseError:
        # The picture still shows; losing one open is better than a broken image.
        logger.exception("database unavailable while recording an open")
    return HttpResponse(PIXEL_GIF, content_type="image/gif", headers=NO_STORE)


def click(request: HttpRequest, token: str) -> HttpResponse:
    """Mark the message clicked and redirect to the URL signed in the token, never
    to anything the request adds."""
    try:
        read = click_token_read(token)
    except TokenInvalid as invalid:
        return _bad_link(str(invalid))
    try:
        _status_record(schema=read.schema, message_id=read.message_id, to=MessageStatus.CLICKED)
    except DatabaseError:
        # The recipient still gets where they were going.
        logger.exception("database unavailable while recording a click")
    return HttpResponseRedirect(read.url, headers=NO_STORE)


def tracking_dispatch(request: HttpRequest) -> HttpResponse:
    """Answer a path under one of TRACKING_PREFIXES."""
    path = request.path_info
    if path.startswith(UNSUBSCRIBE_PREFIX):
        return unsubscribe(request, path.removeprefix(UNSUBSCRIBE_PREFIX))
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    if path.startswith(OPEN_PREFIX):
        token = path.removeprefix(OPEN_PREFIX)
        if not token.endswith(OPEN_SUFFIX):
            return HttpResponse(status=404)
        return open_pixel(request, token.removesuffix(OPEN_SUFFIX))
    return click(request, path.removeprefix(CLICK_PREFIX))
