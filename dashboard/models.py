"""The platform staff's view of every tenant, in the public schema: figures only,
never content. Workers copy each tenant's folded rollup here (services.stats)."""

from django.db import models

from tenants.models import Tenant


class TenantStatsHour(models.Model):
    """A tenant's StatsHour rows as of its last fold."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    channel = models.CharField(max_length=20, blank=True)
    provider = models.CharField(max_length=50, blank=True)
    metric = models.CharField(max_length=30)
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "hour", "channel", "provider", "metric"],
                name="tenant_stats_hour_key",
            ),
        ]
        indexes = [models.Index(fields=["hour"], name="tenant_stats_hour_idx")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.channel} {self.metric} {self.value}"


class TenantStatsTotal(models.Model):
    """All-time totals per tenant, channel, provider and metric: what /metrics
    exports as Prometheus counters without summing every hour."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=20, blank=True)
    provider = models.CharField(max_length=50, blank=True)
    metric = models.CharField(max_length=30)
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "channel", "provider", "metric"], name="tenant_stats_total_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.metric} {self.value}"


class ContentAccess(models.Model):
    """A staff member's explicit, time-limited opening of one tenant's content,
    with the reason they gave (dashboard.content_access). Never deleted from the
    dashboard: it is the audit trail."""

    id = models.BigAutoField(primary_key=True)
    staff_user = models.ForeignKey(
        "auth.User", on_delete=models.PROTECT, related_name="content_accesses"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    reason = models.TextField()
    granted_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["staff_user", "tenant", "-expires_at"], name="content_access_idx")
        ]
        permissions = [("open_tenant_content", "Can open a tenant's content (audited)")]

    def __str__(self) -> str:
        return f"{self.staff_user} opened {self.tenant} at {self.granted_at:%Y-%m-%d %H:%M}"


class ContentAccessView(models.Model):
    """Each page of tenant content shown under a ContentAccess."""

    id = models.BigAutoField(primary_key=True)
    access = models.ForeignKey(ContentAccess, on_delete=models.CASCADE, related_name="views")
    path = models.CharField(max_length=500)
    viewed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.path} at {self.viewed_at:%Y-%m-%d %H:%M:%S}"
