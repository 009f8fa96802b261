"""Beat work that visits every tenant's schema in turn.

A sweep that stops at the first tenant whose schema fails (a migration that
did not run, a row that trips a bug) would leave every later tenant's due
messages unsent. Each tenant's work runs on its own here: a failure is
logged with the tenant's name and the sweep goes on to the next one. When
the database itself is gone (its connection is lost and a new one can not be
made) every later tenant would fail the same way, so the run stops there
with one error instead of one per tenant; the next run starts over.

Most tenants have nothing due most of the time, and building a sweep's
queries costs milliseconds of ORM work per tenant: with thousands of tenants
every beat run would take most of its interval. So a sweep names what it
would claim (``pending``, the very querysets its service claims from); they
are compiled once per run into one ``SELECT EXISTS (...) OR ...``, and a
tenant for which it answers false is skipped after that one query. The
probe's ``now`` is the run's start: a row that falls due while the run goes
on waits for the next run, as it would have without the probe.
"""

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.core.exceptions import EmptyResultSet
from django.db import DatabaseError, connection
from django.db.models import QuerySet
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, tenant_context

from tenants.models import Tenant

logger = logging.getLogger(__name__)

Pending = Callable[[datetime], Iterable[QuerySet[Any]]]


@dataclass(frozen=True, kw_only=True)
class Swept:
    worked: int  # tenants whose work ran
    idle: int  # tenants skipped: nothing pending
    failed: int  # tenants whose probe or work raised


def tenants_each(
    *,
    work: Callable[[Tenant], object],
    what: str,
    pending: Pending | None = None,
    include_suspended: bool = False,
) -> Swept:
    """Runs ``work(tenant)`` inside each tenant's schema, in slug order, where
    ``pending`` (if given) finds a row. ``what`` names the work in the log
    ("sweeping the messages"). Suspended tenants are skipped unless
    ``include_suspended`` (their late changes may still need folding). A task
    out of time stops here: the next run carries on."""
    probe = _probe_compile(pending(timezone.now())) if pending is not None else None
    tenants = Tenant.objects.exclude(schema_name=get_public_schema_name()).order_by("slug")
    if not include_suspended:
        tenants = tenants.filter(is_active=True)
    worked = idle = failed = 0
    for tenant in tenants:
        try:
            with tenant_context(tenant):
                if probe is not None and not _probe_run(probe):
                    idle += 1
                    continue
                work(tenant)
                worked += 1
        except SoftTimeLimitExceeded:
            raise
        except DatabaseError:
            if not _database_reachable():
                logger.error("%s stopped at %s: the database is unreachable", what, tenant.slug)
                raise
            failed += 1
            logger.exception("%s of %s failed", what, tenant.schema_name)
        except Exception:  # one tenant's failure must not hold up the others'
            failed += 1
            logger.exception("%s of %s failed", what, tenant.schema_name)
    return Swept(worked=worked, idle=idle, failed=failed)


def _database_reachable() -> bool:
    """After a database error: whether the database still answers, connecting
    again if this connection was lost (a terminated backend, a restart)."""
    try:
        if connection.connection is not None and connection.is_usable():
            return True
        connection.close()
        connection.ensure_connection()
    except DatabaseError:
        return False
    return True


def _probe_compile(querysets: Iterable[QuerySet[Any]]) -> tuple[str, list[Any]]:
    # The SQL names tables unqualified, so it runs in whichever schema is set.
    exists: list[str] = []
    params: list[Any] = []
    for queryset in querysets:
        try:
            sql, sql_params = queryset.order_by().values("pk")[:1].query.sql_with_params()
        except EmptyResultSet:  # can match nothing, e.g. pk__in=[]
            continue
        exists.append(f"EXISTS ({sql})")
        params.extend(sql_params)
    return "SELECT " + (" OR ".join(exists) or "false"), params


def _probe_run(probe: tuple[str, list[Any]]) -> bool:
    sql, params = probe
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return bool(row and row[0])
