"""The base class of every Herald task, and the platform's own periodic tasks.

Tenancy is explicit wherever work goes async (STYLE.md 8): a task runs in the
schema it was sent from, and a task that arrives without a tenant schema fails
loudly. The few tasks that really are platform-wide say so with
``requires_tenant=False``.

Redelivery is capped: with ``acks_late`` a task whose worker dies is delivered
again, so a task that kills its worker every time would loop forever. Each
delivery of a task (per retry number) is counted in Redis, and past
``HERALD_TASK_MAX_DELIVERIES`` the task fails instead of running.
"""

import logging
import socket
import time
from typing import Any

import redis
from django.conf import settings
from django_tenants.utils import get_public_schema_name
from tenant_schemas_celery.app import get_schema_name_from_task
from tenant_schemas_celery.task import TenantTask

from tenants.db import tenant_connection

logger = logging.getLogger(__name__)

DELIVERY_COUNT_TTL_SECONDS = 24 * 3600
HEARTBEAT_TTL_SECONDS = 120


class TenantMissing(RuntimeError):
    """A tenant task was sent or received without a tenant schema."""


class RedeliveryLimitExceeded(RuntimeError):
    """A task was delivered more often than HERALD_TASK_MAX_DELIVERIES."""


_redis_client: "redis.Redis | None" = None


def redis_client() -> "redis.Redis":
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(settings.REDIS_URL)
    return _redis_client


def delivery_count_key(task_id: str, retries: int) -> str:
    return f"herald:task-deliveries:{task_id}:{retries}"


class HeraldTask(TenantTask):
    abstract = True
    requires_tenant = True

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        headers = options.get("headers") or {}
        if (
            self.requires_tenant
            and "_schema_name" not in headers
            and tenant_connection.schema_name == get_public_schema_name()
        ):
            raise TenantMissing(
                f"{self.name} must be sent from a tenant's schema (use tenant_context), "
                "not from the public schema"
            )
        return super().apply_async(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.requires_tenant:
            self._check_tenant(kwargs)
        if not self.request.called_directly and self.request.id:
            self._count_delivery()
        return super().__call__(*args, **kwargs)

    def _check_tenant(self, kwargs: dict[str, Any]) -> None:
        if self.request.called_directly:
            schema_name = tenant_connection.schema_name
        else:
            schema_name = get_schema_name_from_task(self, kwargs)
        if not schema_name or schema_name == get_public_schema_name():
            raise TenantMissing(
                f"{self.name} (task id {self.request.id}) arrived without a tenant schema; "
                "refusing to run it in the public schema"
            )

    def _count_delivery(self) -> None:
        key = delivery_count_key(self.request.id, self.request.retries or 0)
        client = redis_client()
        count = int(client.incr(key))
        client.expire(key, DELIVERY_COUNT_TTL_SECONDS)
        limit = settings.HERALD_TASK_MAX_DELIVERIES
        if count > limit:
            raise RedeliveryLimitExceeded(
                f"{self.name} (task id {self.request.id}) was delivered {count} times; "
                f"the limit is {limit}, so it is failed instead of run again"
            )


from herald.celery import app  # noqa: E402 - the app imports this module by name


@app.task(requires_tenant=False, name="herald.worker_heartbeat")
def worker_heartbeat() -> None:
    """Record that a worker is alive and consuming (shown to platform staff)."""
    hostname = socket.gethostname()
    redis_client().set(f"herald:heartbeat:{hostname}", int(time.time()), ex=HEARTBEAT_TTL_SECONDS)
