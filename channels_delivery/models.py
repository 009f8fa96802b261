"""Per-tenant delivery records: a Message per recipient and channel, and every
attempt to deliver it (append-only)."""

import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from channels_delivery.catalogue import Channel


class MessageStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    DELIVERED = "delivered", "Delivered"
    OPENED = "opened", "Opened"
    CLICKED = "clicked", "Clicked"
    READ = "read", "Read"
    FAILED = "failed", "Failed"
    BOUNCED = "bounced", "Bounced"
    CANCELLED = "cancelled", "Cancelled"


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event = models.ForeignKey(
        "rules_engine.Event", on_delete=models.CASCADE, related_name="messages"
    )
    # Erasure removes the subscriber and the message's personal content, but
    # keeps the row so counts stay right.
    subscriber = models.ForeignKey(
        "rules_engine.Subscriber",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    channel = models.CharField(max_length=20, choices=Channel.choices)
    status = models.CharField(
        max_length=20, choices=MessageStatus.choices, default=MessageStatus.QUEUED
    )
    content = models.JSONField(default=dict, blank=True)
    # The versions that produced this message; kept when the rule or template
    # is edited, cleared only if it is deleted.
    rule_version = models.ForeignKey(
        "rules_engine.RuleVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    template_version = models.ForeignKey(
        "rules_engine.TemplateVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    # The template variant rendered (after fallback), e.g. "pt-BR".
    locale = models.CharField(max_length=35, blank=True)
    # Not before this time: a rule's delay, or the opening of the subscriber's
    # send window. NULL: as soon as possible. The delivery sweeper waits for it.
    send_after = models.DateTimeField(null=True, blank=True)
    # Delivery (channels_delivery.services.delivery): how many attempts were made,
    # when the next may start (a retry waits here, not in the broker), the
    # integration used last (after a failover: the one to use next), and when the
    # message reached each outcome.
    # (``attempts`` is the reverse relation to the DeliveryAttempt rows.)
    # db_default too: the pipeline writes messages with COPY, which knows no Django default.
    attempt_count = models.PositiveIntegerField(default=0, db_default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    integration = models.ForeignKey(
        "channels_delivery.Integration",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
    )
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    # Engagement, where the channel reports it (email tracking, the inbox).
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)
    # Why the message failed or is waiting to be retried, for the tenant's timeline.
    error = models.CharField(max_length=500, blank=True, default="", db_default="")
    # In-app inbox state, set by the subscriber through /api/v1/inbox (only
    # in_app messages have it): shown in the feed, opened, put away.
    seen_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["subscriber", "-created_at"], name="message_subscriber_idx"),
            models.Index(fields=["status", "-created_at"], name="message_status_idx"),
            # The dashboard's message log filtered by channel, newest first.
            models.Index(fields=["channel", "-created_at"], name="message_channel_idx"),
            # The inbox feed: one subscriber's in_app messages, archived or not, newest first.
            models.Index(
                fields=["subscriber", "channel", "archived_at", "-created_at"],
                name="message_inbox_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.id}"


class AttemptOutcome(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    RETRYABLE = "retryable", "Failed, will retry"
    PERMANENT = "permanent", "Failed permanently"
    CONFIG_ERROR = "config_error", "Configuration error"


class DeliveryAttempt(models.Model):
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempts")
    # The integration tried: two integrations may use the same provider, and
    # failover counts the retryable failures of each.
    integration = models.ForeignKey(
        "channels_delivery.Integration",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="attempts",
    )
    provider = models.CharField(max_length=50)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=AttemptOutcome.choices)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)
    provider_message_id = models.CharField(max_length=255, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["started_at"]
        indexes = [
            # An ESP's tracking webhook names the message by the id the ESP gave it
            # (channels_delivery.esp_tracking).
            models.Index(fields=["provider_message_id"], name="attempt_provider_msg_id_idx")
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.outcome} {self.started_at:%Y-%m-%d %H:%M:%S}"


class Integration(models.Model):
    """A tenant's account with one provider on one channel.

    ``config`` holds only the fields a tenant admin may see again; the
    provider's ``secret_fields`` live in ``secrets``, a Fernet token of a JSON
    object (channels_delivery.crypto). It is not editable so that no model form,
    admin page included, ever renders or accepts it: services write it.
    """

    channel = models.CharField(max_length=20, choices=Channel.choices)
    provider = models.CharField(max_length=50)
    name = models.CharField(max_length=100)
    config = models.JSONField(default=dict, blank=True)
    secrets = models.TextField(blank=True, editable=False)
    # Lower goes first: the primary, then the fallbacks of the same channel.
    priority = models.IntegerField(default=0)
    enabled = models.BooleanField(default=True)
    # The provider's sending limit: at most this many messages a second through
    # this integration, across all workers (a token bucket in Redis); NULL: no
    # limit. A message over the limit waits for a token, no attempt spent.
    rate_limit_per_second = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["channel", "priority", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "name"], name="integration_channel_name_uniq"
            )
        ]
        indexes = [
            models.Index(fields=["channel", "priority"], name="integration_channel_prio_idx")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.channel}/{self.provider})"


