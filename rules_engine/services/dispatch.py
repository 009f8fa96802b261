"""Handing stored events to the pipeline: the events table is the outbox.

Accepting an event is one INSERT. Once it commits, its id joins this process's
publisher, which publishes the ids gathered over HERALD_PIPELINE_PUBLISH_MS as
one Celery task per 100 (a background thread does the publishing). So a
request pays for no broker round trip, and under load one publish serves many
requests.

What the publisher can lose — ids pending when the process dies, a publish
that fails, a task the broker drops — is still in the table: the sweeper
(beat) claims accepted events older than HERALD_DISPATCH_GRACE_SECONDS, marks
them ``queued`` with ``dispatched_at``, and publishes them; queued events are
published again once ``dispatched_at`` is older than
HERALD_DISPATCH_REQUEUE_SECONDS. Claims use ``FOR UPDATE SKIP LOCKED``, so
sweepers on several machines share the work; processing is idempotent, so an
event published twice is processed once.
"""

import atexit
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from rules_engine.models import Event, EventStatus
from tenants.db import tenant_connection

logger = logging.getLogger(__name__)

PUBLISH_CHUNK = 100
CLAIM_LIMIT = 1000

# publish(schema_name, event_ids): one pipeline task for these events of that tenant.
Publish = Callable[[str, list[str]], None]


def publish_to_pipeline(schema_name: str, chunk: list[str]) -> None:
    from rules_engine.tasks import event_process_many

    # The schema travels explicitly: the publisher's thread is not in the
    # tenant's schema (tenant-schemas-celery reads this header).
    event_process_many.apply_async(args=[chunk], headers={"_schema_name": schema_name})


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), PUBLISH_CHUNK):
        yield ids[start : start + PUBLISH_CHUNK]


class PipelinePublisher:
    """Gathers committed event ids and publishes them in chunks, off the request path.

    With HERALD_PIPELINE_PUBLISH_MS = 0 ids are published at once, in the
    caller's thread. Otherwise a daemon thread, started on first use in each
    process (and again after a fork), publishes what gathered during the
    interval, or as soon as a chunk is full. ``flush()`` publishes what is
    pending now; it runs at interpreter exit.
    """

    def __init__(self, publish: Publish = publish_to_pipeline) -> None:
        self.publish = publish
        self._pid: int | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        """(Re)initialise this process's state: threads and locks do not survive fork."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pending: dict[str, list[str]] = {}
        self._count = 0
        self._has_items = threading.Event()
        self._chunk_full = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="herald-pipeline-publisher", daemon=True
        )
        self._thread.start()

    def add(self, *, schema_name: str, event_ids: Iterable[uuid.UUID | str]) -> None:
        ids = [str(event_id) for event_id in event_ids]
        if not ids:
            return
        if settings.HERALD_PIPELINE_PUBLISH_MS <= 0:
            self._send({schema_name: ids})
            return
        if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
            self._start()
        with self._lock:
            self._pending.setdefault(schema_name, []).extend(ids)
            self._count += len(ids)
            self._has_items.set()
            if self._count >= PUBLISH_CHUNK:
                self._chunk_full.set()

    def flush(self) -> int:
        """Publish everything pending in this process now; returns how many ids."""
        if self._pid != os.getpid():
            return 0
        with self._lock:
            pending, self._pending, count = self._pending, {}, self._count
            self._count = 0
            self._has_items.clear()
            self._chunk_full.clear()
        self._send(pending)
        return count

    def _run(self) -> None:
        while True:
            self._has_items.wait()
            self._chunk_full.wait(settings.HERALD_PIPELINE_PUBLISH_MS / 1000)
            self.flush()

    def _send(self, pending: dict[str, list[str]]) -> None:
        for schema_name, ids in pending.items():
            for chunk in _chunks(ids):
                self._publish_safely(schema_name, chunk)

    def _publish_safely(self, schema_name: str, chunk: list[str]) -> None:
        try:
            self.publish(schema_name, chunk)
        except Exception:
            # Still accepted in the table: the sweeper dispatches them later.
            logger.exception(
                "publishing %s events of %s to the pipeline failed; the sweeper will "
                "dispatch them after %s s",
                len(chunk),
                schema_name,
                settings.HERALD_DISPATCH_GRACE_SECONDS,
            )


pipeline_publisher = PipelinePublisher()


def events_enqueue(event_ids: Iterable[uuid.UUID]) -> None:
    """Hand these events to the pipeline once the current transaction commits."""
    ids = list(event_ids)
    if ids:
        schema_name = tenant_connection.schema_name
        transaction.on_commit(
            lambda: pipeline_publisher.add(schema_name=schema_name, event_ids=ids)
        )


@atexit.register
def _flush_at_exit() -> None:
    pipeline_publisher.flush()


# --- the sweeper's claims -----------------------------------------------------------


def events_stale(*, now: datetime) -> Q:
    """Events the pipeline should have by now but may not.

    Accepted events past the grace period (their publish was lost), scheduled
    ones whose time has come, and queued ones whose publish is older than the
    requeue period (the broker lost the task, or the queue is that far behind).
    """
    grace = timedelta(seconds=settings.HERALD_DISPATCH_GRACE_SECONDS)
    requeue = timedelta(seconds=settings.HERALD_DISPATCH_REQUEUE_SECONDS)
    accepted = Q(status=EventStatus.ACCEPTED) & (
        Q(send_at__isnull=True, created_at__lt=now - grace) | Q(send_at__lte=now)
    )
    queued = Q(status=EventStatus.QUEUED, dispatched_at__lt=now - requeue)
    return accepted | queued


_CLAIM = """UPDATE {table} SET status = %s, dispatched_at = %s
WHERE id IN ({candidates})
RETURNING id
"""


def events_dispatch(
    *,
    which: Q,
    limit: int = CLAIM_LIMIT,
    now: datetime | None = None,
    publish: Publish | None = None,
) -> int:
    """Claim up to ``limit`` events of the current schema matching ``which``, mark
    them queued, and publish them in chunks once the claim commits.

    Returns how many were claimed. A publish that fails is logged; its events
    stay queued, and a later sweep publishes them again.
    """
    now = now or timezone.now()
    send = publish or pipeline_publisher.publish
    candidates = (
        Event.objects.filter(which)
        .order_by("created_at")
        .select_for_update(skip_locked=True)
        .values("id")[:limit]
    )
    with transaction.atomic(), connection.cursor() as cursor:
        # Compiled inside the transaction: Django refuses FOR UPDATE outside one.
        inner_sql, inner_params = candidates.query.sql_with_params()
        table = connection.ops.quote_name(Event._meta.db_table)
        cursor.execute(
            _CLAIM.format(table=table, candidates=inner_sql),
            [EventStatus.QUEUED, now, *inner_params],
        )
        ids = [str(row[0]) for row in cursor.fetchall()]
        schema_name = tenant_connection.schema_name
        for chunk in _chunks(ids):
            transaction.on_commit(
                lambda chunk=chunk: send(schema_name, chunk),  # type: ignore[misc]
                robust=True,
            )
    return len(ids)
