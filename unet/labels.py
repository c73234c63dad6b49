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
