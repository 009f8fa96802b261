"""platform/ is imported as `herald` and never shadows the standard library."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_platform_folder_is_not_a_package() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_stdlib_platform_works_inside_the_project() -> None:
    script = (
        "import platform, uuid, django\n"
        "assert platform.system(), 'platform.system() returned nothing'\n"
        "assert platform.__file__.startswith(__import__('sysconfig').get_paths()['stdlib'])\n"
        "django.setup()\n"
        "import herald.settings, herald.celery, herald.asgi, herald.wsgi\n"
        "print(platform.system(), uuid.uuid4().version)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "herald.settings"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [__import__("platform").system(), "4"]


def test_pyproject_maps_herald_onto_platform() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = config["tool"]["setuptools"]
    assert setuptools["package-dir"]["herald"] == "platform"
    listed = set(setuptools["packages"])
    # Every Python package in the apps is shipped by `pip install .`.
    for app in ("tenants", "rules_engine", "channels_delivery", "dashboard"):
        for init in (ROOT / app).rglob("__init__.py"):
            package = ".".join(init.parent.relative_to(ROOT).parts)
            assert package in listed, f"{package} is missing from [tool.setuptools] packages"


def test_apps_have_app_configs() -> None:
    from django.apps import apps

    for label in ("tenants", "rules_engine", "channels_delivery", "dashboard"):
        assert apps.get_app_config(label).name == label
