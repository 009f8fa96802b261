"""Per-tenant models: what happens (event types, events), to whom (subscribers,
topics, preferences), and what to send (rules, templates, layouts)."""

import uuid
from typing import Any

from django.db import models
from django.db.models import Q
from django.db.models.functions import Upper
from django.utils.timezone import now

from channels_delivery.catalogue import Channel


class EventType(models.Model):
    key = models.CharField(max_length=200, unique=True, help_text="e.g. order.shipped")
    name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    category = models.CharField(max_length=100, blank=True, db_index=True)
    payload_schema = models.JSONField(
        null=True, blank=True, help_text="JSON Schema every payload of this type must match."
    )
    # Bumped whenever payload_schema changes: compiled validators are cached per version.
    schema_version = models.PositiveIntegerField(default=1, editable=False)
    sample_payload = models.JSONField(default=dict, blank=True)
    is_critical = models.BooleanField(
        default=False, help_text="Critical events reach subscribers even when they opted out."
    )
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class Subscriber(models.Model):
    external_id = models.CharField(max_length=200, unique=True)
    email = models.EmailField(blank=True)
    phone = models.CharField(max_length=16, blank=True, help_text="E.164, e.g. +14155550100")
    name = models.CharField(max_length=200, blank=True)
    locale = models.CharField(max_length=35, blank=True)
    timezone = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    # Addresses that are not email or phone: push subscriptions, chat webhooks.
    channels = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["external_id"]
        indexes = [
            models.Index(fields=["created_at", "id"], name="subscriber_created_idx"),
            models.Index(Upper("email"), name="subscriber_email_ci_idx"),
        ]

    def __str__(self) -> str:
        return self.external_id


class Topic(models.Model):
    key = models.CharField(max_length=200, unique=True)
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)
    subscribers: "models.ManyToManyField[Subscriber, TopicMembership]" = models.ManyToManyField(
        Subscriber, through="TopicMembership", related_name="topics"
    )

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class TopicMembership(models.Model):
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="memberships")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="memberships")
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["topic", "subscriber"], name="topic_member_once"),
        ]

    def __str__(self) -> str:
        return f"{self.topic_id}:{self.subscriber_id}"


class Preference(models.Model):
    """Opt-in or out of a channel, for one event type, one category, or everything.

    A row without a subscriber is the tenant's default for everybody.
    """

    subscriber = models.ForeignKey(
        Subscriber, null=True, blank=True, on_delete=models.CASCADE, related_name="preferences"
    )
    event_type_key = models.CharField(max_length=200, blank=True)
    category = models.CharField(max_length=100, blank=True)
    channel = models.CharField(max_length=20, choices=Channel.choices)
    enabled = models.BooleanField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscriber", "event_type_key", "category", "channel"],
                name="preference_once",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=Q(event_type_key="") | Q(category=""),
                name="preference_one_scope",
            ),
        ]

    def __str__(self) -> str:
        scope = self.event_type_key or self.category or "*"
        return f"{self.subscriber_id or 'default'} {scope} {self.channel}={self.enabled}"


class EventStatus(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    QUEUED = "queued", "Queued for the pipeline"
    PROCESSING = "processing", "Processing"
    PROCESSED = "processed", "Processed"
    NO_MATCH = "no_match", "No rule matched"
    FAILED = "failed", "Failed"


class Event(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event_type_key = models.CharField(max_length=200, db_index=True)
    recipients = models.JSONField(default=list, blank=True)
    topic = models.CharField(max_length=200, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    actor = models.JSONField(null=True, blank=True)
    tenant_data = models.JSONField(null=True, blank=True)
    send_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=20, choices=EventStatus.choices, default=EventStatus.ACCEPTED
    )
    # NULL, not "", for "no key": the unique index covers only rows with a key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_hash = models.CharField(max_length=64, blank=True)
    # The pipeline's record of what it decided and why (rules, recipients).
    outcome = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=now, db_index=True)
    # When the dispatcher (or the sweeper) last handed the event to the pipeline.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="event_idempotency_key_once",
            ),
        ]
        indexes = [
            models.Index(
                fields=["status", "created_at"],
                name="event_pending_idx",
                condition=Q(status__in=["accepted", "queued", "processing"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type_key} {self.id}"


# --- rules, templates and layouts ------------------------------------------------
#
# A rule and a template are a row of plain fields plus immutable versions: an edit
# of what they do makes version n+1, and every Message points at the versions that
# produced it. Services make versions (rules_engine.services.rules/templates) under
# a row lock on the parent, so two concurrent edits get n+1 and n+2.


class VersionImmutable(Exception):
    """A saved version is history: an edit makes a new one."""


class Layout(models.Model):
    """The brand wrapper around an email body; ``{{ content }}`` marks where it goes.

    Not versioned: a message stores its rendered output, so an edit changes only
    messages rendered after it.
    """

    key = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200, blank=True)
    html = models.TextField(help_text="Must contain {{ content }}, where the email's body goes.")
    text = models.TextField(blank=True, help_text="Plain-text wrapper; may use {{ content }}.")
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class Template(models.Model):
    key = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200, blank=True)
    # Fixed when created: the fields a version must have depend on it.
    channel = models.CharField(max_length=20, choices=Channel.choices)
    description = models.TextField(blank=True)
    current_version = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class TemplateVersion(models.Model):
    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    # {locale: {field: Jinja source}}, e.g. {"en": {"subject": "…", "html": "…"}}.
    variants = models.JSONField()
    fallback_locale = models.CharField(max_length=35)
    # Undefined variables raise instead of rendering as "".
    strict = models.BooleanField(default=False)
    layout = models.ForeignKey(
        Layout, null=True, blank=True, on_delete=models.SET_NULL, related_name="template_versions"
    )
    created_at = models.DateTimeField(default=now, editable=False)
    created_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["template", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["template", "version"], name="template_version_once"),
        ]

    def __str__(self) -> str:
        return f"{self.template_id} v{self.version}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise VersionImmutable(f"template version {self.pk} is saved; make a new version")
        super().save(*args, **kwargs)


