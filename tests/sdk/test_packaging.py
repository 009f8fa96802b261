"""`pip install ./clients/python` installs the whole SDK: the wheel pip builds
from the checkout holds every module, the Django bridge's migration and
management command, and the py.typed marker."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.workers import ROOT

SDK = ROOT / "clients" / "python"


@pytest.mark.timeout(180)
def test_the_wheel_pip_builds_holds_the_whole_package(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(tmp_path), str(SDK)],
        capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("herald_client-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        path.relative_to(SDK / "src").as_posix()
        for path in (SDK / "src" / "herald_client").rglob("*.py")
    }
    assert sources <= names, sorted(sources - names)
    assert "herald_client/py.typed" in names
    assert "herald_client/django/migrations/0001_initial.py" in names
    assert "herald_client/django/management/commands/herald_outbox.py" in names
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: httpx" in text
    assert 'Requires-Dist: Django<6,>=4.2; extra == "django"' in text
