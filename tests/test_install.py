"""Installing a real peer as a new user would: a wheel built from the repository holds every
module and both console scripts, and the peer runs from it (not from this checkout)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_whole_core_and_runs_from_where_it_is_installed(tmp_path: Path) -> None:
    # from a copy: an in-tree build leaves build/ behind, whose stale modules a later wheel would carry
    source = tmp_path / "source"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "runs", "*.egg-info", "__pycache__")
    )
    wheel_command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*wheel_command, "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("hivemind_sim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    sources = {
        str(path.relative_to(ROOT))
        for package in ("hivemind_core", "hivemind_sim")
        for path in (ROOT / package).rglob("*.py")
    }
    assert sources <= set(names), f"missing from the wheel: {sorted(sources - set(names))[:5]}"
    assert not [name for name in names if name.startswith("tests/")]
    (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "hivemind-core = hivemind_core.cli:main" in scripts
    assert "hivemind-sim = hivemind_sim.cli:main" in scripts

    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import hivemind_core.cli, hivemind_core.training; "
        "print(hivemind_core.training.__file__); hivemind_core.cli.main(['--version'])"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(str(target)), f"ran from {ran.stdout.splitlines()[0]}, not the wheel"
    assert "hivemind-core 0.1.0" in ran.stdout
