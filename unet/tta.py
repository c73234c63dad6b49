"""Test-time augmentation: the views of the dihedral group D4 and the average over them.

One implementation for blockwise inference (:class:`unet.predictor.ModelPredictor`) and
training's validation (:func:`unet.slice_prediction.predict_slices`). Tensors are (B, C, H, W); a view
acts on the last two axes. D4 has 8 elements: the 4 rotations by k * 90°, each with or
without a flip of x::

    k = 0        k = 1         k = 2          k = 3
    identity     rot90         rot180         rot270
    flip x       transpose*    flip y         anti-transpose*

    (* up to the direction convention: rot90 then flip is a reflection about a diagonal)

``flips`` uses the 4 elements that are flips (identity, flip x, flip y, both = rot180), which
need no square tiles. Each view is undone on the prediction before averaging, so for a model
equivariant to the group the average equals the plain prediction, and for any model the
average is invariant under the group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

TTAMode = Literal["none", "flips", "d4"]
TensorFn = Callable[[torch.Tensor], torch.Tensor]

# (rotation quarter turns k, flip x) per view; applied as rot90(k) then flip, undone in reverse.
_VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),  # id, flip x, flip y, flip both
    "d4": tuple((k, f) for k in range(4) for f in (False, True)),
}


def views(mode: TTAMode) -> tuple[tuple[int, bool], ...]:
    """The (quarter turns, flip x) pairs of ``mode``; ValueError for an unknown mode."""
    if mode not in _VIEWS:
        raise ValueError(f"tta must be one of {sorted(_VIEWS)}, got {mode!r}")
    return _VIEWS[mode]


def apply_view(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate the last two axes by k quarter turns, then flip x if asked."""
    x = torch.rot90(x, k, (-2, -1)) if k % 4 else x
    return x.flip(-1) if flip else x


def undo_view(y: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Inverse of :func:`apply_view`."""
    y = y.flip(-1) if flip else y
    return torch.rot90(y, -k, (-2, -1)) if k % 4 else y


def tta_average(fn: TensorFn, x: torch.Tensor, mode: TTAMode) -> torch.Tensor:
    """Mean over the views of ``mode`` of ``undo(fn(apply(x)))``; ``fn`` maps (B, C, H, W) to
    (B, C', H, W) with the same spatial size, whatever its aspect (rotated views of a non-square input
    are non-square; a fully convolutional model handles them)."""
    vs = views(mode)
    total: torch.Tensor | None = None
    for k, flip in vs:
        y = undo_view(fn(apply_view(x, k, flip)), k, flip)
        total = y if total is None else total + y
    assert total is not None
    return total / len(vs) if len(vs) > 1 else total
