"""The tenant dashboard's delivery pages: subscribers, topics, integrations,
webhook endpoints, and the event and message logs.

As on the rules pages (dashboard.admin), forms validate with the services'
own validators and every change goes through a service. Secrets are
write-only: a provider secret is typed into a password box and only "set" or
"not set" comes back; a webhook endpoint's signing secret is shown once, in the
answer to the request that made it (create, rotate), and never again.

The event and message logs are read-only and built for big tables: no page
counts them (InfinitePaginator, no full result count, no facets), no filter
lists the distinct values of one, and a subscriber is typed, not picked from a
list of all of them.
"""

import json
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, Max, Min, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from unfold.admin import ModelAdmin
from unfold.decorators import action, display
from unfold.paginator import InfinitePaginator
from unfold.widgets import (
    UnfoldAdminIntegerFieldWidget,
    UnfoldAdminPasswordWidget,
    UnfoldAdminSelectWidget,
    UnfoldAdminSplitDateTimeWidget,
    UnfoldAdminTextareaWidget,
    UnfoldAdminTextInputWidget,
    UnfoldAdminURLInputWidget,
    UnfoldBooleanSwitchWidget,
)

from channels_delivery.catalogue import BUILT_IN_CHANNELS, Channel
from channels_delivery.crypto import SecretsUnreadable
from channels_delivery.models import (
    AttemptOutcome,
    DeliveryAttempt,
    Integration,
    Message,
    MessageStatus,
    StatusCallback,
    WebhookEndpoint,
)
from channels_delivery.providers.base import ConfigInvalid, provider_get, providers_for
from channels_delivery.selectors import inbox_messages
from channels_delivery.services.integrations import (
    RATE_LIMIT_MAX,
    integration_config,
    integration_create,
    integration_delete,
    integration_secret_fields_set,
    integration_update,
)
from channels_delivery.services.webhooks import (
    EVENT_TYPE_KEY_MAX_LENGTH,
    EVENT_TYPES_MAX,
    ReplayRefused,
    endpoint_create,
    endpoint_delete,
    endpoint_disable,
    endpoint_secret,
    endpoint_secret_rotate,
    endpoint_update,
    webhook_message_replay,
    webhook_messages_replay_failed,
)
from dashboard.sites import tenant_admin_site
from herald.problems import FieldError
from rules_engine.models import Event, EventStatus, EventType, Subscriber, Topic
from rules_engine.selectors.preferences import preference_effective_list
from rules_engine.services.subscribers import (
    InvalidInput,
    SubscriberProfile,
    subscriber_erase,
    subscriber_profile_clean,
    subscriber_upsert,
)
from rules_engine.services.test_send import integration_test_send
from rules_engine.services.topics import (
    MAX_MEMBERS_PER_REQUEST,
    TOPIC_KEY,
    topic_create,
    topic_delete,
    topic_subscribers_add,
    topic_subscribers_remove,
)

RECENT_MESSAGES = 20
MEMBERS_SHOWN = 50
EVENT_MESSAGES_SHOWN = 50
CALLBACKS_SHOWN = 50

STATUS_LABELS = {
    MessageStatus.QUEUED.label: "info",
    MessageStatus.SENDING.label: "info",
    MessageStatus.SENT.label: "primary",
    MessageStatus.DELIVERED.label: "success",
    MessageStatus.OPENED.label: "success",
    MessageStatus.CLICKED.label: "success",
    MessageStatus.READ.label: "success",
    MessageStatus.FAILED.label: "danger",
    MessageStatus.BOUNCED.label: "danger",
    MessageStatus.CANCELLED.label: "warning",
}
EVENT_STATUS_LABELS = {
    EventStatus.ACCEPTED.label: "info",
    EventStatus.QUEUED.label: "info",
    EventStatus.PROCESSING.label: "info",
    EventStatus.PROCESSED.label: "success",
    EventStatus.NO_MATCH.label: "warning",
    EventStatus.FAILED.label: "danger",
}
OUTCOME_LABELS: dict[str, str] = {
    AttemptOutcome.ACCEPTED: "success",
    AttemptOutcome.RETRYABLE: "warning",
    AttemptOutcome.PERMANENT: "danger",
    AttemptOutcome.CONFIG_ERROR: "danger",
}


# --- rendering helpers ---------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S}" if value is not None else "-"


def _label(text: str, kind: str = "") -> SafeString:
    return mark_safe(  # noqa: S308 -- Django's template escapes ``text``
        render_to_string("unfold/helpers/label.html", {"text": text, "type": kind})
    )


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "None."
) -> SafeString:
    """Rows in unfold's table component; cells are escaped unless marked safe."""
    rows = [list(row) for row in rows]
    if not rows:
        return format_html('<p class="text-font-subtle-light">{}</p>', empty)
    return mark_safe(  # noqa: S308 -- the component escapes every cell
        render_to_string(
            "unfold/components/table.html",
            {"table": {"headers": list(headers), "rows": rows}, "striped": 1},
        )
    )


def _pre(text: str) -> SafeString:
    return format_html(
        '<pre class="font-mono text-xs whitespace-pre-wrap break-all max-w-3xl">{}</pre>', text
    )


def _change_url(obj: Any) -> str:
    meta = obj._meta
    return reverse(
        f"{tenant_admin_site.name}:{meta.app_label}_{meta.model_name}_change", args=[obj.pk]
    )


