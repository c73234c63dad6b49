"""Options several ``emseg`` commands share, and the parsing of their values.

Every command names the workspace root ``--workspace``; ``emseg ingest`` and ``emseg infer``
used to call it ``--out``, which still works (hidden from ``--help``, with a warning) so old
scripts keep running. Imports neither Prefect nor torch: the CLI uses it before validating.
"""

from __future__ import annotations

from typing import Any

import typer

POLARITIES = ("zero_is_membrane", "nonzero_is_membrane")


def out_alias() -> Any:
    """The deprecated ``--out`` spelling of ``--workspace`` (hidden from ``--help``)."""
    return typer.Option(None, "--out", hidden=True, help="Deprecated spelling of --workspace.")


def workspace_root(workspace: str, out: str | None, default: str) -> str:
    """The workspace root from ``--workspace``, or from the deprecated ``--out`` (which says so on
    stderr); both given with different values is an error."""
    if out is None:
        return workspace
    if workspace != default and workspace != out:
        raise ValueError(f"--out {out!r} and --workspace {workspace!r} disagree; give only --workspace "
                         "(--out is its deprecated spelling)")
    typer.secho("emseg: warning: --out is deprecated; use --workspace", err=True, fg=typer.colors.YELLOW)
    return out


def check_polarity(value: str, flag: str = "--label-polarity") -> str:
    """``value`` if it names a label polarity, else a one-line ValueError naming ``flag``."""
    if value not in POLARITIES:
        raise ValueError(f"{flag} must be {' or '.join(POLARITIES)}, got {value!r}")
    return value


def parse_thresholds(text: str | None) -> tuple[float, ...] | None:
    """``--thresholds 0.1,0.2,...``: distinct numbers in [0, 1], comma-separated (None: not given)."""
    if text is None:
        return None
    usage = f"--thresholds takes distinct comma-separated numbers in [0, 1], e.g. 0.1,0.3,0.5; got {text!r}"
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(usage) from None
    if not values or any(not 0 <= v <= 1 for v in values) or len(set(values)) != len(values):
        raise ValueError(usage)
    return values
