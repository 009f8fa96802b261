"""Beat work that visits every tenant's schema in turn.

A sweep that stops at the first tenant whose schema fails (a migration that
did not run, a row that trips a bug) would leave every later tenant's due
messages unsent. Each tenant's work runs on its own here: a failure is
logged with the tenant's name and the sweep goes on to the next one.
"""

import logging
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded
from django_tenants.utils import get_public_schema_name, tenant_context

from tenants.models import Tenant

logger = logging.getLogger(__name__)


def tenants_each(
    *, work: Callable[[Tenant], object], what: str, include_suspended: bool = False
) -> int:
    """Runs ``work(tenant)`` inside each tenant's schema, in slug order; returns
    how many tenants failed. ``what`` names the work in the log ("sweeping
    the messages"). Suspended tenants are skipped unless ``include_suspended``
    (their late changes may still need folding). A task out of time stops
    here: the next run carries on."""
    tenants = Tenant.objects.exclude(schema_name=get_public_schema_name()).order_by("slug")
    if not include_suspended:
        tenants = tenants.filter(is_active=True)
    failed = 0
    for tenant in tenants:
        try:
            with tenant_context(tenant):
                work(tenant)
        except SoftTimeLimitExceeded:
            raise
        except Exception:  # one tenant's failure must not hold up the others'
            failed += 1
            logger.exception("%s of %s failed", what, tenant.schema_name)
    return failed