def _changelist_url(model: type[Any], **params: str) -> str:
    meta = model._meta
    url = reverse(f"{tenant_admin_site.name}:{meta.app_label}_{meta.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def _link(obj: Any, text: str) -> SafeString:
    return format_html(
        '<a class="text-primary-600 underline" href="{}">{}</a>', _change_url(obj), text
    )


def _more_link(url: str, text: str) -> SafeString:
    return format_html(
        '<p class="mt-2"><a class="text-primary-600 underline" href="{}">{}</a></p>', url, text
    )


def _add_field_errors(form: forms.BaseForm, errors: Sequence[FieldError]) -> None:
    for error in errors:
        field = error.pointer.lstrip("/").split("/")[0]
        form.add_error(field if field in form.fields else None, error.detail)


def _config_errors(form: forms.BaseForm, invalid: ConfigInvalid, *, config_field: str) -> None:
    """A provider's field errors: at the form field of that name, else at ``config_field``."""
    for field, detail in invalid.errors.items():
        if field in form.fields:
            form.add_error(field, detail)
        elif f"secret_{field}" in form.fields:
            form.add_error(f"secret_{field}", detail)
        else:
            form.add_error(config_field, f"{field}: {detail}")


def _admin_author(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _ids(text: str) -> list[str]:
    """External ids typed one per line, or separated by commas or spaces."""
    return [part for part in re.split(r"[\s,]+", text or "") if part]


def _confirm_page(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    obj: Any,
    *,
    title: str,
    description: str = "",
    submit_label: str = "Confirm",
    form: forms.Form | None = None,
    shown_once: dict[str, str] | None = None,
) -> TemplateResponse:
    """The page a detail action shows before it acts (a GET never changes
    anything), or after, with a secret shown this once."""
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "original": obj,
        "title": title,
        "description": description,
        "submit_label": submit_label,
        "form": form,
        "shown_once": shown_once,
        "back_url": _change_url(obj),
    }
    return TemplateResponse(request, "dashboard/action_confirm.html", context)


class _IndentedJSON(json.JSONEncoder):
    """JSON in a textarea, one key a line: what a person edits, not a wire format."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["indent"] = 2
        super().__init__(*args, **kwargs)


def _json_field(*, rows: int, help_text: str = "") -> forms.JSONField:
    return forms.JSONField(
        required=False,
        encoder=_IndentedJSON,
        widget=UnfoldAdminTextareaWidget(attrs={"rows": rows, "class": "font-mono"}),
        help_text=help_text,
    )


class _TextForm(forms.Form):
    def __init__(self, *, name: str, label: str, value: str | None) -> None:
        super().__init__(data={name: value or ""})
        self.fields[name] = forms.CharField(
            label=label, required=False, widget=UnfoldAdminTextInputWidget
        )


# --- list filters --------------------------------------------------------------------


class EventTypeFilter(admin.SimpleListFilter):
    title = "event type"
    parameter_name = "event_type"
    lookup = "event_type_key"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, key) for key in EventType.objects.values_list("key", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.lookup: value}) if value else queryset


class MessageEventTypeFilter(EventTypeFilter):
    lookup = "event__event_type_key"


class PeriodFilter(admin.SimpleListFilter):
    """Recent periods: a range on the indexed ``created_at``, unlike a date
    hierarchy, which lists the distinct days of a month's rows."""

    title = "period"
    parameter_name = "period"
    periods = {
        "1h": ("Last hour", timedelta(hours=1)),
        "24h": ("Last 24 hours", timedelta(days=1)),
        "7d": ("Last 7 days", timedelta(days=7)),
        "30d": ("Last 30 days", timedelta(days=30)),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.periods.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value not in self.periods:
            return queryset
        return queryset.filter(created_at__gte=timezone.now() - self.periods[value][1])


class SubscriberFilter(admin.SimpleListFilter):
    """A subscriber by external id, typed: a list of every subscriber would be
    as long as the subscriber table."""

    title = "subscriber (external id)"
    parameter_name = "subscriber"
    template = "dashboard/text_filter.html"

    def has_output(self) -> bool:
        return True

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        # A form in place of links, for dashboard/text_filter.html.
        yield {
            "form": _TextForm(
                name=self.parameter_name, label=f"By {self.title}", value=self.value()
            )
        }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = (self.value() or "").strip()
        return queryset.filter(subscriber__external_id=value) if value else queryset


class EventFilter(admin.SimpleListFilter):
    """The messages of one event, reached from the event's page."""

    title = "event"
    parameter_name = "event"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value else []

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        try:
            return queryset.filter(event_id=uuid.UUID(value))
        except ValueError:
            return queryset.none()


class TopicFilter(admin.SimpleListFilter):
    title = "topic"
    parameter_name = "topic"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, key) for key in Topic.objects.values_list("key", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(memberships__topic__key=value) if value else queryset


# --- subscribers ---------------------------------------------------------------------


class SubscriberAdminForm(forms.ModelForm):
    class Meta:
        model = Subscriber
        fields = ["external_id", "name", "email", "phone", "locale", "timezone", "data", "channels"]
        help_texts = {
            "data": "Anything templates and conditions read as subscriber.data.",
            "channels": "Addresses besides email and phone: push subscriptions, chat webhooks.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("data", "channels"):
            field = self.fields.get(name)
            if isinstance(field, forms.JSONField):
                field.encoder = _IndentedJSON
                attrs = field.widget.attrs
                attrs.update(rows=4, **{"class": f"{attrs.get('class', '')} font-mono"})

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if self.errors:
            return cleaned
        data, channels = cleaned.get("data"), cleaned.get("channels")
        try:
            self.profile = subscriber_profile_clean(
                profile=SubscriberProfile(
                    external_id=cleaned.get("external_id", self.instance.external_id),
                    email=cleaned.get("email") or "",
                    phone=cleaned.get("phone") or "",
                    name=cleaned.get("name") or "",
                    locale=cleaned.get("locale") or "",
                    timezone=cleaned.get("timezone") or "",
                    data={} if data is None else data,
                    channels={} if channels is None else channels,
                )
            )
        except InvalidInput as invalid:
            _add_field_errors(self, invalid.errors)
        return cleaned


class SubscriberAdmin(ModelAdmin):
    form = SubscriberAdminForm
    list_display = ["external_id", "name", "email", "phone", "locale", "created_at"]
    search_fields = ["external_id", "email", "phone", "name"]
    list_filter = [TopicFilter]
    show_full_result_count = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        if obj is None:
            return []
        # Every message, preference and membership names the subscriber by it.
        return [
            "external_id",
            "created_at",
            "updated_at",
            "preferences",
            "recent_messages",
            "inbox",
            "topic_list",
        ]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        profile = ["external_id", "name", "email", "phone", "locale", "timezone"]
        fieldsets: list[Any] = [
            (None, {"fields": profile}),
            ("Data and addresses", {"fields": ["data", "channels"]}),
        ]
        if obj is not None:
            fieldsets += [
                ("Preferences", {"fields": ["preferences"]}),
                ("Messages", {"fields": ["recent_messages"]}),
                ("In-app inbox", {"fields": ["inbox"]}),
                ("Topics", {"fields": ["topic_list"]}),
                ("Record", {"fields": ["created_at", "updated_at"]}),
            ]
        return fieldsets

    @display(description="Preferences")
    def preferences(self, obj: Subscriber) -> str:
        return _table(
            ["Channel", "Scope", "Choice", "From"],
            (
                (
                    Channel(pref.channel).label,
                    f"event type {pref.event_type}"
                    if pref.event_type
                    else f"category {pref.category}"
                    if pref.category
                    else "everything",
                    _label("opted in", "success")
                    if pref.enabled
                    else _label("opted out", "danger"),
                    "their choice" if pref.source == "subscriber" else "tenant default",
                )
                for pref in preference_effective_list(subscriber=obj)
            ),
            empty="No choices: every channel is on.",
        )

    @display(description=f"Latest {RECENT_MESSAGES} messages")
    def recent_messages(self, obj: Subscriber) -> str:
        recent = (
            Message.objects.filter(subscriber=obj)
            .select_related("event")
            .order_by("-created_at")[:RECENT_MESSAGES]
        )
        table = _table(
            ["Created", "Channel", "Status", "Event type", "Message"],
            (
                (
                    _when(message.created_at),
                    message.get_channel_display(),
                    _label(
                        message.get_status_display(),
                        STATUS_LABELS.get(message.get_status_display(), ""),
                    ),
                    message.event.event_type_key,
                    _link(message, str(message.pk)[:8]),
                )
                for message in recent
            ),
            empty="No messages yet.",
        )
        every = _more_link(
            _changelist_url(Message, subscriber=obj.external_id), "All their messages"
        )
        return format_html("{}{}", table, every)

    @display(description="Inbox")
    def inbox(self, obj: Subscriber) -> str:
        counts = inbox_messages(subscriber_id=obj.pk).aggregate(
            total=Count("pk"),
            unseen=Count("pk", filter=Q(seen_at__isnull=True, archived_at__isnull=True)),
            unread=Count("pk", filter=Q(read_at__isnull=True, archived_at__isnull=True)),
            archived=Count("pk", filter=Q(archived_at__isnull=False)),
        )
        return _table(
            ["In the inbox", "Unseen", "Unread", "Archived"],
            [[counts["total"], counts["unseen"], counts["unread"], counts["archived"]]],
        )

    @display(description="Topics")
    def topic_list(self, obj: Subscriber) -> str:
        topics = Topic.objects.filter(memberships__subscriber=obj).order_by("key")
        links = format_html_join(", ", "{}", ((_link(topic, topic.key),) for topic in topics))
        return links or "-"

    def save_model(self, request: HttpRequest, obj: Subscriber, form: Any, change: bool) -> None:
        saved = subscriber_upsert(profile=form.profile)
        obj.pk = saved.subscriber.pk

    def delete_model(self, request: HttpRequest, obj: Subscriber) -> None:
        subscriber_erase(subscriber=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Subscriber]) -> None:
        for subscriber in queryset:
            subscriber_erase(subscriber=subscriber)


# --- topics --------------------------------------------------------------------------


class TopicAdminForm(forms.ModelForm):
    add_members = forms.CharField(
        required=False,
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 3, "class": "font-mono"}),
        help_text="External ids of subscribers to add, one per line or separated by commas "
        f"(at most {MAX_MEMBERS_PER_REQUEST}). Unknown ids are reported, not created.",
    )
    remove_members = forms.CharField(
        required=False,
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 3, "class": "font-mono"}),
        help_text="External ids of members to remove.",
    )

    class Meta:
        model = Topic
        fields = ["key", "name"]

    def clean_key(self) -> str:
        key: str = self.cleaned_data["key"]
        if not TOPIC_KEY.fullmatch(key):
            raise forms.ValidationError(
                "Use 1 to 200 characters of a-z, 0-9 and . _ : -, starting with a letter or digit."
            )
        return key

    def _members(self, field: str) -> list[str]:
        ids = _ids(self.cleaned_data.get(field) or "")
        if len(ids) > MAX_MEMBERS_PER_REQUEST:
            raise forms.ValidationError(
                f"At most {MAX_MEMBERS_PER_REQUEST} subscribers at a time; got {len(ids)}."
            )
        return ids

    def clean_add_members(self) -> list[str]:
        return self._members("add_members")

    def clean_remove_members(self) -> list[str]:
        return self._members("remove_members")


