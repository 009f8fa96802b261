"""Staff opening a tenant's content: explicit, time-limited and audited.

Platform staff see figures on every page of the staff dashboard. To see a
tenant's messages and events (a support case, an abuse report), a staff member
with the ``dashboard.open_tenant_content`` permission (or a superuser) gives a
reason, which opens that tenant's content to them alone for
ACCESS_MINUTES; every page shown in that time is recorded against the grant.
Both records stay in the public schema, readable in the staff dashboard's
"Content access log", and can not be changed or deleted there.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django import forms
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import tenant_context

from channels_delivery.models import Message
from dashboard.models import ContentAccess, ContentAccessView
from rules_engine.models import Event
from tenants.models import Tenant

ACCESS_MINUTES = 30
MIN_REASON_LENGTH = 10
SHOWN = 50
PERMISSION = "dashboard.open_tenant_content"


class AccessRefused(Exception):
    """The user may not open tenant content, or gave no usable reason."""


def may_open_content(user: Any) -> bool:
    """Staff with the permission (superusers have every one)."""
    return bool(user.is_active and user.is_staff and user.has_perm(PERMISSION))


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label="Why do you need to see this tenant's content?",
        help_text=(
            f"Recorded with your name; opens the tenant's messages and events to you for "
            f"{ACCESS_MINUTES} minutes."
        ),
        min_length=MIN_REASON_LENGTH,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
    )


def content_access_grant(*, user: Any, tenant: Tenant, reason: str) -> ContentAccess:
    if not may_open_content(user):
        raise AccessRefused("you do not have the permission to open tenant content")
    reason = reason.strip()
    if len(reason) < MIN_REASON_LENGTH:
        raise AccessRefused(f"give a reason of at least {MIN_REASON_LENGTH} characters")
    now = timezone.now()
    return ContentAccess.objects.create(
        staff_user=user,
        tenant=tenant,
        reason=reason,
        granted_at=now,
        expires_at=now + timedelta(minutes=ACCESS_MINUTES),
    )


def content_access_current(*, user: Any, tenant: Tenant) -> ContentAccess | None:
    """The user's unexpired grant for the tenant, if any (and still permitted)."""
    if not may_open_content(user):
        return None
    return (
        ContentAccess.objects.filter(staff_user=user, tenant=tenant, expires_at__gt=timezone.now())
        .order_by("-expires_at")
        .first()
    )


@dataclass(frozen=True)
class TenantContent:
    messages: dict[str, Any]
    events: dict[str, Any]


def tenant_content_read(*, access: ContentAccess, path: str) -> TenantContent:
    """The tenant's latest messages and events, read in its schema; records the view."""
    with transaction.atomic():
        ContentAccessView.objects.create(access=access, path=path[:500], viewed_at=timezone.now())
    with tenant_context(access.tenant):
        messages = list(
            Message.objects.select_related("subscriber").order_by("-created_at")[:SHOWN]
        )
        events = list(Event.objects.order_by("-created_at")[:SHOWN])
    return TenantContent(
        messages={
            "headers": ["Created", "Channel", "Status", "Subscriber", "Title or subject", "Error"],
            "rows": [
                [
                    f"{timezone.localtime(message.created_at):%Y-%m-%d %H:%M}",
                    message.channel,
                    message.status,
                    message.subscriber.external_id if message.subscriber else "(erased)",
                    str(
                        message.content.get("subject")
                        or message.content.get("title")
                        or message.content.get("text", "")
                    )[:120],
                    message.error[:120],
                ]
                for message in messages
            ],
        },
        events={
            "headers": ["Received", "Event type", "Status", "Id"],
            "rows": [
                [
                    f"{timezone.localtime(event.created_at):%Y-%m-%d %H:%M}",
                    event.event_type_key,
                    event.status,
                    str(event.id),
                ]
                for event in events
            ],
        },
    )
