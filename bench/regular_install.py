"""orch installed as users get it, from a wheel, not editable: the benchmarks measure that."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def regular_venv(name: str, *extra: str) -> Path:
    """``.cache/NAME`` with this checkout of orch (reinstalled each time) and ``extra``
    requirements; returns its ``bin`` folder."""
    venv = ROOT / ".cache" / name
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--force-reinstall", "--no-deps", str(ROOT)], check=True)
    subprocess.run([*pip, str(ROOT), *extra], check=True)
    return venv / "bin"


def revision_venv(rev: str) -> Path:
    """``.cache/rev-COMMIT``: orch as it was at git revision ``rev``, installed the same way
    (built once, kept); returns its ``bin`` folder. For measuring a change side by side."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    venv = ROOT / ".cache" / f"rev-{commit}"
    python = venv / "bin" / "python"
    if not python.exists():
        with tempfile.TemporaryDirectory() as tree:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                                     capture_output=True, check=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", tree], check=True)
    return venv / "bin"
