"""Tasks for the Celery tests; the test worker imports this module with --include.

Results travel through Redis keys (the app ignores results), and failures are
recorded by a task_failure handler so a test can see a task refused to run.
"""

import json
from typing import Any

from celery.signals import task_failure
from django.contrib.auth.models import User

from herald.celery import app
from herald.tasks import redis_client
from tenants.db import tenant_connection

RESULT_TTL_SECONDS = 120


@app.task(name="tests.record_schema")
def record_schema(token: str) -> None:
    redis_client().set(
        f"test:ran:{token}",
        json.dumps(
            {
                "schema": tenant_connection.schema_name,
                "users": sorted(User.objects.values_list("username", flat=True)),
            }
        ),
        ex=RESULT_TTL_SECONDS,
    )


@app.task(name="tests.count_runs")
def count_runs(token: str) -> None:
    redis_client().incr(f"test:runs:{token}")
    redis_client().expire(f"test:runs:{token}", RESULT_TTL_SECONDS)


@task_failure.connect
def record_failure(
    sender: Any = None, task_id: str | None = None, exception: Any = None, **kw: Any
) -> None:
    redis_client().set(
        f"test:failed:{task_id}",
        json.dumps({"type": type(exception).__name__, "message": str(exception)}),
        ex=RESULT_TTL_SECONDS,
    )
