"""The layers of design.md, enforced: import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "models", "streams", "funnel", "agents", "monitoring", "replay", "bench", "prerank")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # A fresh interpreter with ``root`` first on the path, so the copy below is what is analysed.
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_every_contract_is_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_a_contract(tmp_path):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    labels = tmp_path / "funnel" / "labels.py"
    labels.write_text(labels.read_text() + "\nfrom agents.app import Runtime  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "funnel.labels -> agents.app" in result.stdout
