"""Membrane labels checked where they enter: binary, and membrane a minority under the polarity."""

from __future__ import annotations

from typing import Any

from storage.errors import InputError


class LabelsRefusedError(InputError):
    """Label values that are not binary membrane labels, or that look inverted."""


class LabelCheck:
    """Membrane labels are validated where they enter: binary (0 and one other value), and
    membrane a minority under the declared polarity. Instance (cell ID) labels and inverted
    labels are refused before they reach augment, training or evaluation.

    (The same rules as :func:`unet.labels.check_labels`; storage may not import unet.)
    """

    MAX_MEMBRANE_FRACTION = 0.5

    def __init__(self, path: str, source: str, polarity: str) -> None:
        self.path, self.source, self.polarity = path, source, polarity

    def _refuse_values(self, values: list[int], where: str) -> None:
        shown = ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")
        if len(values) > 2:
            raise LabelsRefusedError(
                f"{self.source}: labels{where} hold {len(values)} distinct values ({shown}): instance "
                "(cell ID) labels are not membrane labels; give binary labels (0 = membrane, 255 = "
                "cell interior, as ISBI 2012)")
        raise LabelsRefusedError(f"{self.source}: labels{where} hold values {shown}: binary membrane "
                                 "labels need 0 and one other value")

    def slab(self, data: Any, z0: int, z1: int) -> dict[int, int]:
        import numpy as np

        values, n = np.unique(data, return_counts=True)
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            self._refuse_values([int(v) for v in values], f" (slices {z0}..{z1})")
        return {int(v): int(c) for v, c in zip(values, n, strict=True)}

    def properties(self, values: list[int]) -> list[dict[str, Any]]:
        """The OME ``image-label`` properties of binary membrane labels: what each value means."""
        membrane = (lambda v: v == 0) if self.polarity == "zero_is_membrane" else (lambda v: v != 0)
        return [{"label-value": int(v), "class": "membrane" if membrane(v) else "cell interior"}
                for v in values]

    def finish(self, counts: dict[int, int]) -> list[int]:
        """Check the whole stack's value counts; returns its values (sorted)."""
        values = sorted(counts)
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            self._refuse_values(values, "")
        total = sum(counts.values())
        membrane = counts.get(0, 0) if self.polarity == "zero_is_membrane" else total - counts.get(0, 0)
        if total and membrane / total > self.MAX_MEMBRANE_FRACTION:
            raise LabelsRefusedError(
                f"{self.source}: labels do not match label_polarity {self.polarity!r}: "
                f"{membrane / total:.0%} of voxels would be membrane (membranes are a minority); are they "
                "inverted? Set label_polarity (--label-polarity) to the other value")
        return values