class Rule(models.Model):
    name = models.CharField(max_length=200)
    event_type = models.ForeignKey(EventType, on_delete=models.PROTECT, related_name="rules")
    enabled = models.BooleanField(default=True)
    # Rules of one event type are evaluated in (order, id).
    order = models.IntegerField(default=0)
    current_version = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["order", "id"]
        indexes = [
            models.Index(fields=["event_type", "order", "id"], name="rule_evaluation_idx"),
        ]

    def __str__(self) -> str:
        return self.name


class RuleVersion(models.Model):
    """What a rule does, as of one edit (the shapes are rules_engine.rule_options)."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    condition = models.TextField(blank=True, help_text="CEL; empty means always.")
    actions = models.JSONField()
    recipients = models.JSONField()
    delay_seconds = models.PositiveIntegerField(null=True, blank=True)
    digest = models.JSONField(null=True, blank=True)
    throttle = models.JSONField(null=True, blank=True)
    send_window = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)
    created_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["rule", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "version"], name="rule_version_once"),
        ]

    def __str__(self) -> str:
        return f"{self.rule_id} v{self.version}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise VersionImmutable(f"rule version {self.pk} is saved; make a new version")
        super().save(*args, **kwargs)


# --- digests ---------------------------------------------------------------------
#
# A rule with a digest collects a subscriber's events into an open batch per
# (rule, subscriber, key) instead of messaging them one by one; once the batch's
# window closes, the digest sweeper (rules_engine.services.digests) sends one
# message listing them. The wait lives in these rows, not in the broker.

DIGEST_KEY_MAX_LENGTH = 200


class DigestStatus(models.TextChoices):
    OPEN = "open", "Open, collecting events"
    SENDING = "sending", "Claimed by the digest sweeper"
    SENT = "sent", "Done (see message and outcome)"


class DigestBatch(models.Model):
    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="digest_batches")
    # The version that opened the batch: its actions render the message.
    rule_version = models.ForeignKey(
        RuleVersion, on_delete=models.CASCADE, related_name="digest_batches"
    )
    subscriber = models.ForeignKey(
        Subscriber, on_delete=models.CASCADE, related_name="digest_batches"
    )
    key = models.CharField(max_length=DIGEST_KEY_MAX_LENGTH)
    status = models.CharField(
        max_length=10, choices=DigestStatus.choices, default=DigestStatus.OPEN
    )
    opened_at = models.DateTimeField(default=now)
    closes_at = models.DateTimeField()
    last_event_at = models.DateTimeField(default=now)
    # Who claimed it and when: a claim older than the task time limit is orphaned
    # (its worker died) and taken over; the token stops the slow one sending too.
    claimed_at = models.DateTimeField(null=True, blank=True)
    claim = models.UUIDField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # The first message made (one per action that went out; all are in outcome).
    message = models.ForeignKey(
        "channels_delivery.Message",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="digest_batches",
    )
    # {"events": n, "messages": [{"channel", "id"}], "skipped": [{"channel"?, "reason"}]}
    outcome = models.JSONField(default=dict, blank=True)
    events: "models.ManyToManyField[Event, DigestItem]" = models.ManyToManyField(
        Event, through="DigestItem", related_name="digest_batches"
    )

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "subscriber", "key"],
                condition=Q(status="open"),
                name="digest_batch_one_open",
            ),
        ]
        indexes = [
            models.Index(
                fields=["closes_at"], condition=Q(status="open"), name="digest_batch_due_idx"
            ),
            models.Index(
                fields=["claimed_at"],
                condition=Q(status="sending"),
                name="digest_batch_claimed_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule_id}:{self.subscriber_id}:{self.key} ({self.status})"


class DigestItem(models.Model):
    """One event in one batch: adding an event to many subscribers' batches is one
    INSERT of these rows, never an update of a growing list."""

    batch = models.ForeignKey(DigestBatch, on_delete=models.CASCADE, related_name="items")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="digest_items")
    added_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "event"], name="digest_item_once"),
        ]

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.event_id}"
