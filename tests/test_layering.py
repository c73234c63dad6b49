"""The rooms stay apart and small (DESIGN.md, issue 11): storage/ and unet/ never import
Prefect; storage/ never imports torch; only storage/ touches files (no ``os.path`` or
``open`` in unet/); no module of storage/, unet/, tasks/ or flows/ exceeds 300 lines; no
Prefect task body exceeds 15 lines (a task is a thin wrapper around one stage function)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "unet", "tasks", "flows")
MAX_MODULE_LINES = 300
MAX_TASK_BODY_LINES = 15


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


def _sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).glob("*.py"))


def test_no_module_exceeds_300_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _sources(*PACKAGES)}
    assert len(sizes) > 40
    too_long = {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {too_long}"


def _file_access(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every file-system access: os.path, pathlib, open()/fdopen()/x.open()."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "os":
            found.append((node.lineno, "os.path"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if a.name in ("os.path", "pathlib", "shutil", "tempfile")]
        elif isinstance(node, ast.ImportFrom) and (node.module in ("pathlib", "shutil", "tempfile") or (
                node.module == "os" and any(a.name == "path" for a in node.names))):
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "open" or isinstance(f, ast.Attribute) and f.attr in (
                    "open", "fdopen"):
                found.append((node.lineno, "open()"))
    return found


def test_unet_touches_no_files() -> None:
    """Only storage/ touches files: unet/ takes and returns arrays, tensors and storage handles."""
    offenders = {f"{p.relative_to(ROOT)}:{line}": what for p in _sources("unet")
                 for line, what in _file_access(ast.parse(p.read_text()))}
    assert not offenders, f"file access in unet/ (move it into a storage/ function): {offenders}"


def test_the_file_access_check_sees_each_form() -> None:
    code = ("import os\nimport pathlib\nfrom os import path\nos.path.join('a')\nopen('f')\n"
            "zarr.open('s')\nos.fdopen(3)\n")
    assert sorted(line for line, _ in _file_access(ast.parse(code))) == [2, 3, 4, 5, 6, 7]


def _is_task_decorator(node: ast.expr) -> bool:
    f = node.func if isinstance(node, ast.Call) else node
    return isinstance(f, ast.Name) and f.id == "task" or isinstance(f, ast.Attribute) and f.attr == "task"


def task_body_lengths(source: str) -> dict[str, int]:
    """Name -> lines of code (no docstring, blank or comment lines) of each @task function."""
    lines = source.splitlines()
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                _is_task_decorator(d) for d in node.decorator_list):
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str) and len(body) > 1:
                body = body[1:]
            code = lines[body[0].lineno - 1 : node.end_lineno]
            out[node.name] = sum(1 for line in code if line.strip() and not line.strip().startswith("#"))
    return out


def test_no_prefect_task_body_exceeds_15_lines() -> None:
    lengths = {f"{p.relative_to(ROOT)}:{name}": n for p in _sources(*PACKAGES)
               for name, n in task_body_lengths(p.read_text()).items()}
    assert len(lengths) >= 8  # the stage tasks are found
    too_long = {k: n for k, n in lengths.items() if n > MAX_TASK_BODY_LINES}
    assert not too_long, (f"Prefect task bodies over {MAX_TASK_BODY_LINES} lines (move the work into a "
                          f"stage function the task calls): {too_long}")


def test_task_body_length_counts_code_only() -> None:
    code = ('@task(name="t")\ndef t(x):\n    """Doc\n    string."""\n    # why\n    y = x + 1\n\n'
            '    return y\n\n\n@flow\ndef f():\n    return 1\n')
    assert task_body_lengths(code) == {"t": 2}
