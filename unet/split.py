"""Slice selections of a stack and its default train/validation split (pure: no files, no torch).

::

    z:  0 ──────────── n_train-1 │ n_train ──────── n-1
        train (augmented from)    │ validation (held out, one range)
        first ~2/3                │ last ~1/3, at least one slice

ISBI 2012's 30 slices give 0-19 / 20-29, the split its benchmark uses; a 16-slice stack
gives 0-10 / 11-15. Selections are inclusive, as users write them: "0-19", "0-9,15".
An empty selection means "the default split's part", decided once the stack's depth is known.
"""

from __future__ import annotations

from dataclasses import dataclass

VAL_FRACTION = 1 / 3
MIN_SLICES = 2  # one to train on, one to validate on


def parse_slices(selection: str, n_slices: int) -> list[int]:
    """Slice indices from "0-19" (inclusive), "3", or a comma list of both ("0-9,15,20-24").

    Refuses an empty selection, a malformed part, an index outside 0..n_slices-1 or a repeat.
    """
    out: list[int] = []
    for part in selection.replace(" ", "").split(","):
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            start, stop = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise ValueError(f"slice selection {selection!r}: cannot read {part!r} "
                             "(use e.g. '0-19' or '0-9,15')") from None
        if stop < start:
            raise ValueError(f"slice selection {selection!r}: range {part!r} runs backwards")
        if start < 0 or stop >= n_slices:
            raise ValueError(f"slice selection {selection!r} is out of range: the volume has "
                             f"{n_slices} slices (0..{n_slices - 1})")
        out.extend(range(start, stop + 1))
    if not out:
        raise ValueError(f"slice selection {selection!r} selects no slice")
    if len(set(out)) != len(out):
        raise ValueError(f"slice selection {selection!r} lists a slice twice")
    return out


def runs_of(indices: list[int], size: int) -> list[slice]:
    """Sorted slice ``indices`` cut into runs of consecutive slices, each at most ``size`` long:
    the reads that stream a selection ([0, 1, 2, 5] with size 2 -> 0:2, 2:3, 5:6)."""
    out: list[slice] = []
    for i in indices:
        if out and out[-1].stop == i and i - out[-1].start < size:
            out[-1] = slice(out[-1].start, i + 1)
        else:
            out.append(slice(i, i + 1))
    return out


def parse_slice_range(text: str, what: str = "validation slices") -> tuple[int, int]:
    """'20-29' (inclusive, as the augment flow writes ranges) → (20, 30), a half-open z range."""
    try:
        first, last = (int(v) for v in text.split("-"))
    except ValueError as e:
        raise ValueError(f"{what} must look like '20-29' (inclusive), got {text!r}") from e
    if not 0 <= first <= last:
        raise ValueError(f"{what} must satisfy 0 <= first <= last, got {text!r}")
    return first, last + 1


@dataclass(frozen=True)
class SliceSplit:
    """Training and validation slices, inclusive selections ('0-19', '20-29')."""

    train: str
    val: str


def default_split(n_slices: int) -> SliceSplit:
    """The first ~2/3 of the slices train, the last ~1/3 (at least one) validate."""
    if n_slices < MIN_SLICES:
        raise ValueError(f"the stack has {n_slices} slice(s): a train/validation split needs at least "
                         f"{MIN_SLICES} (one to train on, one to validate on)")
    n_val = max(1, round(n_slices * VAL_FRACTION))
    n_train = n_slices - n_val
    return SliceSplit(f"0-{n_train - 1}", f"{n_train}-{n_slices - 1}")


def resolve_split(n_slices: int, train: str = "", val: str = "") -> SliceSplit:
    """``train`` / ``val`` checked against a stack of ``n_slices``; an empty one takes its part of
    :func:`default_split`. Raises ValueError naming the bad selection (out of range, overlapping,
    a stack too small to split)."""
    if not train or not val:
        default = default_split(n_slices)
        train, val = train or default.train, val or default.val
    try:
        chosen = parse_slices(train, n_slices)
    except ValueError as e:
        raise ValueError(f"train_slices: {e}") from None
    first, stop = parse_slice_range(val, "val_slices")
    if stop > n_slices:
        raise ValueError(f"val_slices {val!r} is out of range: the volume has {n_slices} slices "
                         f"(0..{n_slices - 1})")
    if set(chosen) & set(range(first, stop)):
        raise ValueError(f"train_slices {train!r} overlap val_slices {val!r}: validation must be held out")
    return SliceSplit(train, val)
