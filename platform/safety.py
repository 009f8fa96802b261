"""Refuse to start production on an unsafe configuration.

Every problem is collected first and reported together, so an operator fixes
the whole environment in one pass instead of one restart per variable.
"""

import base64
import binascii
import ipaddress
from collections.abc import Sequence

ENVIRONMENTS = ("development", "test", "production")

DEV_SECRET_KEY = "django-insecure-herald-development-key-do-not-use-in-production"  # noqa: S105
# A fixed, public Fernet key: fine for a laptop, refused in production.
DEV_ENCRYPTION_KEY = "aGVyYWxkLWRldmVsb3BtZW50LWtleS0wMDAwMDAwMDA="
MIN_SECRET_KEY_LENGTH = 50
MAX_API_KEY_CACHE_SECONDS = 5.0
MIN_METRICS_TOKEN_LENGTH = 24


class UnsafeSettings(SystemExit):
    """Raised at settings import; SystemExit so the process stops with the message."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"Herald refuses to start with unsafe settings:\n{lines}")


def is_fernet_key(value: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(value.encode())) == 32
    except (binascii.Error, ValueError):
        return False


MAX_RETRY_WAITS = 25
MAX_RETRY_WAIT_SECONDS = 7 * 86400


def retry_schedule(values: Sequence[str]) -> tuple[float, ...]:
    """HERALD_DELIVERY_RETRY_SCHEDULE as seconds: 1 to 25 waits, each 0 to 7 days."""
    try:
        waits = tuple(float(value) for value in values)
    except ValueError:
        waits = ()
    if not 1 <= len(waits) <= MAX_RETRY_WAITS or not all(
        0 <= wait <= MAX_RETRY_WAIT_SECONDS for wait in waits
    ):
        raise UnsafeSettings(
            [
                f"HERALD_DELIVERY_RETRY_SCHEDULE must be 1 to {MAX_RETRY_WAITS} comma-separated "
                f"waits in seconds, each from 0 to {MAX_RETRY_WAIT_SECONDS} (7 days), not "
                f"{','.join(values)!r}"
            ]
        )
    return waits


def refuse_bad_trusted_proxies(entries: Sequence[str], *, herald_env: str) -> None:
    """HERALD_TRUSTED_PROXIES: each an address or a CIDR range; in production,
    not every address (anyone could then choose the address they are counted as)."""
    problems: list[str] = []
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            problems.append(
                f"HERALD_TRUSTED_PROXIES entry {entry!r} is not an IP address or a CIDR range"
            )
            continue
        if herald_env == "production" and network.prefixlen == 0:
            problems.append(
                f"HERALD_TRUSTED_PROXIES contains {entry!r}, every address: any client could "
                "pick the address it is counted as; list your proxies' addresses"
            )
    if problems:
        raise UnsafeSettings(problems)


def refuse_bad_task_timing(
    *,
    soft_time_limit: int,
    time_limit: int,
    sending_timeout: int,
    countdown_max: int,
    visibility_timeout: int,
) -> None:
    """Timings that would make Herald send a message twice, in any environment:
    the sweeper must not take back a message whose worker may still be sending
    it, and the broker must not hand a task waiting on its countdown to a second
    worker."""
    problems: list[str] = []
    if not 0 < soft_time_limit < time_limit:
        problems.append(
            f"CELERY_TASK_SOFT_TIME_LIMIT ({soft_time_limit}) must be above 0 and below "
            f"CELERY_TASK_TIME_LIMIT ({time_limit}), so a task can stop cleanly first"
        )
    if sending_timeout <= time_limit:
        problems.append(
            f"HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS ({sending_timeout}) must be above "
            f"CELERY_TASK_TIME_LIMIT ({time_limit}): the sweeper would queue again, and send "
            "a second time, a message whose worker is still sending it"
        )
    if not 0 <= countdown_max < visibility_timeout:
        problems.append(
            f"HERALD_DELIVERY_COUNTDOWN_MAX_SECONDS ({countdown_max}) must be from 0 to below "
            f"the broker's visibility timeout ({visibility_timeout} s): Redis would hand a "
            "task still waiting on its countdown to a second worker"
        )
    if problems:
        raise UnsafeSettings(problems)


def refuse_unsafe_settings(
    *,
    herald_env: str,
    debug: bool,
    secret_key: str,
    allowed_hosts: Sequence[str],
    encryption_keys: Sequence[str],
    api_key_cache_seconds: float,
    allow_loopback_urls: bool = False,
    metrics_token: str = "",
) -> None:
    problems: list[str] = []
    if api_key_cache_seconds < 0 or api_key_cache_seconds > MAX_API_KEY_CACHE_SECONDS:
        problems.append(
            "HERALD_API_KEY_CACHE_SECONDS must be between 0 and "
            f"{MAX_API_KEY_CACHE_SECONDS:g} (revocation must take effect within 5 s)"
        )
    bad_keys = [index for index, key in enumerate(encryption_keys) if not is_fernet_key(key)]
    if bad_keys:
        problems.append(
            "HERALD_ENCRYPTION_KEYS entries at positions "
            f"{', '.join(map(str, bad_keys))} are not Fernet keys "
            "(32 url-safe base64-encoded bytes; make one with `python -c "
            "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
        )

    if herald_env == "production":
        if debug:
            problems.append("DEBUG is on; set DEBUG=false")
        if secret_key == DEV_SECRET_KEY:
            problems.append("SECRET_KEY is the development default; set a random one")
        elif len(secret_key) < MIN_SECRET_KEY_LENGTH or len(set(secret_key)) < 5:
            problems.append(
                f"SECRET_KEY is too short or too simple; use at least {MIN_SECRET_KEY_LENGTH} "
                "random characters"
            )
        if not allowed_hosts:
            problems.append("ALLOWED_HOSTS is empty; list the hostnames Herald serves")
        elif "*" in allowed_hosts:
            problems.append("ALLOWED_HOSTS contains '*'; list the hostnames Herald serves")
        if not encryption_keys:
            problems.append(
                "HERALD_ENCRYPTION_KEYS is missing; provider secrets can not be encrypted"
            )
        elif DEV_ENCRYPTION_KEY in encryption_keys:
            problems.append("HERALD_ENCRYPTION_KEYS contains the public development key")
        if allow_loopback_urls:
            problems.append(
                "HERALD_ALLOW_LOOPBACK_URLS is on; tenant-supplied URLs could reach this "
                "machine's own services (it is for local development sinks only)"
            )
        if metrics_token and len(metrics_token) < MIN_METRICS_TOKEN_LENGTH:
            problems.append(
                f"HERALD_METRICS_TOKEN is shorter than {MIN_METRICS_TOKEN_LENGTH} characters; "
                "use a random one (or leave it empty to turn /metrics off)"
            )

    if problems:
        raise UnsafeSettings(problems)
