"""The sidebars, grouped by task (django-unfold's SIDEBAR navigation, settings.UNFOLD).

One callable serves both dashboards: the tenant's on its own host, the staff's
on the public one. An item shows only when its page is registered on that
site and the user may view it, so a viewer sees what they can open and nothing
else.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django_tenants.utils import get_public_schema_name
from unfold.sites import UnfoldAdminSite


@dataclass(frozen=True)
class Item:
    title: str
    icon: str
    model: str  # "app_label.ModelName"


TENANT_GROUPS: tuple[tuple[str, tuple[Item, ...]], ...] = (
    (
        "Design",
        (
            Item("Event types", "category", "rules_engine.EventType"),
            Item("Rules", "rule", "rules_engine.Rule"),
            Item("Templates", "edit_note", "rules_engine.Template"),
            Item("Layouts", "dashboard_customize", "rules_engine.Layout"),
        ),
    ),
    (
        "Audience",
        (
            Item("Subscribers", "group", "rules_engine.Subscriber"),
            Item("Topics", "tag", "rules_engine.Topic"),
        ),
    ),
    (
        "Delivery",
        (
            Item("Integrations", "hub", "channels_delivery.Integration"),
            Item("Webhook endpoints", "webhook", "channels_delivery.WebhookEndpoint"),
        ),
    ),
    (
        "Logs",
        (
            Item("Events", "bolt", "rules_engine.Event"),
            Item("Messages", "mail", "channels_delivery.Message"),
        ),
    ),
    (
        "Settings",
        (
            Item("API keys", "key", "tenants.ApiKey"),
            Item("Users", "person", "auth.User"),
        ),
    ),
)

STAFF_GROUPS: tuple[tuple[str, tuple[Item, ...]], ...] = (
    (
        "Tenants",
        (
            Item("Tenants", "apartment", "tenants.Tenant"),
            Item("Plans", "workspace_premium", "tenants.Plan"),
            Item("API keys", "key", "tenants.ApiKey"),
        ),
    ),
    (
        "Audit",
        (Item("Content access log", "policy", "dashboard.ContentAccess"),),
    ),
    (
        "Staff",
        (
            Item("Users", "person", "auth.User"),
            Item("Groups", "groups", "auth.Group"),
        ),
    ),
)


def _site_of(request: HttpRequest) -> tuple[UnfoldAdminSite, str]:
    from dashboard.sites import staff_admin_site, tenant_admin_site

    tenant = getattr(request, "tenant", None)
    if tenant is None or tenant.schema_name == get_public_schema_name():
        return staff_admin_site, "staff_admin"
    return tenant_admin_site, "tenant_admin"


def _visible(site: UnfoldAdminSite, model: Any) -> Callable[[HttpRequest], bool]:
    def check(request: HttpRequest) -> bool:
        model_admin = site._registry.get(model)
        return model_admin is not None and bool(model_admin.has_view_permission(request))

    return check


def sidebar(request: HttpRequest) -> list[dict[str, Any]]:
    site, namespace = _site_of(request)
    groups = STAFF_GROUPS if namespace == "staff_admin" else TENANT_GROUPS
    home_title = "Platform health" if namespace == "staff_admin" else "Delivery overview"
    navigation: list[dict[str, Any]] = [
        {
            "title": "Overview",
            "separator": False,
            "items": [
                {"title": home_title, "icon": "monitoring", "link": reverse(f"{namespace}:index")}
            ],
        }
    ]
    for title, items in groups:
        entries = []
        for item in items:
            model = apps.get_model(item.model)
            opts = model._meta
            try:
                link = reverse(f"{namespace}:{opts.app_label}_{opts.model_name}_changelist")
            except NoReverseMatch:
                continue
            entries.append(
                {
                    "title": item.title,
                    "icon": item.icon,
                    "link": link,
                    "permission": _visible(site, model),
                }
            )
        if entries:
            navigation.append({"title": title, "separator": True, "items": entries})
    return navigation
