"""orch installed as users get it, from a wheel, not editable: the benchmarks measure that."""

from __future__ import annotations

import subprocess
import sys
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
