"""Where each artefact lives in a workspace (default ``./workspace``).

::

    volumes/<name>.zarr      ingested image volume (OME-Zarr)
    labels/<name>.zarr       ingested label volume, same geometry
    datasets/<name>.zarr     augmented training set
    models/<run>/            checkpoint-last.pt, checkpoint-best.pt, metrics.jsonl, config.json
    predictions/<name>.zarr  membrane probabilities (OME-Zarr, uint8)
    segmentations/<name>.zarr cell labels (OME-Zarr image-label, uint32/uint64)
    reports/<run>/           metrics.json, preview PNGs

Paths are plain strings so they travel as Prefect task results and flow parameters.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str, what: str = "name") -> str:
    """Refuse names that would escape the workspace or be awkward on a file system."""
    if not _NAME.match(name) or name.endswith(".zarr"):
        raise ValueError(
            f"{what} must be letters, digits, '.', '_' or '-' (not starting with '.' or ending "
            f"in .zarr), got {name!r}"
        )
    return name


def is_path(value: str) -> bool:
    """Whether a stage argument is a path or URL (contains a separator or ends in .zarr) rather
    than a name in the workspace."""
    return value.rstrip("/").endswith(".zarr") or "/" in value or os.sep in value


def store_name(path: str) -> str:
    """The name of a store from its path or URL: ``.../volumes/em.zarr/`` -> ``em``."""
    return os.path.basename(path.rstrip("/")).removesuffix(".zarr")


def store_key(path: Any) -> Any:
    """A store path as compared between runs: local paths resolved (a relative workspace
    given from another folder is the same store), URLs as written; non-strings as given."""
    if not isinstance(path, str) or "://" in path.removeprefix("file://"):
        return path
    return os.path.realpath(path.removeprefix("file://"))


def same_store(a: Any, b: Any) -> bool:
    """Whether two paths or URLs name the same store (local paths resolved; not strings: False)."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    a, b = (p.removeprefix("file://").rstrip("/") for p in (a, b))
    if "://" in a or "://" in b:
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def same_local_path(a: str, b: str) -> bool:
    """Whether two paths are the same once made absolute (trailing slashes ignored)."""
    return os.path.abspath(a.rstrip("/")) == os.path.abspath(b.rstrip("/"))


@dataclass(frozen=True)
class Workspace:
    """A workspace root (local path or fsspec URL) and the paths of its artefacts."""

    root: str

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if "://" in self.root else os.path.join(
            self.root, *parts)

    def volume(self, name: str) -> str:
        return self._join("volumes", f"{check_name(name)}.zarr")

    def labels(self, name: str) -> str:
        return self._join("labels", f"{check_name(name)}.zarr")

    def dataset(self, name: str) -> str:
        return self._join("datasets", f"{check_name(name)}.zarr")

    def model_dir(self, run: str) -> str:
        return self._join("models", check_name(run, "run"))

    def prediction(self, name: str) -> str:
        return self._join("predictions", f"{check_name(name)}.zarr")

    def segmentation(self, name: str) -> str:
        return self._join("segmentations", f"{check_name(name)}.zarr")

    def report_dir(self, run: str) -> str:
        return self._join("reports", check_name(run, "run"))

    def report_file(self, run: str, filename: str) -> str:
        """A file in ``reports/<run>/`` (metrics.json, preview PNGs)."""
        return self._join("reports", check_name(run, "run"), check_name(filename, "file name"))
