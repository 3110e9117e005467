"""Cross-package checks: the workspace installs, trainkit imports, every member's console script answers --help."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = [ROOT / "shared", *sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())]


def console_scripts():
    for member in MEMBERS:
        project = tomllib.loads((member / "pyproject.toml").read_text())["project"]
        for script in project.get("scripts", {}):
            yield member.name, script


def test_trainkit_imports():
    import trainkit

    assert hasattr(trainkit, "Tracker") and hasattr(trainkit, "CheckpointManager")


def test_every_member_is_installed():
    from importlib.metadata import distribution

    for member in MEMBERS:
        name = tomllib.loads((member / "pyproject.toml").read_text())["project"]["name"]
        assert distribution(name).version


def test_members_only_import_trainkit_from_the_workspace():
    packages = {p.name for p in (ROOT / "packages").iterdir() if p.is_dir()}
    for member in (ROOT / "packages").iterdir():
        for source in (member / "src").rglob("*.py") if (member / "src").exists() else []:
            text = source.read_text()
            for other in packages - {member.name}:
                assert f"import {other}" not in text and f"from {other}" not in text, f"{source} imports {other}"


@pytest.mark.parametrize("member,script", list(console_scripts()))
def test_console_script_answers_help(member, script):
    exe = shutil.which(script, path=str(Path(sys.executable).parent))
    assert exe, f"console script {script} of {member} is not installed"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "train" in proc.stdout


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "uv run pytest" in readme and "uv run pytest" in ci
