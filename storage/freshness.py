"""Create, reuse, resume, replace or refuse: the one rule for what to do about an existing output.

Every stage output records what it was made from (see :mod:`storage.provenance`). Given
that record (None when there is no output), what the caller would make now (``expected``:
dotted record keys to values) and the caller's wishes, :func:`decide` says::

    no output ............................................ create
    overwrite asked ...................................... replace
    complete, same inputs, nothing upstream re-made ...... reuse
    complete, same inputs, but a step before it ran ...... replace
    unfinished, same inputs .............................. resume   (replace if not resumable)
    made from other inputs or parameters ................. refuse   (replace if on_stale="replace")

Pure: tested without files. Stages refuse (a user's output is never overwritten unless
asked); the pipeline and nightly flows own their outputs and replace stale ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from storage.errors import StoreExistsError
from storage.provenance import check_current

Action = Literal["create", "reuse", "resume", "replace", "refuse"]
OnStale = Literal["refuse", "replace"]


@dataclass(frozen=True)
class Decision:
    """What to do about an output, and why (for logs and error messages)."""

    action: Action
    reason: str

    @property
    def runs(self) -> bool:
        """Whether the stage has work to do (anything but reuse)."""
        return self.action != "reuse"

    def check(self, path: str) -> Decision:
        """Raise :class:`StoreExistsError` naming ``path`` and the flag that fixes it on refuse."""
        if self.action == "refuse":
            raise StoreExistsError(f"{path} exists and was made from other inputs or parameters "
                                   f"({self.reason}); pass "
                                   "--overwrite (overwrite=True from Python) to replace it")
        return self


def decide(record: Mapping[str, Any] | None, expected: Mapping[str, Any], *, overwrite: bool = False,
           upstream_ran: bool = False, resumable: bool = True, on_stale: OnStale = "refuse") -> Decision:
    """The rule of the module docstring. ``record`` must carry ``complete`` (see
    :func:`storage.provenance.read_record`); keys of ``expected`` may be dotted."""
    if record is None:
        return Decision("create", "no output yet")
    if overwrite:
        return Decision("replace", "overwrite asked")
    fresh = check_current(record, expected)
    if fresh.current:
        if upstream_ran:  # the inputs may hold new bytes under the same names
            return Decision("replace", "a step before it ran again")
        return Decision("reuse", fresh.reason)
    same = check_current({**record, "complete": True}, expected)
    if same.current:
        if resumable:
            return Decision("resume", fresh.reason)
        return Decision("replace", "an earlier attempt with the same inputs stopped midway")
    return Decision("replace" if on_stale == "replace" else "refuse", same.reason)
