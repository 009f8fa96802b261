"""The platform's moving parts, for staff and operators: how many tasks wait in
each queue, and which workers have reported in."""

import logging
import time
from dataclasses import dataclass

from herald.celery import app
from herald.tasks import HEARTBEAT_TTL_SECONDS, redis_client

logger = logging.getLogger(__name__)

# Every queue Herald's tasks are routed to (settings.CELERY_TASK_ROUTES, the
# slow lane of services.dispatch, and Celery's default for the platform tasks).
QUEUES = ("pipeline", "delivery", "delivery_slow", "celery")
HEARTBEAT_PREFIX = "herald:heartbeat:"


@dataclass(frozen=True)
class QueueDepth:
    name: str
    waiting: int | None  # None: the broker did not answer


def queue_depths() -> list[QueueDepth]:
    """Messages waiting in each queue, asked of the broker itself (Redis or AMQP)
    with a passive declare, so a queue nobody declared reads as 0, not an error."""
    depths: list[QueueDepth] = []
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            channel = connection.default_channel
            for name in QUEUES:
                try:
                    declared = channel.queue_declare(queue=name, passive=True)
                    depths.append(QueueDepth(name=name, waiting=int(declared.message_count)))
                except Exception:  # AMQP: a queue never declared is a channel error
                    depths.append(QueueDepth(name=name, waiting=0))
                    channel = connection.channel()
    except Exception:
        logger.warning("the broker did not answer for queue depths", exc_info=True)
        return [QueueDepth(name=name, waiting=None) for name in QUEUES]
    return depths


@dataclass(frozen=True)
class Heartbeat:
    worker: str
    seen_at: float  # Unix time
    age_seconds: float


def worker_heartbeats() -> list[Heartbeat]:
    """Workers that ran the heartbeat task within HEARTBEAT_TTL_SECONDS, most
    recent first (herald.tasks.worker_heartbeat, every 30 s from beat)."""
    client = redis_client()
    now = time.time()
    keys = sorted(client.scan_iter(match=f"{HEARTBEAT_PREFIX}*", count=500))
    if not keys:
        return []
    beats = []
    for key, value in zip(keys, client.mget(keys), strict=True):
        if value is None:
            continue
        seen_at = float(value)
        name = key.decode() if isinstance(key, bytes) else str(key)
        beats.append(
            Heartbeat(
                worker=name.removeprefix(HEARTBEAT_PREFIX),
                seen_at=seen_at,
                age_seconds=max(0.0, now - seen_at),
            )
        )
    return sorted(beats, key=lambda beat: beat.age_seconds)


__all__ = ["HEARTBEAT_TTL_SECONDS", "Heartbeat", "QueueDepth", "queue_depths", "worker_heartbeats"]
