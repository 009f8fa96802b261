"""Per-tenant delivery records: a Message per recipient and channel, and every
attempt to deliver it (append-only)."""

import uuid

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
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["subscriber", "-created_at"], name="message_subscriber_idx"),
            models.Index(fields=["status", "-created_at"], name="message_status_idx"),
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
