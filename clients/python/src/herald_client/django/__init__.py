"""Herald for Django projects: your models' signals become Herald events.

    INSTALLED_APPS = [..., "herald_client.django"]
    HERALD_URL = "https://herald.example.com"
    HERALD_API_KEY = os.environ["HERALD_API_KEY"]

    # shop/herald_events.py (found in every installed app, like admin.py)
    from herald_client.django import ModelEvents, changed

    class OrderEvents(ModelEvents):
        model = "shop.Order"
        created = "order.created"
        updated = {"order.shipped": changed("status", to="shipped")}
        deleted = "order.deleted"
        fields = ["number", "total", "status", "customer.name"]
        to = ["customer.external_id"]

Each event is written to an outbox table in the same transaction as the change
that caused it, sent to Herald once the transaction commits, and deleted when
Herald accepted it. When Herald can not be reached it waits there and is sent
again by ``manage.py herald_outbox run`` (or ``flush`` from cron) with backoff;
its idempotency key is the row's id, so Herald stores it once however often it
is sent. See docs/sdk.md, "Django".
"""

from herald_client.django.mapping import Changes, ModelEvents, changed

__all__ = ["Changes", "ModelEvents", "changed"]