class TopicAdmin(ModelAdmin):
    form = TopicAdminForm
    list_display = ["key", "name", "member_count", "created_at"]
    search_fields = ["key", "name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Topic]:
        return super().get_queryset(request).annotate(members=Count("memberships"))

    @display(description="Members", ordering="members")
    def member_count(self, obj: Topic) -> int:
        return getattr(obj, "members", 0)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        # Rules and the API name a topic by its key.
        return ["key", "member_list", "created_at"] if obj is not None else []

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return [(None, {"fields": ["key", "name", "add_members"]})]
        return [
            (None, {"fields": ["key", "name", "created_at"]}),
            ("Members", {"fields": ["member_list", "add_members", "remove_members"]}),
        ]

    @display(description="Members")
    def member_list(self, obj: Topic) -> str:
        members = Subscriber.objects.filter(memberships__topic=obj).order_by("external_id")
        shown = list(members[:MEMBERS_SHOWN])
        table = _table(
            ["External id", "Name", "Email"],
            ((_link(member, member.external_id), member.name, member.email) for member in shown),
            empty="No members yet.",
        )
        search = format_html(
            '<p class="mt-2"><a class="text-primary-600 underline" href="{}">'
            "Search all {} members</a></p>",
            _changelist_url(Subscriber, topic=obj.key),
            obj.members if hasattr(obj, "members") else members.count(),
        )
        return format_html("{}{}", table, search)

    def save_model(self, request: HttpRequest, obj: Topic, form: Any, change: bool) -> None:
        if change:
            # The name is the one field an edit changes, and no service owns it.
            super().save_model(request, obj, form, change)
        else:
            obj.pk = topic_create(key=obj.key, name=obj.name).pk
        added = form.cleaned_data.get("add_members") or []
        removed = form.cleaned_data.get("remove_members") or []
        if added:
            result = topic_subscribers_add(topic=obj, external_ids=added)
            messages.info(
                request,
                f"Added {len(result.added)}; already members: {len(result.already_members)}.",
            )
            if result.missing:
                messages.warning(
                    request, "No subscriber with the external id: " + ", ".join(result.missing)
                )
        if removed:
            gone = topic_subscribers_remove(topic=obj, external_ids=removed)
            messages.info(request, f"Removed {len(gone.removed)}.")
            if gone.not_members:
                messages.warning(request, "Not members: " + ", ".join(gone.not_members))

    def delete_model(self, request: HttpRequest, obj: Topic) -> None:
        topic_delete(topic=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Topic]) -> None:
        for topic in queryset:
            topic_delete(topic=topic)


# --- integrations --------------------------------------------------------------------


def _integration_channels() -> list[tuple[str, str]]:
    return [(value, label) for value, label in Channel.choices if value not in BUILT_IN_CHANNELS]


def _provider_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    return [
        (label, [(key, key) for key in providers_for(value)])
        for value, label in _integration_channels()
    ]


def _secret_takers(obj: Integration | None) -> dict[str, list[str]]:
    """The secret fields the form offers, each with the providers that take it:
    the integration's provider's, or on a new integration every provider's (the
    chosen provider refuses the others)."""
    pairs = (
        [(obj.channel, obj.provider)]
        if obj is not None
        else [
            (channel, key)
            for channel, _ in _integration_channels()
            for key in providers_for(channel)
        ]
    )
    takers: dict[str, list[str]] = {}
    for channel, key in pairs:
        try:
            secret_fields = provider_get(channel=channel, key=key).secret_fields
        except LookupError:
            continue
        for name in secret_fields:
            takers.setdefault(name, []).append(f"{channel}/{key}")
    return dict(sorted(takers.items()))


def _secret_names(obj: Integration | None) -> list[str]:
    return list(_secret_takers(obj))


def _secrets_stored(obj: Integration | None) -> set[str] | None:
    """Which secrets the integration has (None: they can not be decrypted)."""
    if obj is None:
        return set()
    try:
        return set(integration_secret_fields_set(integration=obj))
    except SecretsUnreadable:
        return None


