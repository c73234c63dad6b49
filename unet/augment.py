"""The random augmentation policy: MLS warp + flips / 90° rotations + gamma, contrast, noise.

One sample is drawn from a ``numpy.random.Generator``; the draws happen in a fixed order
(handle displacements, rotation, flip, gamma, contrast, noise level, noise field), so a
sample depends only on the generator's seed and the config: not on the machine or the
thread counts (no BLAS, no CPU-dependent ``np.exp``; see :mod:`unet.mls`, :mod:`unet.exactmath`).

Arrays are (H, W): image uint8, label uint8 (values kept exactly), weight float32.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from unet import exactmath
from unet.mls import Mode, handle_grid, warp

# Handles moving by at most a quarter of their spacing never folded the map: over 40 random
# draws per mode and k = 3, 4, 5, 8 the smallest Jacobian determinant stayed >= 0.05 at 0.25,
# while 0.3 already folded (k >= 5) and 0.5 always did (see tests/unet/test_augment.py).
MAX_DISPLACEMENT_FRACTION = 0.25


class AugmentConfig(BaseModel):
    """Augmentation of one training sample. Defaults suit ISBI 2012 (512² slices, ~5 px membranes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Field("rigid", description="MLS deformation: affine, similarity or rigid (the "
                       "least distorting; affine shears and folds first).")
    grid_size: int = Field(5, ge=3, le=16, description="Handles per side: a k×k grid spanning the "
                           "image; the border handles stay pinned, interior ones move.")
    max_displacement_px: float = Field(15.0, ge=0.0, description="Interior handles move by "
                                       "U(-d, d) px along y and x. Must stay <= 1/4 of the handle "
                                       "spacing, (size - 1) / (grid_size - 1), or the image folds.")
    grid_step: int = Field(8, ge=1, le=32, description="The MLS map is evaluated every grid_step "
                           "px and upsampled bilinearly (8 px: < 0.5 px error); 1 = every pixel.")
    alpha: float = Field(1.0, gt=0.0, description="MLS weight exponent: w = 1/|p - v|^(2 alpha).")
    flip: bool = Field(True, description="Random left-right flip (p = 0.5).")
    rotate90: bool = Field(True, description="Random rotation by a multiple of 90° (only 0/180° "
                           "for non-square images).")
    gamma_max: float = Field(1.25, ge=1.0, description="Gamma drawn log-uniformly in "
                             "[1/gamma_max, gamma_max]; 1 = off.")
    contrast_max_change: float = Field(0.15, ge=0.0, lt=1.0, description="Contrast scaled about "
                                       "mid-grey by U(1 - c, 1 + c); 0 = off.")
    noise_std_max: float = Field(4.0, ge=0.0, description="Gaussian noise with std U(0, max) grey "
                                 "levels added to the image; 0 = off.")
    interior_value: int = Field(255, ge=0, le=255, description="Label value of cell interiors "
                                "(ISBI: 255 interior, 0 membrane); any other value is membrane.")
    border_w0: float = Field(10.0, ge=0.0, description="Border weight w0 of the U-Net weight map.")
    border_sigma_px: float = Field(5.0, gt=0.0, description="Border weight sigma in px.")
    class_balance: bool = Field(True, description="Add class-balancing weights w_c to the weight map.")

    def handle_spacing(self, shape: tuple[int, int]) -> float:
        """Smallest distance (px) between neighbouring handles on an image of ``shape`` (H, W)."""
        return (min(shape) - 1) / (self.grid_size - 1)

    def check_shape(self, shape: tuple[int, int]) -> None:
        """Refuse a config that would fold an image of ``shape`` (H, W) (call before any work)."""
        limit = MAX_DISPLACEMENT_FRACTION * self.handle_spacing(shape)
        if self.max_displacement_px > limit:
            raise ValueError(
                f"max_displacement_px={self.max_displacement_px} would fold {shape[0]}x{shape[1]} "
                f"images: with grid_size={self.grid_size} the handles are "
                f"{self.handle_spacing(shape):.1f} px apart, so the displacement must be <= "
                f"{limit:.1f} px (1/4 of the spacing); lower it or use fewer handles")


def random_handles(shape: tuple[int, int], rng: np.random.Generator,
                   config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Handles p (k², 2) on the k×k grid and their random targets q; border handles pinned."""
    p, border = handle_grid(shape, config.grid_size)
    d = config.max_displacement_px
    q = p.copy()
    q[~border] += rng.uniform(-d, d, size=(int((~border).sum()), 2))
    return p, q


def _intensity_lut(gamma: float, contrast: float) -> np.ndarray:
    """256-entry float32 table: gamma, then contrast about mid-grey, in grey levels.

    Powers through :mod:`unet.exactmath` (numpy's ``power`` differs between CPUs in the last bits)."""
    x = np.arange(256, dtype=np.float64) / 255.0
    y = (exactmath.power(x, gamma) - 0.5) * contrast + 0.5
    return (255.0 * y).astype(np.float32)


def augment_sample(image: np.ndarray, label: np.ndarray, weight: np.ndarray,
                   rng: np.random.Generator, config: AugmentConfig,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random augmentation of (image, label, weight), each (H, W); returns new arrays.

    Inputs are not modified. The geometric part is applied identically to all three; the
    intensity part only to the image.
    """
    if image.ndim != 2 or label.shape != image.shape or weight.shape != image.shape:
        raise ValueError(f"image, label and weight must be (H, W) of one shape, got {image.shape}, "
                         f"{label.shape}, {weight.shape}")
    shape = (int(image.shape[0]), int(image.shape[1]))
    config.check_shape(shape)
    p, q = random_handles(shape, rng, config)
    img, lab, wgt = warp(image, label, weight, p, q, config.mode, grid_step=config.grid_step,
                         alpha=config.alpha)
    assert wgt is not None

    square = shape[0] == shape[1]
    turns = int(rng.integers(4)) if config.rotate90 else 0
    if not square:
        turns = 2 * (turns // 2)  # 0 or 180°: keep the sample's shape
    flip = bool(rng.integers(2)) if config.flip else False
    if turns or flip:
        views = [np.rot90(a, turns) for a in (img, lab, wgt)]
        if flip:
            views = [a[:, ::-1] for a in views]
        img, lab, wgt = (np.ascontiguousarray(a) for a in views)

    gamma = float(exactmath.exp(rng.uniform(-1.0, 1.0) * exactmath.log(config.gamma_max)))
    contrast = float(rng.uniform(1.0 - config.contrast_max_change, 1.0 + config.contrast_max_change))
    noise_std = float(rng.uniform(0.0, config.noise_std_max))
    if gamma != 1.0 or contrast != 1.0 or noise_std > 0.0:
        grey = _intensity_lut(gamma, contrast)[img]
        if noise_std > 0.0:
            grey += rng.standard_normal(grey.shape, dtype=np.float32) * np.float32(noise_std)
        img = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return img, lab, wgt
