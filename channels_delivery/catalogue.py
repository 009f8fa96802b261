"""The channels Herald delivers on, declared once (STYLE.md 9)."""

from django.db import models


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    WEBHOOK = "webhook", "Webhook"
    CHAT = "chat", "Chat"
    IN_APP = "in_app", "In-app inbox"
    PUSH = "push", "Web push"
