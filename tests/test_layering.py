"""storage/ and unet/ never import Prefect; storage/ never imports torch (DESIGN.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    return sorted(f"{package}.{p.stem}" for p in (ROOT / package).glob("*.py") if p.stem != "__init__")


def _imported_after(modules: list[str]) -> set[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_storage_imports_neither_prefect_nor_torch() -> None:
    modules = _modules("storage")
    assert "storage.ingest" in modules and "storage.tiff" in modules
    loaded = _imported_after(modules)
    assert "storage" in loaded
    assert "prefect" not in loaded and "torch" not in loaded


@pytest.mark.slow
def test_unet_imports_no_prefect() -> None:
    loaded = _imported_after(_modules("unet"))
    assert "prefect" not in loaded
