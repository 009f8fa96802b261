"""When a message may go out: a rule's delay and the subscriber's send window."""

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name) if name else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _time_of_day(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def send_window_opens(*, at: datetime, window: dict[str, Any], timezone: str) -> datetime:
    """``at`` when it falls inside the window (``{"start": "HH:MM", "end": "HH:MM"}``,
    in ``timezone``; an end before the start runs over midnight), otherwise the
    next moment the window opens, in UTC. An unknown time zone counts as UTC."""
    zone = _zone(timezone)
    start, end = _time_of_day(window["start"]), _time_of_day(window["end"])
    local = at.astimezone(zone)
    now = local.time().replace(tzinfo=None)
    inside = (start <= now < end) if start < end else (now >= start or now < end)
    if inside:
        return at
    day = local.date() if now < start else local.date() + timedelta(days=1)
    return datetime.combine(day, start, tzinfo=zone).astimezone(UTC)


def message_send_after(
    *,
    now: datetime,
    delay_seconds: int | None,
    window: dict[str, Any] | None,
    timezone: str,
    critical: bool,
) -> datetime | None:
    """Not before when (None: at once). The delay counts from ``now``; the window
    then holds the message until it opens, except for critical event types."""
    at = now + timedelta(seconds=delay_seconds) if delay_seconds else now
    if window is not None and not critical:
        at = send_window_opens(at=at, window=window, timezone=timezone)
    return None if at <= now else at
