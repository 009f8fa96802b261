"""The outbox: events wait here, in the application's own database, until Herald
has them.

``outbox_add`` writes the row in the caller's transaction (so the event exists
exactly when the change does) and, once that commits, sends it. A row belongs
to whoever claimed it last, until its lease runs out: the committing request
claims it as it is written, ``outbox_flush`` claims due rows by moving their
``next_attempt_at`` ahead with a conditional UPDATE, so two senders never send
one row at the same time. A row whose sender died is due again when its lease
ends. Herald stores an event once per idempotency key (the row's id) for seven
days, so a row sent twice (the answer was lost, the DELETE was) is one event.
"""

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import Q
from django.utils import timezone

from herald_client import errors
from herald_client._retry import Backoff
from herald_client.client import Herald
from herald_client.django import conf
from herald_client.django.models import OutboxEvent
from herald_client.models import EventInput

logger = logging.getLogger("herald_client.django")

BODY_KEYS = frozenset({"event", "to", "topic", "payload", "actor", "send_at", "tenant_data"})
# Rows to a batch request (Herald takes up to HERALD_MAX_BATCH_ITEMS, 1,000).
FLUSH_BATCH = 100
MAX_ERROR_LENGTH = 2000
# Herald refused the event itself: sending it again can not help.
REJECTED = (
    errors.BadRequest,
    errors.NotFound,
    errors.PayloadTooLarge,
    errors.ValidationError,
)
# The same for one item of a batch, by its problem type.
ITEM_REJECTED = frozenset({"validation-failed", "idempotency-key-reused"})

_clients: dict[tuple[int, str, str, float], Herald] = {}
_clients_lock = threading.Lock()


def herald() -> Herald:
    """This process's client for the configured Herald (made again after a fork
    or a settings change). It does not retry on its own: the outbox does."""
    key = (os.getpid(), conf.herald_url(), conf.api_key(), conf.timeout())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = Herald(
                conf.api_key(), base_url=conf.herald_url(), timeout=conf.timeout(), max_retries=0
            )
        return client


@dataclass
class FlushResult:
    sent: int = 0
    retrying: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


def _lease_end(now: datetime) -> datetime:
    return now + timedelta(seconds=conf.lease_seconds())


def outbox_add(body: dict[str, Any], *, using: str = DEFAULT_DB_ALIAS) -> OutboxEvent:
    """Write ``body`` (a ``POST /api/v1/events`` request) to the outbox in the
    current transaction of ``using``; send it once that commits."""
    unknown = set(body) - BODY_KEYS
    if unknown or not isinstance(body.get("event"), str):
        raise ValueError(
            f"a Herald event body needs 'event' and may have {sorted(BODY_KEYS - {'event'})}; "
            f"got {sorted(body)}"
        )
    try:  # what is stored is what is sent, every time: plain JSON from here on
        body = json.loads(json.dumps(body, cls=DjangoJSONEncoder))
    except (TypeError, ValueError) as error:
        raise ValueError(f"the {body['event']!r} event's body is not JSON: {error}") from error
    row = OutboxEvent.objects.using(using).create(
        event=body["event"], body=body, next_attempt_at=_lease_end(timezone.now())
    )
    if conf.send_on_commit():
        transaction.on_commit(lambda: _send_safely(row, using), using=using)
    return row


def _send_safely(row: OutboxEvent, using: str) -> None:
    """After commit, in the request: whatever goes wrong, the row waits for a flush."""
    try:
        outbox_send(row, using=using)
    except Exception:  # a broken setting, the database gone: never the caller's request
        logger.exception("sending %s to Herald failed; it waits in the outbox", row)


@dataclass(frozen=True)
class Outcome:
    """``kind``: 'sent' (the row is deleted), 'retrying' (due again later),
    'unreachable' (the same, Herald did not answer) or 'rejected' (kept until
    ``herald_outbox retry``); ``detail``: the error, if any."""

    kind: Literal["sent", "retrying", "unreachable", "rejected"]
    detail: str = ""


def outbox_send(row: OutboxEvent, *, using: str = DEFAULT_DB_ALIAS) -> Outcome:
    """Send one row its sender has claimed."""
    try:
        herald().events.send(**row.body, idempotency_key=row.idempotency_key)
    except REJECTED as error:
        return _rejected(row, _describe(error), using)
    except errors.HeraldError as error:
        return _failed(row, error, using)
    OutboxEvent.objects.using(using).filter(pk=row.pk).delete()
    return Outcome("sent")