class WebhookEndpoint(models.Model):
    """A tenant's URL that receives events, signed the Standard Webhooks way.

    ``secrets`` is a Fernet token (channels_delivery.crypto) of the current
    ``whsec_`` secret and, during a rotation, the previous one with its expiry;
    services write it, so it is not editable and no form renders it. The URL is
    checked against the SSRF guard when saved through a form (``clean``) or a
    service, and again on every connection.
    """

    url = models.URLField(max_length=2048)
    description = models.CharField(max_length=200, blank=True)
    # Event type keys this endpoint receives; empty: every event type.
    event_types = models.JSONField(default=list, blank=True)
    secrets = models.TextField(blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    # When deliveries started failing without a success since; NULL while healthy.
    # After HERALD_WEBHOOK_DISABLE_AFTER_DAYS of that the endpoint is disabled.
    failing_since = models.DateTimeField(null=True, blank=True)
    # Until then, deliveries to this endpoint run in the slow lane (its own queue
    # and workers), because it answered slowly or not at all: a slow receiver
    # must not hold up everyone else's.
    slow_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"webhook endpoint {self.pk} ({self.url[:80]})"

    def clean(self) -> None:
        from channels_delivery.ssrf import UnsafeUrl, url_check

        try:
            url_check(self.url)
        except UnsafeUrl as refused:
            raise ValidationError({"url": refused.reason}) from None

    def receives(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class InboxSettings(models.Model):
    """The tenant's in-app inbox secret: one row per tenant schema (pk 1).

    The tenant's backend signs each subscriber's external id with it
    (channels_delivery.inbox_auth) so its frontend can read that subscriber's
    inbox without an API key. Stored as a Fernet token (channels_delivery.crypto),
    not editable so no form ever shows it.
    """

    SINGLETON_PK = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_PK, editable=False)
    secret = models.TextField(editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    rotated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "inbox settings"
        verbose_name_plural = "inbox settings"
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="inbox_settings_singleton")
        ]

    def __str__(self) -> str:
        return "Inbox settings"


class PushSettings(models.Model):
    """The tenant's VAPID key pair for web push: one row per tenant schema (pk 1).

    Generated on first use (channels_delivery.services.push). The private key is
    a Fernet token (channels_delivery.crypto); the public key is what the tenant's
    frontend passes to ``pushManager.subscribe`` as ``applicationServerKey``.
    """

    SINGLETON_PK = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_PK, editable=False)
    private_key = models.TextField(editable=False)
    public_key = models.CharField(max_length=100, editable=False)  # base64url, uncompressed point
    contact = models.CharField(max_length=255)  # the VAPID "sub" claim: mailto: or https:
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "push settings"
        verbose_name_plural = "push settings"
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="push_settings_singleton")
        ]

    def __str__(self) -> str:
        return "Push settings"


class CallbackType(models.TextChoices):
    """What a webhook endpoint may subscribe to besides event types: news about
    Herald's own work, sent to the tenant's endpoints (services.callbacks)."""

    MESSAGE_SENT = "message.sent", "A message was sent"
    MESSAGE_DELIVERED = "message.delivered", "A message was delivered"
    MESSAGE_FAILED = "message.failed", "A message failed"
    MESSAGE_READ = "message.read", "A message was read"
    ENDPOINT_DISABLED = "endpoint.disabled", "A webhook endpoint was disabled"


class CallbackStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class StatusCallback(models.Model):
    """One status callback to one endpoint: an outbox row, delivered, signed and
    retried like any webhook (services.callbacks). Its id is the ``webhook-id``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="callbacks"
    )
    type = models.CharField(max_length=40, choices=CallbackType.choices)
    # The message it is about, if any (kept as a plain id: the callback outlives it).
    message_id = models.UUIDField(null=True, blank=True)
    payload = models.JSONField()
    status = models.CharField(
        max_length=20, choices=CallbackStatus.choices, default=CallbackStatus.QUEUED
    )
    attempt_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    response_status = models.PositiveIntegerField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="callback_status_idx"),
            models.Index(fields=["endpoint", "-created_at"], name="callback_endpoint_idx"),
            # A message's timeline lists the callbacks it caused.
            models.Index(fields=["message_id"], name="callback_message_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} to endpoint {self.endpoint_id} ({self.status})"


# --- Analytics rollup (services.stats) -----------------------------------------


class StatsDelta(models.Model):
    """What changed since the last fold: written by database triggers on Message
    and Event (migration 0010) in the writing transaction, so no code path can
    move a message without counting it; folded into StatsHour by a worker."""

    id = models.BigAutoField(primary_key=True)
    hour = models.DateTimeField()
    channel = models.CharField(max_length=20, blank=True)
    provider = models.CharField(max_length=50, blank=True)
    metric = models.CharField(max_length=30)
    amount = models.BigIntegerField()

    class Meta:
        db_table = "channels_delivery_statsdelta"

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.channel} {self.metric} {self.amount}"


class StatsHour(models.Model):
    """Per hour (UTC), channel and provider: how many messages reached each state
    in that hour (metric ``sent`` counts ``sent_at`` in the hour, and so on), the
    events received (channel ""), and the event-to-delivery latency histogram
    (metrics ``latency_le_<ms>``)."""

    id = models.BigAutoField(primary_key=True)
    hour = models.DateTimeField()
    channel = models.CharField(max_length=20, blank=True)
    provider = models.CharField(max_length=50, blank=True)
    metric = models.CharField(max_length=30)
    value = models.BigIntegerField(default=0)

    class Meta:
        db_table = "channels_delivery_statshour"
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "channel", "provider", "metric"], name="statshour_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.channel} {self.metric} {self.value}"
