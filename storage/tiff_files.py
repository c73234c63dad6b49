"""Which files a TIFF source names: one stack file, or single-slice files in z order."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Literal

import tifffile

from storage.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
PathLike = str | os.PathLike[str]


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _tiffs_in(folder: str) -> list[str]:
    names = [n for n in os.listdir(folder)
             if n.lower().endswith(TIFF_SUFFIXES) and not n.startswith(".")]
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def resolve_files(sources: PathLike | Sequence[PathLike]) -> tuple[Literal["stack", "slices"], list[str]]:
    """Expand a source description into ("stack", [file]) or ("slices", [files in z order]).

    One existing file is a stack. A folder (its *.tif / *.tiff, not recursive), a glob
    pattern, or several paths are single-slice files in natural sort order; several
    paths are sorted too, because a shell expands ``slices/*.tif`` in plain lexical order.
    """
    items = [os.fspath(sources)] if isinstance(sources, str | os.PathLike) else [
        os.fspath(s) for s in sources]
    if not items:
        raise InputError("no input given: pass a TIFF file, a folder, a glob pattern or a list of files")
    files: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = _tiffs_in(item)
            if not found:
                raise InputError(f"{item}: folder contains no .tif/.tiff files")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        elif _is_glob(item):
            found = [f for f in glob.glob(item) if os.path.isfile(f)]
            if not found:
                raise InputError(f"{item}: glob pattern matches no files")
            files.extend(found)
        else:
            raise InputError(f"{item}: no such file or folder")
    if len(items) == 1 and os.path.isfile(items[0]):
        return "stack", [os.path.abspath(items[0])]
    ordered = tifffile.natural_sorted([os.path.abspath(f) for f in files])
    duplicates = {f for f in ordered if ordered.count(f) > 1} if len(set(ordered)) != len(ordered) else set()
    if duplicates:
        raise InputError(f"the same file is given twice: {sorted(duplicates)[0]}")
    return "slices", ordered
