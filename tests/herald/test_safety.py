"""Production refuses to start on unsafe settings, naming every problem."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from herald.safety import (
    DEV_ENCRYPTION_KEY,
    DEV_SECRET_KEY,
    UnsafeSettings,
    refuse_bad_task_timing,
    refuse_bad_trusted_proxies,
    refuse_unsafe_settings,
)

ROOT = Path(__file__).resolve().parents[2]
GOOD_PRODUCTION = {
    "HERALD_ENV": "production",
    "DEBUG": "false",
    "SECRET_KEY": "k7#Qp2!vXz9@Lm4$Rt8^Wy1&Bn6*Hc3(Jd5)Fg0_Se-Ua+Ki=Ol{Pm}Nq[Ar]Bs",
    "ALLOWED_HOSTS": "herald.example.com,.herald.example.com",
    "HERALD_ENCRYPTION_KEYS": "Z1ZOVVI0S0N1UGhJMDRLbkRqb1pNWm5XUDNuZ0FPYUE=",
}


def start(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in GOOD_PRODUCTION}
    env.update(environment)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def test_safe_production_settings_start() -> None:
    result = start(GOOD_PRODUCTION)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"DEBUG": "true"}, "DEBUG is on"),
        ({"SECRET_KEY": None}, "SECRET_KEY is the development default"),
        ({"SECRET_KEY": DEV_SECRET_KEY}, "SECRET_KEY is the development default"),
        ({"SECRET_KEY": "short-secret"}, "SECRET_KEY is too short"),
        ({"SECRET_KEY": "a" * 60}, "SECRET_KEY is too short or too simple"),
        ({"ALLOWED_HOSTS": None}, "ALLOWED_HOSTS is empty"),
        ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS contains '*'"),
        ({"HERALD_ENCRYPTION_KEYS": None}, "HERALD_ENCRYPTION_KEYS is missing"),
        ({"HERALD_ENCRYPTION_KEYS": "not-a-key"}, "not Fernet keys"),
        ({"HERALD_ENCRYPTION_KEYS": DEV_ENCRYPTION_KEY}, "public development key"),
        ({"HERALD_API_KEY_CACHE_SECONDS": "30"}, "HERALD_API_KEY_CACHE_SECONDS"),
        ({"HERALD_ENV": "prod"}, "HERALD_ENV must be one of"),
        ({"HERALD_ALLOW_LOOPBACK_URLS": "true"}, "HERALD_ALLOW_LOOPBACK_URLS is on"),
    ],
)
def test_unsafe_production_settings_refuse_to_start(
    change: dict[str, str | None], problem: str
) -> None:
    environment = {**GOOD_PRODUCTION, **change}
    result = start({k: v for k, v in environment.items() if v is not None})
    assert result.returncode != 0
    assert "Herald refuses to start" in result.stderr or "HERALD_ENV" in result.stderr
    assert problem in result.stderr


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(UnsafeSettings) as refused:
        refuse_unsafe_settings(
            herald_env="production",
            debug=True,
            secret_key=DEV_SECRET_KEY,
            allowed_hosts=[],
            encryption_keys=[],
            api_key_cache_seconds=3,
        )
    assert len(refused.value.problems) == 4


def test_development_defaults_are_accepted() -> None:
    refuse_unsafe_settings(
        herald_env="development",
        debug=True,
        secret_key=DEV_SECRET_KEY,
        allowed_hosts=[],
        encryption_keys=[DEV_ENCRYPTION_KEY],
        api_key_cache_seconds=3,
    )


def test_loopback_urls_are_allowed_outside_production() -> None:
    for herald_env in ("development", "test"):
        refuse_unsafe_settings(
            herald_env=herald_env,
            debug=True,
            secret_key=DEV_SECRET_KEY,
            allowed_hosts=[],
            encryption_keys=[DEV_ENCRYPTION_KEY],
            api_key_cache_seconds=3,
            allow_loopback_urls=True,
        )


def test_trusted_proxies_must_be_addresses_or_ranges() -> None:
    refuse_bad_trusted_proxies(
        ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"], herald_env="production"
    )
    with pytest.raises(UnsafeSettings) as refused:
        refuse_bad_trusted_proxies(["10.0.0.0/8", "caddy", "10.0.0.0/33"], herald_env="test")
    assert [str(problem) for problem in refused.value.problems] == [
        "HERALD_TRUSTED_PROXIES entry 'caddy' is not an IP address or a CIDR range",
        "HERALD_TRUSTED_PROXIES entry '10.0.0.0/33' is not an IP address or a CIDR range",
    ]


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0"])
def test_production_does_not_trust_every_address_as_a_proxy(everyone: str) -> None:
    refuse_bad_trusted_proxies([everyone], herald_env="development")
    with pytest.raises(UnsafeSettings, match="every address"):
        refuse_bad_trusted_proxies([everyone], herald_env="production")


GOOD_TIMING = {
    "soft_time_limit": 120,
    "time_limit": 150,
    "sending_timeout": 600,
    "countdown_max": 60,
    "visibility_timeout": 3600,
}


def test_task_timings_that_would_send_twice_are_refused() -> None:
    refuse_bad_task_timing(**GOOD_TIMING)
    with pytest.raises(UnsafeSettings) as refused:
        refuse_bad_task_timing(
            **{**GOOD_TIMING, "soft_time_limit": 150, "sending_timeout": 150, "countdown_max": 3600}
        )
    assert [problem.split(" (")[0] for problem in refused.value.problems] == [
        "CELERY_TASK_SOFT_TIME_LIMIT",
        "HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS",
        "HERALD_DELIVERY_COUNTDOWN_MAX_SECONDS",
    ]
    assert "send a second time" in refused.value.problems[1]


def test_a_sending_timeout_within_the_task_time_limit_stops_any_environment() -> None:
    result = start(
        {
            "HERALD_ENV": "development",
            "CELERY_TASK_TIME_LIMIT": "300",
            "HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS": "240",
        }
    )
    assert result.returncode != 0
    assert (
        "HERALD_DELIVERY_SENDING_TIMEOUT_SECONDS (240) must be above CELERY_TASK_TIME_LIMIT (300)"
        in result.stderr
    )
