"""The layering contracts in pyproject.toml ([tool.importlinter]), checked by import-linter on the real tree and shown
to catch a violation planted in a copy of it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    return subprocess.run([str(LINT), "--config", "pyproject.toml", "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_code_keeps_its_layers():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") == 3


def test_a_planted_violation_breaks_the_contracts(tmp_path):
    """The machinery importing torch, and a target importing a pass, are each reported, naming the offending import."""
    tree = tmp_path / "tailorfit"
    for folder in ("pipeline", "passes", "targets"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tree / "pipeline" / "graph.py", "a") as f:
        f.write("\nimport torch  # planted\n")
    with open(tree / "targets" / "base.py", "a") as f:
        f.write("\nfrom tailorfit.passes import lower  # planted\n")
    result = _lint(tmp_path, pythonpath=tmp_path)
    assert result.returncode != 0
    assert "tailorfit.pipeline.graph is not allowed to import torch" in result.stdout
    assert "tailorfit.targets is not allowed to import tailorfit.passes" in result.stdout
    assert result.stdout.count("BROKEN") == 2
