"""Shared (public-schema) models: who the tenants are and how they authenticate."""

from datetime import datetime

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone
from django_tenants.models import DomainMixin, TenantMixin


class Plan(models.Model):
    name = models.CharField(max_length=100, unique=True)
    events_per_month = models.PositiveIntegerField(default=10_000)
    api_requests_per_second = models.PositiveIntegerField(default=20)
    max_subscribers = models.PositiveIntegerField(default=1_000)
    retention_days = models.PositiveIntegerField(default=30)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Tenant(TenantMixin):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=63, unique=True)
    plan = models.ForeignKey(
        Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="tenants"
    )
    is_active = models.BooleanField(
        default=True, help_text="A suspended tenant's API keys and dashboard are refused."
    )
    strict_event_types = models.BooleanField(
        default=False,
        help_text="Refuse events whose type has not been declared (otherwise they are "
        "accepted and recorded as matching no rule).",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    # The schema is created (and migrated) when the row is first saved; it is
    # only dropped by an explicit force_drop, never by deleting a row by accident.
    auto_create_schema = True
    auto_drop_schema = False

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Domain(DomainMixin):
    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return str(self.domain)


class ApiScope(models.TextChoices):
    EVENTS_WRITE = "events:write", "Send events"
    SUBSCRIBERS_WRITE = "subscribers:write", "Manage subscribers, topics and preferences"
    MESSAGES_READ = "messages:read", "Read events, messages and statistics"
    ADMIN = "admin", "Everything, including the tenant's configuration"


class ApiKey(models.Model):
    """An API key. The token itself is never stored: only its SHA-256 and a prefix."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=24, help_text="The start of the token, to recognise a key without revealing it."
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = ArrayField(models.CharField(max_length=32, choices=ApiScope.choices))
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(condition=models.Q(scopes__len__gt=0), name="apikey_has_scope"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, *, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())
