"""Checks of the production container files under docker/.

These need neither a database nor a Docker engine: `docker compose config`
only parses and interpolates the compose file. When the docker CLI or its
compose plugin is missing, the compose tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"

# Variables guarded with `${VAR:?message}` in docker/compose.yaml.
REQUIRED_VARS: dict[str, str] = {
    "SECRET_KEY": "dummy-secret-key-for-compose-config-test",
    # A syntactically valid Fernet key (32 zero bytes, urlsafe base64).
    "HERALD_ENCRYPTION_KEYS": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "ALLOWED_HOSTS": "localhost,.herald.test",
}

COMPOSE_TIMEOUT_S = 60


def _docker_compose_or_skip() -> str:
    """Return the docker executable if `docker compose` works, else skip."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not found on PATH; cannot run `docker compose config`")
    try:
        probe = subprocess.run(
            [docker, "compose", "version"],
            capture_output=True,
            text=True,
            timeout=COMPOSE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"`docker compose version` could not run: {exc}")
    if probe.returncode != 0:
        detail = (probe.stderr or probe.stdout).strip().splitlines()
        pytest.skip(
            "docker compose plugin (Compose v2) is not available: "
            + (detail[0] if detail else f"exit code {probe.returncode}")
        )
    return docker


def _compose_env(**overrides: str) -> dict[str, str]:
    """The caller's environment without anything that could leak into the
    compose file's interpolation, plus the required dummy values."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in REQUIRED_VARS and not key.startswith("COMPOSE_")
    }
    env.update(REQUIRED_VARS)
    env.update(overrides)
    return env


def _compose_config(
    docker: str, env: dict[str, str], env_file: Path
) -> subprocess.CompletedProcess[str]:
    # An explicit empty --env-file keeps a developer's local .env out of it.
    return subprocess.run(
        [
            docker,
            "compose",
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
            "--quiet",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMPOSE_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def empty_env_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


def test_compose_config_is_valid(empty_env_file: Path) -> None:
    docker = _docker_compose_or_skip()
    result = _compose_config(docker, _compose_env(), empty_env_file)
    assert result.returncode == 0, (
        f"`docker compose config` failed:\n{result.stdout}\n{result.stderr}"
    )


def test_compose_config_requires_secret_key(empty_env_file: Path) -> None:
    docker = _docker_compose_or_skip()
    env = _compose_env()
    del env["SECRET_KEY"]
    result = _compose_config(docker, env, empty_env_file)
    assert result.returncode != 0, "compose config must refuse to run without SECRET_KEY"
    assert "SECRET_KEY" in result.stdout + result.stderr


def test_container_files_exist_and_keep_their_contracts() -> None:
    """Cheap static checks that run even without the docker CLI."""
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    caddyfile = (DOCKER_DIR / "Caddyfile").read_text()
    compose = COMPOSE_FILE.read_text()

    assert "python:3.12-slim" in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert "curl" not in dockerfile
    assert "EXPOSE 8000 8001" in dockerfile
    assert "USER 10001" in dockerfile

    assert "reverse_proxy ws:8001" in caddyfile
    assert "reverse_proxy web:8000" in caddyfile
    assert "/ws/*" in caddyfile

    assert not any(line.startswith("version:") for line in compose.splitlines())
    for var in REQUIRED_VARS:
        assert f"${{{var}:?" in compose, f"{var} must be guarded with ${{{var}:?...}}"

    assert (REPO_ROOT / ".dockerignore").is_file()