def outbox_send_many(rows: list[OutboxEvent], *, using: str = DEFAULT_DB_ALIAS) -> list[Outcome]:
    """Send claimed rows in one batch request, each row's outcome in order. Each
    item is accepted (deleted) or refused (kept, rejected) on its own; a failed
    request is every row's failure, tried again later; a request refused as a
    whole is sent again row by row, so that no row holds up the others."""
    if len(rows) <= 1:
        return [outbox_send(row, using=using) for row in rows]
    items = [cast(EventInput, {**row.body, "idempotency_key": row.idempotency_key}) for row in rows]
    try:
        answer = herald().events.send_batch(items)
    except REJECTED:
        return [outbox_send(row, using=using) for row in rows]
    except errors.HeraldError as error:
        return [_failed(row, error, using) for row in rows]
    results = {result.index: result for result in answer.results}
    outcomes: list[Outcome] = []
    for index, row in enumerate(rows):
        result = results.get(index)
        if result is not None and result.accepted:
            outcomes.append(Outcome("sent"))
            continue
        slug = (result.type or "") if result is not None else "no result for this item"
        slug = slug.removeprefix(errors.PROBLEM_PREFIX)
        fields = [f"{e.pointer}: {e.detail}" for e in (result.errors if result else ())]
        detail = "\n".join([f"refused in a batch ({slug})", *fields])[:MAX_ERROR_LENGTH]
        if slug in ITEM_REJECTED:
            outcomes.append(_rejected(row, detail, using))
        else:  # the key in use concurrently, or anything new: not the event's fault
            outcomes.append(_retry_later(row, detail, using, unreachable=False))
    sent = [row.pk for row, outcome in zip(rows, outcomes, strict=True) if outcome.kind == "sent"]
    OutboxEvent.objects.using(using).filter(pk__in=sent).delete()
    return outcomes


def _rejected(row: OutboxEvent, detail: str, using: str) -> Outcome:
    OutboxEvent.objects.using(using).filter(pk=row.pk).update(
        attempts=row.attempts + 1, rejected_at=timezone.now(), last_error=detail
    )
    logger.error("Herald refused %s, kept in the outbox: %s", row, detail)
    return Outcome("rejected", detail)


def _failed(row: OutboxEvent, error: errors.HeraldError, using: str) -> Outcome:
    """Unreachable, 5xx, 429, a key that is wrong or lacks the scope (401/403,
    fixed in settings without losing what waits), 409 (the key in use)."""
    retry_after = error.retry_after if isinstance(error, errors.RateLimited) else None
    unreachable = isinstance(error, errors.APIConnectionError)
    return _retry_later(
        row, _describe(error), using, unreachable=unreachable, retry_after=retry_after
    )


def _retry_later(
    row: OutboxEvent,
    detail: str,
    using: str,
    *,
    unreachable: bool,
    retry_after: float | None = None,
) -> Outcome:
    attempts = row.attempts + 1
    delay = Backoff(initial=2.0, maximum=conf.max_delay()).delay(min(attempts - 1, 30))
    if retry_after is not None:
        delay = max(delay, retry_after)
    OutboxEvent.objects.using(using).filter(pk=row.pk).update(
        attempts=attempts,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        last_error=detail,
    )
    logger.warning("%s not sent (attempt %s), next in %.0f s: %s", row, attempts, delay, detail)
    return Outcome("unreachable" if unreachable else "retrying", detail)


def _describe(error: errors.HeraldError) -> str:
    detail = str(error)
    for problem in error.errors:
        detail += f"\n{problem.pointer}: {problem.detail}"
    return detail[:MAX_ERROR_LENGTH]


def _claim(row: OutboxEvent, using: str, now: datetime) -> bool:
    """Take the row if nobody took it since it was read."""
    lease = _lease_end(now)
    taken = (
        OutboxEvent.objects.using(using)
        .filter(pk=row.pk, next_attempt_at=row.next_attempt_at, rejected_at=None)
        .update(next_attempt_at=lease)
    )
    row.next_attempt_at = lease
    return taken == 1


def outbox_flush(*, using: str = DEFAULT_DB_ALIAS, everything: bool = False) -> FlushResult:
    """Send every due row (``everything``: every row not rejected, due or not),
    oldest first, FLUSH_BATCH to a request, so that an outbox that filled during
    an outage drains in few requests. Stops early when Herald is unreachable:
    the rest would fail the same way, and wait."""
    result = FlushResult()
    after = Q()  # keyset: the rows after the last one looked at
    while True:
        now = timezone.now()
        due = OutboxEvent.objects.using(using).filter(after, rejected_at=None)
        if not everything:
            due = due.filter(next_attempt_at__lte=now)
        batch = list(due.order_by("created_at", "id")[:FLUSH_BATCH])
        if not batch:
            return result
        last = batch[-1]
        after = Q(created_at__gt=last.created_at) | Q(created_at=last.created_at, id__gt=last.id)
        claimed = [row for row in batch if _claim(row, using, now)]
        outcomes = outbox_send_many(claimed, using=using)
        for row, outcome in zip(claimed, outcomes, strict=True):
            if outcome.kind == "sent":
                result.sent += 1
                continue
            result.errors.append(f"{row}: {outcome.detail}")
            if outcome.kind == "rejected":
                result.rejected += 1
            else:
                result.retrying += 1
        if any(outcome.kind == "unreachable" for outcome in outcomes):
            return result


def outbox_retry(
    ids: list[str] | None = None, *, using: str = DEFAULT_DB_ALIAS, rejected: bool = False
) -> int:
    """Make rows due now: these ids, and/or every rejected row; returns how many."""
    rows = OutboxEvent.objects.using(using).all()
    if ids:
        rows = rows.filter(pk__in=ids)
    elif rejected:
        rows = rows.exclude(rejected_at=None)
    else:
        return 0
    return rows.update(rejected_at=None, next_attempt_at=timezone.now())
