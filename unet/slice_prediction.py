"""Whole slices through a model at once: validation and previews (volumes go blockwise)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from unet.membrane import membrane_probability
from unet.model import UNet, UNetConfig
from unet.tta import TTAMode, tta_average


@torch.no_grad()
def predict_slices(model: UNet, images: np.ndarray, *, batch_size: int = 4, tta: bool = False,
                   amp: bool = True, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   memory_format: torch.memory_format = torch.contiguous_format) -> np.ndarray:
    """Membrane probabilities (Z, H, W) float32 in [0, 1] of uint8 slices (Z, H, W), whole slices
    at once (mirror-padded to a size the model accepts), on the model's device; ``tta`` averages
    the 8 flips/rotations. For validation-sized inputs; large volumes go through blockwise inference."""
    model.eval()
    device = next(model.parameters()).device
    forward = forward or model
    cast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and amp
            else contextlib.nullcontext())
    pads = [fit_padding(n, model.config) for n in images.shape[1:]]
    out = np.empty(images.shape, np.float32)

    def membrane(xt: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) probability; class 1 of N > 1
        with cast:
            logits = forward(xt.contiguous(memory_format=memory_format)).float()
        return membrane_probability(logits)

    for z0 in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(images[z0 : z0 + batch_size, None].astype(np.float32) / 255.0)
        x = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]), mode="reflect")
        # The same D4 views as blockwise inference (unet.tta).
        views: TTAMode = "d4" if tta else "none"
        prob = tta_average(membrane, x.to(device, non_blocking=True), views)[:, 0].cpu().numpy()
        oy, ox = pads[0][2], pads[1][2]
        out[z0 : z0 + batch_size] = prob[:, oy : oy + images.shape[1], ox : ox + images.shape[2]]
    return out


@functools.cache  # pure, and asked again for every training step and every tile batch
def fit_padding(n: int, cfg: UNetConfig) -> tuple[int, int, int]:
    """(pad before, pad after, output offset) making a slice (or tile) of size ``n`` fit the model;
    the model's output from index offset on is the prediction of the ``n`` input pixels.

    Same padding: pad the end up to a multiple of the divisor. Valid padding: pad both sides
    by the network's margin, then the end up to the next size the network accepts.
    """
    if cfg.padding == "same":
        return 0, -n % cfg.divisor, 0
    probe = next(s for s in range(n, n + 4 * cfg.divisor + 200) if _valid_ok(s, cfg))
    margin = (probe - cfg.valid_output_size(probe)) // 2
    size = next(s for s in range(n + 2 * margin, n + 2 * margin + 4 * cfg.divisor) if _valid_ok(s, cfg))
    return margin, size - n - margin, 0


def _valid_ok(size: int, cfg: UNetConfig) -> bool:
    try:
        cfg.valid_output_size(size)
        return True
    except ValueError:
        return False