class IntegrationAdminForm(forms.ModelForm):
    """Names, order and the provider's config; the provider's secret fields are
    added per integration by IntegrationAdmin.get_form, as password boxes that
    never render a value."""

    config = _json_field(
        rows=8,
        help_text="The provider's settings without its secrets, e.g. "
        '{"host": "smtp.acme.example", "from_email": "news@acme.example"}.',
    )
    provider = forms.ChoiceField(choices=_provider_choices, widget=UnfoldAdminSelectWidget)
    channel = forms.ChoiceField(choices=_integration_channels, widget=UnfoldAdminSelectWidget)
    priority = forms.IntegerField(
        min_value=-1000,
        max_value=1000,
        initial=0,
        widget=UnfoldAdminIntegerFieldWidget,
        help_text="Lower goes first: the primary, then the fallbacks of the same channel.",
    )
    rate_limit_per_second = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=RATE_LIMIT_MAX,
        widget=UnfoldAdminIntegerFieldWidget,
        help_text="The provider's sending limit in messages a second; empty: none.",
    )
    secret_names: list[str] = []

    class Meta:
        model = Integration
        fields = ["name", "channel", "provider", "priority", "enabled", "rate_limit_per_second"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial.setdefault("config", self.instance.config if self.instance.pk else {})

    def secrets_given(self) -> dict[str, str | None]:
        """The secrets to change: typed ones, and None for those to remove."""
        given: dict[str, str | None] = {}
        for name in self.secret_names:
            if self.cleaned_data.get(f"clear_{name}"):
                given[name] = None
            elif self.cleaned_data.get(f"secret_{name}"):
                given[name] = self.cleaned_data[f"secret_{name}"]
        return given

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if any(field in self.errors for field in ("channel", "provider", "config")):
            return cleaned
        config = cleaned.get("config")
        if config is None:
            config = {}
        if not isinstance(config, dict):
            self.add_error("config", "must be a JSON object")
            return cleaned
        channel = cleaned.get("channel", self.instance.channel)
        key = cleaned.get("provider", self.instance.provider)
        name = cleaned.get("name")
        if (
            self.instance.pk is not None
            and Integration.objects.filter(channel=channel, name=name)
            .exclude(pk=self.instance.pk)
            .exists()
        ):
            self.add_error("name", f"an integration named {name!r} exists on this channel")
        try:
            provider = provider_get(channel=channel, key=key)
        except LookupError as error:
            self.add_error("provider", str(error))
            return cleaned
        secrets = self.secrets_given()
        for name in sorted(set(config) & set(self.secret_names)):
            self.add_error("config", f"{name}: a secret; type it in its own field below")
        for name in sorted(set(secrets) - provider.secret_fields):
            self.add_error(f"secret_{name}", f"the {key} provider takes no {name}")
        if self.errors:
            return cleaned
        # What the service will send with: the stored secrets, unless replaced.
        merged: dict[str, Any] = {}
        if self.instance.pk is not None:
            try:
                stored = integration_config(integration=self.instance)
            except SecretsUnreadable:
                stored = {}
            merged.update({k: v for k, v in stored.items() if k in provider.secret_fields})
        merged.update(config)
        for name, value in secrets.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        try:
            provider.validate_config(merged)
        except ConfigInvalid as invalid:
            _config_errors(self, invalid, config_field="config")
        return cleaned


class IntegrationAdmin(ModelAdmin):
    form = IntegrationAdminForm
    list_display = [
        "name",
        "channel",
        "provider",
        "priority",
        "enabled",
        "rate_limit_per_second",
        "secrets_state",
        "updated_at",
    ]
    list_filter = ["channel", "enabled", "provider"]
    search_fields = ["name", "provider"]
    ordering = ["channel", "priority", "pk"]
    actions = ["enable", "disable"]
    actions_detail = ["send_test"]

    @action(description="Send test", url_path="send-test", icon="send", permissions=["change"])
    def send_test(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A fixed test message through this integration, to a subscriber or an
        address, sent by the delivery workers (rules_engine.services.test_send)."""
        integration = self.get_object(request, object_id)
        if integration is None:
            raise Http404(f"There is no integration {object_id}.")
        form = IntegrationTestForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                sent = integration_test_send(
                    integration=integration,
                    subscriber=form.cleaned_data["subscriber"],
                    address=form.cleaned_data["address"],
                    sent_by=request.user.get_username(),
                )
            except InvalidInput as invalid:
                for error in invalid.errors:
                    field = error.pointer.strip("/")
                    form.add_error(field if field in form.fields else None, error.detail)
            else:
                messages.success(
                    request,
                    f"Queued a test through {integration.name} to "
                    f"{sent.subscriber_external_id}; its page shows what the provider answered.",
                )
                return HttpResponseRedirect(_change_url(sent.message))
        return _confirm_page(
            self,
            request,
            integration,
            title=f"Send a test through {integration.name}",
            description="A short fixed message goes through this integration first (a failure "
            "there fails over like any message: the message's page shows each attempt).",
            submit_label="Send test",
            form=form,
        )

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        names = _secret_names(obj)
        stored = _secrets_stored(obj)
        attrs: dict[str, Any] = {"secret_names": names}
        takers = _secret_takers(obj)
        for name in names:
            if obj is None:
                help_text = f"For {', '.join(takers[name])}. Write-only: never shown again."
            elif stored is None:
                help_text = "Currently unreadable: type it again."
            else:
                state = "set" if name in stored else "not set"
                help_text = f"Currently {state}. Write-only: leave empty to keep what is stored."
            attrs[f"secret_{name}"] = forms.CharField(
                required=False,
                label=f"Secret: {name}",
                widget=UnfoldAdminPasswordWidget(render_value=False),
                help_text=help_text,
            )
            if obj is not None and stored and name in stored:
                attrs[f"clear_{name}"] = forms.BooleanField(
                    required=False,
                    label=f"Remove the stored {name}",
                    widget=UnfoldBooleanSwitchWidget,
                )
        if obj is not None:
            # Shown read-only (get_readonly_fields), so not form fields.
            attrs.update(channel=None, provider=None)
        kwargs["form"] = type("IntegrationAdminForm", (IntegrationAdminForm,), attrs)
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        names = _secret_names(obj)
        stored = _secrets_stored(obj) or set()
        secret_fields = [f"secret_{name}" for name in names]
        if obj is not None:
            secret_fields += [f"clear_{name}" for name in names if name in stored]
        return [
            (None, {"fields": ["name", "channel", "provider", "priority", "enabled"]}),
            ("Provider settings", {"fields": ["config", "rate_limit_per_second"]}),
            ("Secrets (write-only)", {"fields": secret_fields}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        # A config is validated by its provider: another provider is another integration.
        return ["channel", "provider"] if obj is not None else []

    @display(description="Secrets")
    def secrets_state(self, obj: Integration) -> str:
        names = _secret_names(obj)
        if not names:
            return "-"
        stored = _secrets_stored(obj)
        if stored is None:
            return _label("unreadable", "danger")
        return ", ".join(f"{name}: {'set' if name in stored else 'not set'}" for name in names)

    def save_model(self, request: HttpRequest, obj: Integration, form: Any, change: bool) -> None:
        data = form.cleaned_data
        config = {**(data.get("config") or {}), **form.secrets_given()}
        if change:
            integration_update(
                integration=obj,
                name=data["name"],
                config=config,
                priority=data["priority"],
                enabled=data["enabled"],
                rate_limit_per_second=data.get("rate_limit_per_second") or 0,
            )
        else:
            created = integration_create(
                channel=data["channel"],
                provider=data["provider"],
                name=data["name"],
                config=config,
                priority=data["priority"],
                enabled=data["enabled"],
                rate_limit_per_second=data.get("rate_limit_per_second"),
            )
            obj.pk = created.pk

    def delete_model(self, request: HttpRequest, obj: Integration) -> None:
        integration_delete(integration=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Integration]) -> None:
        for integration in queryset:
            integration_delete(integration=integration)

    @action(description="Enable selected integrations", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Integration]) -> None:
        for integration in queryset:
            integration_update(integration=integration, enabled=True)
        messages.success(request, f"Enabled {len(queryset)} integration(s).")

    @action(description="Disable selected integrations", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Integration]) -> None:
        for integration in queryset:
            integration_update(integration=integration, enabled=False)
        messages.success(request, f"Disabled {len(queryset)} integration(s).")


# --- webhook endpoints ---------------------------------------------------------------


class WebhookEndpointAdminForm(forms.ModelForm):
    """The URL is checked against the SSRF guard by the model's clean(), so a
    refused address shows at the URL field."""

    url = forms.URLField(
        max_length=WebhookEndpoint._meta.get_field("url").max_length,
        assume_scheme="https",
        widget=UnfoldAdminURLInputWidget,
        help_text="Where Herald POSTs, signed the Standard Webhooks way (http or https).",
    )

    event_types = forms.CharField(
        required=False,
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 2, "class": "font-mono"}),
        help_text="Event type keys this endpoint receives, one per line or separated by "
        "commas; empty: every event type.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "event_types", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["event_types"] = "\n".join(self.instance.event_types)

    def clean_event_types(self) -> list[str]:
        keys = list(dict.fromkeys(_ids(self.cleaned_data.get("event_types") or "")))
        too_long = [key for key in keys if len(key) > EVENT_TYPE_KEY_MAX_LENGTH]
        if too_long:
            raise forms.ValidationError(
                f"{too_long[0][:40]!r}... is longer than {EVENT_TYPE_KEY_MAX_LENGTH} characters."
            )
        if len(keys) > EVENT_TYPES_MAX:
            raise forms.ValidationError(f"At most {EVENT_TYPES_MAX} event types.")
        return keys


class IntegrationTestForm(forms.Form):
    subscriber = forms.CharField(
        required=False,
        widget=UnfoldAdminTextInputWidget,
        help_text="Send to this subscriber (their id)…",
    )
    address = forms.CharField(
        required=False,
        widget=UnfoldAdminTextInputWidget,
        help_text="…or to this email address or phone number (E.164). Chat integrations "
        "post to their own channel: leave both empty.",
    )


class ReplayForm(forms.Form):
    since = forms.SplitDateTimeField(
        widget=UnfoldAdminSplitDateTimeWidget,
        help_text="Replay every webhook message that failed at or after this time.",
    )

    def clean_since(self) -> datetime:
        since: datetime = self.cleaned_data["since"]
        if since > timezone.now():
            raise forms.ValidationError("must not be in the future")
        return since


class WebhookEndpointAdmin(ModelAdmin):
    form = WebhookEndpointAdminForm
    list_display = ["url", "description", "enabled", "failing_since", "disabled_reason"]
    list_filter = ["enabled"]
    search_fields = ["url", "description"]
    actions = ["enable", "disable"]
    actions_detail = ["rotate_secret", "replay_failed", "enable_one", "disable_one"]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return [(None, {"fields": ["url", "description", "event_types", "enabled"]})]
        return [
            (None, {"fields": ["url", "description", "event_types"]}),
            (
                "Health",
                {
                    "fields": [
                        "enabled",
                        "disabled_reason",
                        "failing_since",
                        "slow_until",
                        "secret_state",
                        "recent_callbacks",
                    ]
                },
            ),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        if obj is None:
            return []
        # Enabling and disabling are actions: disabling says why and tells the tenant.
        return [
            "enabled",
            "disabled_reason",
            "failing_since",
            "slow_until",
            "secret_state",
            "recent_callbacks",
        ]

    @display(description="Signing secret")
    def secret_state(self, obj: WebhookEndpoint) -> str:
        return "set (shown once when made; use “Rotate secret” for a new one)"

    @display(description="Latest status callbacks")
    def recent_callbacks(self, obj: WebhookEndpoint) -> str:
        callbacks = StatusCallback.objects.filter(endpoint=obj).order_by("-created_at")
        return _table(
            ["Created", "Type", "Status", "Attempts", "Response", "Error"],
            (
                (
                    _when(callback.created_at),
                    callback.type,
                    callback.get_status_display(),
                    callback.attempt_count,
                    callback.response_status or "-",
                    callback.error or "-",
                )
                for callback in callbacks[:CALLBACKS_SHOWN]
            ),
            empty="No status callbacks.",
        )

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool
    ) -> None:
        data = form.cleaned_data
        if change:
            endpoint_update(
                endpoint=obj,
                url=data["url"],
                description=data.get("description", ""),
                event_types=data.get("event_types", []),
            )
        else:
            created = endpoint_create(
                url=data["url"],
                description=data.get("description", ""),
                event_types=data.get("event_types", []),
                enabled=data.get("enabled", True),
            )
            obj.pk = created.pk
            obj.secrets = created.secrets

    def response_add(
        self, request: HttpRequest, obj: WebhookEndpoint, post_url_continue: str | None = None
    ) -> HttpResponse:
        """The new endpoint's signing secret, shown this once for the receiver's setup."""
        messages.success(request, f"Created {obj}.")
        return _confirm_page(
            self,
            request,
            obj,
            title="Webhook endpoint created",
            shown_once={
                "note": "Give this signing secret to the receiver to verify the "
                "webhook-signature header. It is shown only now.",
                "value": endpoint_secret(endpoint=obj),
            },
        )

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        endpoint_delete(endpoint=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            endpoint_delete(endpoint=endpoint)

    def _endpoint(self, request: HttpRequest, object_id: str) -> WebhookEndpoint:
        endpoint = self.get_object(request, object_id)
        if endpoint is None:
            raise Http404(f"There is no webhook endpoint {object_id}.")
        return endpoint

    @action(description="Enable selected endpoints", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            endpoint_update(endpoint=endpoint, enabled=True)
        messages.success(request, f"Enabled {len(queryset)} endpoint(s).")

    @action(description="Disable selected endpoints", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            endpoint_disable(endpoint=endpoint, reason=f"disabled by {_admin_author(request)}")
        messages.success(request, f"Disabled {len(queryset)} endpoint(s).")

    @action(description="Rotate secret", url_path="rotate-secret", permissions=["change"])
    def rotate_secret(self, request: HttpRequest, object_id: str) -> HttpResponse:
        endpoint = self._endpoint(request, object_id)
        if request.method != "POST":
            return _confirm_page(
                self,
                request,
                endpoint,
                title=f"Rotate the signing secret of {endpoint}",
                description="A new secret signs every delivery from now on; the current one "
                "keeps signing next to it for the overlap period, so the receiver can switch "
                "without losing a delivery. The new secret is shown once.",
                submit_label="Rotate secret",
            )
        secret = endpoint_secret_rotate(endpoint=endpoint)
        return _confirm_page(
            self,
            request,
            endpoint,
            title="New signing secret",
            shown_once={
                "note": "Give this secret to the receiver. It is shown only now.",
                "value": secret,
            },
        )

    @action(description="Replay failed messages", url_path="replay-failed", permissions=["change"])
    def replay_failed(self, request: HttpRequest, object_id: str) -> HttpResponse:
        endpoint = self._endpoint(request, object_id)
        form = ReplayForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            since = form.cleaned_data["since"]
            count = webhook_messages_replay_failed(since=since, endpoint_id=endpoint.pk)
            messages.success(
                request,
                f"Queued {count} failed message(s) again for {endpoint} "
                f"(failed since {_when(since)}).",
            )
            return HttpResponseRedirect(_change_url(endpoint))
        if request.method != "POST":
            form = ReplayForm(initial={"since": timezone.now() - timedelta(days=1)})
        return _confirm_page(
            self,
            request,
            endpoint,
            title=f"Replay failed messages to {endpoint}",
            description="Every webhook message tried at this endpoint that failed at or after "
            "the time below is queued again with a fresh retry schedule; endpoints that "
            "accepted it already do not get it twice.",
            submit_label="Replay",
            form=form,
        )

    @action(description="Enable", url_path="enable", permissions=["change"])
    def enable_one(self, request: HttpRequest, object_id: str) -> HttpResponse:
        endpoint = self._endpoint(request, object_id)
        if request.method != "POST":
            return _confirm_page(
                self,
                request,
                endpoint,
                title=f"Enable {endpoint}",
                description="Deliveries start again; the failure streak and the reason it "
                "was disabled are cleared.",
                submit_label="Enable",
            )
        endpoint_update(endpoint=endpoint, enabled=True)
        messages.success(request, f"Enabled {endpoint}.")
        return HttpResponseRedirect(_change_url(endpoint))

    @action(description="Disable", url_path="disable", permissions=["change"])
    def disable_one(self, request: HttpRequest, object_id: str) -> HttpResponse:
        endpoint = self._endpoint(request, object_id)
        if request.method != "POST":
            return _confirm_page(
                self,
                request,
                endpoint,
                title=f"Disable {endpoint}",
                description="No more deliveries go to this endpoint until it is enabled; "
                "endpoints subscribed to endpoint.disabled are told.",
                submit_label="Disable",
            )
        endpoint_disable(endpoint=endpoint, reason=f"disabled by {_admin_author(request)}")
        messages.success(request, f"Disabled {endpoint}.")
        return HttpResponseRedirect(_change_url(endpoint))


# --- the event and message logs ------------------------------------------------------


class ReadOnlyLogAdmin(ModelAdmin):
    """A log: nothing is added, changed or deleted here, and no page counts the table."""

    paginator = InfinitePaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions_selection_counter = False
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_replay_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm("channels_delivery.change_message"))


def _outcome_rules(outcome: dict[str, Any]) -> SafeString:
    return _table(
        ["Rule", "Version", "Matched", "Recipients", "Messages", "Digested", "Skipped", "Error"],
        (
            (
                rule.get("name", rule.get("rule_id", "?")),
                f"v{rule.get('version', '?')}",
                _label("matched", "success") if rule.get("matched") else _label("no", ""),
                rule.get("recipients", 0),
                rule.get("messages", 0),
                rule.get("digested", 0),
                ", ".join(
                    f"{reason}: {count}"
                    for reason, count in (rule.get("skipped_reasons") or {}).items()
                )
                or "-",
                rule.get("error") or "-",
            )
            for rule in outcome.get("rules", [])
            if isinstance(rule, dict)
        ),
        empty="No rule was evaluated.",
    )


def _steps(first: datetime, last: datetime, kind: str) -> Iterator[datetime]:
    """Every year, month or day from ``first`` to ``last`` (local dates), as the
    local midnight that starts it."""
    day, end = first.date(), last.date()
    if kind == "year":
        dates = (date(year, 1, 1) for year in range(day.year, end.year + 1))
    elif kind == "month":
        months = range(day.year * 12 + day.month - 1, end.year * 12 + end.month)
        dates = (date(index // 12, index % 12 + 1, 1) for index in months)
    else:
        dates = (day + timedelta(days=n) for n in range((end - day).days + 1))
    for start in dates:
        yield timezone.make_aware(datetime.combine(start, time()))


class DateRangeQuerySet(QuerySet[Event]):
    """Events for the date hierarchy, which asks for the distinct days (months,
    years) that have rows: SELECT DISTINCT over every row in range, seconds on a
    big table. This answers with every day between the first and the last row
    instead, from MIN and MAX, which the index on created_at serves."""

    def datetimes(  # type: ignore[override]
        self, field_name: str, kind: str, order: str = "ASC", tzinfo: Any = None
    ) -> list[datetime]:
        bounds = self.order_by().aggregate(first=Min(field_name), last=Max(field_name))
        if bounds["first"] is None:
            return []
        first, last = timezone.localtime(bounds["first"]), timezone.localtime(bounds["last"])
        steps = list(_steps(first, last, kind))
        return steps[::-1] if order == "DESC" else steps


class EventAdmin(ReadOnlyLogAdmin):
    list_display = ["event_id", "event_type_key", "status_badge", "message_count", "created_at"]
    list_filter = ["status", EventTypeFilter]
    date_hierarchy = "created_at"
    search_fields = ["=idempotency_key"]
    search_help_text = "An event id, or an idempotency key."

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        queryset = super().get_queryset(request)
        return DateRangeQuerySet(model=Event, query=queryset.query, using=queryset.db)

    fieldsets = [
        (None, {"fields": ["event_id", "event_type_key", "status_label", "idempotency_key"]}),
        ("When", {"fields": ["created_at", "send_at", "dispatched_at", "processed_at"]}),
        ("Payload", {"fields": ["payload_pretty", "recipients_pretty", "actor_pretty"]}),
        ("Pipeline outcome", {"fields": ["outcome_summary", "outcome_rules", "outcome_skipped"]}),
        ("Messages", {"fields": ["event_messages"]}),
    ]
    readonly_fields = [
        "event_id",
        "event_type_key",
        "status_label",
        "idempotency_key",
        "created_at",
        "send_at",
        "dispatched_at",
        "processed_at",
        "payload_pretty",
        "recipients_pretty",
        "actor_pretty",
        "outcome_summary",
        "outcome_rules",
        "outcome_skipped",
        "event_messages",
    ]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Event], search_term: str
    ) -> tuple[QuerySet[Event], bool]:
        try:
            return queryset.filter(pk=uuid.UUID(search_term.strip())), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    @display(description="Event", ordering="created_at")
    def event_id(self, obj: Event) -> str:
        return str(obj.pk)

    @display(description="Status", label=EVENT_STATUS_LABELS)
    def status_badge(self, obj: Event) -> str:
        return obj.get_status_display()

    @display(description="Status")
    def status_label(self, obj: Event) -> str:
        return _label(obj.get_status_display(), EVENT_STATUS_LABELS[obj.get_status_display()])

    @display(description="Messages")
    def message_count(self, obj: Event) -> Any:
        # From the pipeline's record: counting the message table per row would not scale.
        return (obj.outcome or {}).get("messages", "-")

    @display(description="Payload")
    def payload_pretty(self, obj: Event) -> str:
        return _json_pre(obj.payload)

    @display(description="Recipients")
    def recipients_pretty(self, obj: Event) -> str:
        return (
            _json_pre(obj.recipients)
            if obj.recipients
            else (obj.topic and f"topic {obj.topic}") or "-"
        )

    @display(description="Actor")
    def actor_pretty(self, obj: Event) -> str:
        return _json_pre(obj.actor) if obj.actor else "-"

    @display(description="Summary")
    def outcome_summary(self, obj: Event) -> str:
        outcome = obj.outcome or {}
        rows = [
            ("Rules matched", len(outcome.get("matched_rules", []))),
            ("Messages made", outcome.get("messages", 0)),
            ("Held for digests", outcome.get("digested", 0)),
        ]
        if outcome.get("reason"):
            rows.append(("Why nothing was sent", outcome["reason"]))
        if outcome.get("error"):
            rows.append(("Error", outcome["error"]))
        if not outcome.get("known_event_type", True):
            rows.append(("Event type", "not declared"))
        return _table([], rows)

    @display(description="Rules")
    def outcome_rules(self, obj: Event) -> str:
        return _outcome_rules(obj.outcome or {})

    @display(description="Recipients skipped")
    def outcome_skipped(self, obj: Event) -> str:
        outcome = obj.outcome or {}
        entries = [("-", entry) for entry in outcome.get("skipped", [])]
        for rule in outcome.get("rules", []):
            if isinstance(rule, dict):
                name = str(rule.get("name", rule.get("rule_id", "?")))
                entries += [(name, entry) for entry in rule.get("skipped", [])]
        return _table(
            ["Rule", "Subscriber", "Channel", "Reason"],
            (
                (rule, entry.get("subscriber", "-"), entry.get("channel", "-"), entry["reason"])
                for rule, entry in entries
                if isinstance(entry, dict) and "reason" in entry
            ),
            empty="Nobody was skipped.",
        )

    @display(description="Made")
    def event_messages(self, obj: Event) -> str:
        shown = list(
            Message.objects.filter(event=obj)
            .select_related("subscriber")
            .order_by("created_at", "pk")[:EVENT_MESSAGES_SHOWN]
        )
        table = _table(
            ["Message", "Channel", "Subscriber", "Status", "Attempts"],
            (
                (
                    _link(message, str(message.pk)[:8]),
                    message.get_channel_display(),
                    message.subscriber.external_id if message.subscriber else "[erased]",
                    _label(
                        message.get_status_display(),
                        STATUS_LABELS.get(message.get_status_display(), ""),
                    ),
                    message.attempt_count,
                )
                for message in shown
            ),
            empty="This event made no messages.",
        )
        if len(shown) < EVENT_MESSAGES_SHOWN:
            return table
        every = _more_link(_changelist_url(Message, event=str(obj.pk)), "All its messages")
        return format_html("{}{}", table, every)


def _json_pre(value: Any) -> SafeString:
    return _pre(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))


def _content_table(content: dict[str, Any]) -> SafeString:
    """The rendered fields, each as text: a subject, an HTML body, an SMS..."""
    if content.get("erased"):
        return format_html("<p>{}</p>", "The content was erased with the subscriber.")
    return _table(
        ["Field", "Rendered"],
        (
            (name, _pre(value if isinstance(value, str) else json.dumps(value, indent=2)))
            for name, value in content.items()
        ),
        empty="Nothing rendered.",
    )


class MessageAdmin(ReadOnlyLogAdmin):
    list_display = [
        "message_id",
        "status_badge",
        "channel",
        "subscriber_link",
        "event_type",
        "created_at",
        "attempts",
    ]
    list_filter = [
        "status",
        "channel",
        MessageEventTypeFilter,
        PeriodFilter,
        SubscriberFilter,
        EventFilter,
    ]
    list_filter_submit = True
    list_select_related = ["subscriber", "event"]
    actions = ["replay"]
    actions_detail = ["replay_one"]
    fieldsets = [
        (
            None,
            {"fields": ["message_id", "status_label", "channel", "subscriber_link", "event_link"]},
        ),
        ("Timeline", {"fields": ["timeline"]}),
        ("Rendered content", {"fields": ["rendered"]}),
        ("Delivery attempts", {"fields": ["attempt_table"]}),
        ("Status callbacks", {"fields": ["callbacks"]}),
    ]
    readonly_fields = [
        "message_id",
        "status_label",
        "channel",
        "subscriber_link",
        "event_link",
        "timeline",
        "rendered",
        "attempt_table",
        "callbacks",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        # The list shows the event's type, not its payload.
        return (
            super()
            .get_queryset(request)
            .defer("content", "event__payload", "event__outcome", "event__recipients")
        )

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        try:
            uuid.UUID(str(object_id))
        except ValueError:
            return None
        return (
            Message.objects.select_related(
                "event", "subscriber", "rule_version__rule", "template_version__template"
            )
            .filter(pk=object_id)
            .first()
        )

    @display(description="Message", ordering="created_at")
    def message_id(self, obj: Message) -> str:
        return str(obj.pk)

    @display(description="Status", label=STATUS_LABELS)
    def status_badge(self, obj: Message) -> str:
        return obj.get_status_display()

    @display(description="Status")
    def status_label(self, obj: Message) -> str:
        return _label(obj.get_status_display(), STATUS_LABELS[obj.get_status_display()])

    @display(description="Attempts", ordering="attempt_count")
    def attempts(self, obj: Message) -> int:
        return obj.attempt_count

    @display(description="Subscriber")
    def subscriber_link(self, obj: Message) -> str:
        if obj.subscriber is None:
            return "[erased]"
        return _link(obj.subscriber, obj.subscriber.external_id)

    @display(description="Event type")
    def event_type(self, obj: Message) -> str:
        return obj.event.event_type_key

    @display(description="Event")
    def event_link(self, obj: Message) -> str:
        return _link(obj.event, f"{obj.event.event_type_key} · {obj.event.pk}")

    @display(description="Timeline")
    def timeline(self, obj: Message) -> str:
        steps: list[tuple[datetime, str, Any]] = []
        event = obj.event
        steps.append((event.created_at, "Event received", event.event_type_key))
        if obj.rule_version is not None:
            steps.append(
                (
                    event.processed_at or obj.created_at,
                    "Rule matched",
                    f"{obj.rule_version.rule.name} (v{obj.rule_version.version})",
                )
            )
        rendered = "no template version recorded"
        if obj.template_version is not None:
            rendered = f"{obj.template_version.template.key} v{obj.template_version.version}"
        steps.append(
            (
                obj.created_at,
                "Rendered",
                f"{rendered}, locale {obj.locale or '-'}, {obj.get_channel_display()}",
            )
        )
        if obj.send_after is not None:
            steps.append((obj.send_after, "Not sent before", "rule delay or send window"))
        for number, attempt in enumerate(obj.attempts.order_by("started_at", "pk"), start=1):
            detail = f"{attempt.provider}: {attempt.get_outcome_display()}"
            if attempt.response_status:
                detail += f", HTTP {attempt.response_status}"
            if attempt.error:
                detail += f" — {attempt.error}"
            steps.append((attempt.started_at, f"Attempt {number}", detail))
        for field, title in (
            ("sent_at", "Sent"),
            ("delivered_at", "Delivered"),
            ("opened_at", "Opened"),
            ("clicked_at", "Clicked"),
            ("seen_at", "Seen in the inbox"),
            ("read_at", "Read"),
            ("archived_at", "Archived"),
            ("failed_at", "Failed"),
        ):
            when = getattr(obj, field)
            if when is not None:
                steps.append((when, title, obj.error if field == "failed_at" else ""))
        if obj.next_attempt_at is not None:
            steps.append((obj.next_attempt_at, "Next attempt due", obj.error))
        for callback in self._callbacks(obj):
            steps.append(
                (
                    callback.created_at,
                    "Status callback",
                    f"{callback.type} ({callback.get_status_display()})",
                )
            )
        steps.sort(key=lambda step: step[0])
        return _table(["When", "Step", "Details"], ((_when(w), s, d or "-") for w, s, d in steps))

    @display(description="Content")
    def rendered(self, obj: Message) -> str:
        return _content_table(obj.content or {})

    @display(description="Attempts")
    def attempt_table(self, obj: Message) -> str:
        attempts: Iterable[DeliveryAttempt] = obj.attempts.select_related("integration").order_by(
            "started_at", "pk"
        )
        return _table(
            ["Attempt", "Time", "Outcome", "Error and response"],
            (
                (
                    format_html(
                        "{}. {}{}",
                        number,
                        attempt.provider,
                        f" ({attempt.integration.name})" if attempt.integration else "",
                    ),
                    format_html(
                        "{}<br>→ {}<br>{}",
                        _when(attempt.started_at),
                        _when(attempt.finished_at),
                        f"{attempt.latency_ms} ms" if attempt.latency_ms is not None else "",
                    ),
                    format_html(
                        "{} {}",
                        _label(
                            attempt.get_outcome_display(), OUTCOME_LABELS.get(attempt.outcome, "")
                        ),
                        f"HTTP {attempt.response_status}" if attempt.response_status else "",
                    ),
                    format_html(
                        "{}{}",
                        attempt.error,
                        _pre(attempt.response_excerpt) if attempt.response_excerpt else "",
                    )
                    if attempt.error or attempt.response_excerpt
                    else "-",
                )
                for number, attempt in enumerate(attempts, start=1)
            ),
            empty="No attempt yet.",
        )

    def _callbacks(self, obj: Message) -> list[StatusCallback]:
        if not hasattr(obj, "_callbacks"):
            obj._callbacks = list(  # type: ignore[attr-defined]
                StatusCallback.objects.filter(message_id=obj.pk)
                .select_related("endpoint")
                .order_by("created_at")[:CALLBACKS_SHOWN]
            )
        return obj._callbacks  # type: ignore[attr-defined]

    @display(description="Callbacks")
    def callbacks(self, obj: Message) -> str:
        return _table(
            ["Created", "Type and endpoint", "Status"],
            (
                (
                    _when(callback.created_at),
                    format_html(
                        "{}<br>{}", callback.type, _link(callback.endpoint, callback.endpoint.url)
                    ),
                    format_html(
                        "{} after {} attempt(s){}{}",
                        callback.get_status_display(),
                        callback.attempt_count,
                        f", HTTP {callback.response_status}" if callback.response_status else "",
                        f": {callback.error}" if callback.error else "",
                    ),
                )
                for callback in self._callbacks(obj)
            ),
            empty="No status callbacks were emitted for this message.",
        )

    @action(description="Replay selected failed webhook messages", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        replayed, refused = 0, []
        for message_id in queryset.values_list("pk", flat=True):
            try:
                webhook_message_replay(message_id=message_id)
                replayed += 1
            except ReplayRefused as refusal:
                refused.append(str(refusal))
        if replayed:
            messages.success(request, f"Queued {replayed} message(s) again.")
        for reason in refused:
            messages.error(request, reason)

    @action(description="Replay", url_path="replay", permissions=["replay"])
    def replay_one(self, request: HttpRequest, object_id: str) -> HttpResponse:
        message = self.get_object(request, object_id)
        if message is None:
            raise Http404(f"There is no message {object_id}.")
        if request.method != "POST":
            return _confirm_page(
                self,
                request,
                message,
                title=f"Replay message {message.pk}",
                description="A failed webhook message is queued again with a fresh retry "
                "schedule, to the endpoints that have not accepted it. Earlier attempts stay "
                "in its timeline.",
                submit_label="Replay",
            )
        try:
            webhook_message_replay(message_id=message.pk)
        except ReplayRefused as refusal:
            messages.error(request, str(refusal))
        else:
            messages.success(request, f"Message {message.pk} is queued again.")
        return HttpResponseRedirect(_change_url(message))


tenant_admin_site.register(Subscriber, SubscriberAdmin)
tenant_admin_site.register(Topic, TopicAdmin)
tenant_admin_site.register(Integration, IntegrationAdmin)
tenant_admin_site.register(WebhookEndpoint, WebhookEndpointAdmin)
tenant_admin_site.register(Event, EventAdmin)
tenant_admin_site.register(Message, MessageAdmin)
