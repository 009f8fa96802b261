"""What Herald hears about orders: the whole integration is this module and two
settings (see settings.py). The bridge finds it because it is named
``herald_events``."""

from herald_client.django import ModelEvents, changed


class OrderEvents(ModelEvents):
    model = "shop.Order"
    created = "order.created"
    updated = {"order.shipped": changed("status", to="shipped")}
    deleted = "order.deleted"
    fields = ["number", "total", "status", "customer.name"]
    to = ["customer.subscriber"]
