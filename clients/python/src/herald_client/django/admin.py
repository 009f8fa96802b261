from typing import TYPE_CHECKING

from django.contrib import admin
from django.http import HttpRequest

from herald_client.django.models import OutboxEvent

if TYPE_CHECKING:  # generic in django-stubs only; the running Django's is not
    ModelAdmin = admin.ModelAdmin[OutboxEvent]
else:
    ModelAdmin = admin.ModelAdmin


@admin.register(OutboxEvent)
class OutboxEventAdmin(ModelAdmin):
    """What waits for Herald, to look at; `manage.py herald_outbox` acts on it."""

    list_display = ["event", "created_at", "attempts", "next_attempt_at", "rejected_at"]
    list_filter = ["event", ("rejected_at", admin.EmptyFieldListFilter)]
    readonly_fields = [field.name for field in OutboxEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: OutboxEvent | None = None) -> bool:
        return False
