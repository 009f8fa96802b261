"""The channels Herald delivers on, declared once (STYLE.md 9)."""

from django.db import models


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    WEBHOOK = "webhook", "Webhook"
    CHAT = "chat", "Chat"
    IN_APP = "in_app", "In-app inbox"
    PUSH = "push", "Web push"


# Channels Herald delivers itself: they take no tenant integration (the delivery
# core names the provider of each in services.delivery.BUILT_IN).
BUILT_IN_CHANNELS: frozenset[Channel] = frozenset({Channel.IN_APP, Channel.WEBHOOK, Channel.PUSH})
