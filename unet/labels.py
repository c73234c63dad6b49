"""Label polarity: which label value means membrane.

Label volumes keep the values they were given (DESIGN.md); the polarity says how to read
them. ISBI 2012 labels are ``zero_is_membrane``: 0 = membrane, 255 = cell interior.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Polarity = Literal["zero_is_membrane", "nonzero_is_membrane"]
POLARITIES: tuple[Polarity, ...] = ("zero_is_membrane", "nonzero_is_membrane")
# Membranes are thin: about 22 % of ISBI pixels. A label set that is mostly "membrane"
# under the declared polarity is almost surely read the wrong way round.
MAX_MEMBRANE_FRACTION = 0.5


def membrane_mask(labels: np.ndarray, polarity: Polarity) -> np.ndarray:
    """Boolean membrane mask (same shape as ``labels``, any axis order)."""
    if polarity == "zero_is_membrane":
        return labels == 0
    if polarity == "nonzero_is_membrane":
        return labels != 0
    raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")


def check_labels(labels: np.ndarray, polarity: Polarity, what: str = "labels") -> None:
    """ValueError naming ``what`` when ``labels`` are not binary or look inverted for ``polarity``.

    Binary means at most two values, one of them 0 (ISBI: {0, 255}; {0, 1} is fine too).
    """
    values = np.unique(labels)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = values[:8].tolist()
        raise ValueError(f"{what} must be binary membrane labels (0 and one other value), "
                         f"got values {shown}{' ...' if len(values) > 8 else ''}")
    fraction = float(membrane_mask(labels, polarity).mean())
    if fraction > MAX_MEMBRANE_FRACTION:
        raise ValueError(f"{what} do not match polarity {polarity!r}: {fraction:.0%} of pixels would be "
                         "membrane (membranes are a minority); is the polarity inverted?")


def polarity_of_dataset(attrs: dict[str, Any], default: Polarity = "zero_is_membrane") -> Polarity:
    """The polarity a training set records: ``label_polarity``, or the augment stage's
    ``params.augment.interior_value`` (interior 0 means membranes are the non-zero values)."""
    if attrs.get("label_polarity") in POLARITIES:
        return attrs["label_polarity"]  # type: ignore[no-any-return]
    interior = attrs.get("params", {}).get("augment", {}).get("interior_value")
    if interior is None:
        return default
    return "nonzero_is_membrane" if int(interior) == 0 else "zero_is_membrane"


def value_counts(labels: np.ndarray) -> dict[int, int]:
    """{label value: voxel count} of ``labels``."""
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def check_interior_value(counts: dict[int, int], interior_value: int, what: str = "labels",
                         polarity: str | None = None) -> None:
    """ValueError naming ``what`` unless labels with these value ``counts`` suit a training set
    whose cell interior is ``interior_value`` (augment's border weights and targets).

    Refused: instance (cell ID) labels, an ``interior_value`` the labels do not hold ({0, 1}
    labels with the default 255 would make every pixel membrane and the weight map flat),
    one that contradicts the ``polarity`` recorded at ingest, and inverted labels (membrane
    the majority).
    """
    values = sorted(counts)
    shown = values[:8] + (["..."] if len(values) > 8 else [])  # type: ignore[list-item]
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        raise ValueError(f"{what} must be binary membrane labels (0 and one other value), got {len(values)} "
                         f"values {shown}: instance (cell ID) labels are not membrane labels")
    if interior_value not in counts:
        other = [v for v in values if v != 0]
        hint = (f"pass interior_value={other[0]} (0 = membrane, as ISBI 2012) or 0 (0 = interior)"
                if other else "the labels hold no cell interior")
        raise ValueError(f"{what} hold values {shown} but interior_value is {interior_value}, which they do "
                         f"not hold (every pixel would count as membrane); {hint}")
    if polarity in POLARITIES and len(values) == 2:
        expected = values[1] if polarity == "zero_is_membrane" else 0
        if interior_value != expected:
            raise ValueError(f"{what} were ingested as {polarity} (cell interior = {expected}) but "
                             f"interior_value is {interior_value}; pass interior_value={expected}")
    total = sum(counts.values())
    membrane = total - counts[interior_value]
    if total and membrane / total > MAX_MEMBRANE_FRACTION:
        raise ValueError(f"{what} look inverted for interior_value {interior_value}: "
                         f"{membrane / total:.0%} of pixels would be membrane (membranes are a minority); "
                         "pass the other value as interior_value")
