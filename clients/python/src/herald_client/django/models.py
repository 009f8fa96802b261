import uuid

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class OutboxEvent(models.Model):
    """One event for Herald, written in the transaction of the change that caused
    it and deleted once Herald accepted it. ``id`` is its idempotency key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event = models.CharField(max_length=200)
    # The body of POST /api/v1/events, as it will be sent every time.
    body = models.JSONField(encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    # Due for (another) try from then; a sender claims a row by moving it ahead.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True, default="")
    # Herald refused the event itself (400/404/413/422): kept, not retried, until
    # `herald_outbox retry` after the cause is fixed.
    rejected_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "herald_outbox"
        ordering = ["created_at"]
        indexes = [models.Index(fields=["next_attempt_at"], name="herald_outbox_due")]
        verbose_name = "outbox event"

    def __str__(self) -> str:
        return f"{self.event} {self.id}"

    @property
    def idempotency_key(self) -> str:
        return f"outbox-{self.id}"
