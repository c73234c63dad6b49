"""Synthetic EM-like volumes with known membranes, deterministic by seed, any size.

Cells are the 3-D Voronoi cells of seeds on a jittered grid (spacing ``cell_yx`` pixels in
y, x and ``cell_z`` slices in z), so a cell's cross-section changes smoothly from slice to
slice. Voxels whose distances to the nearest and second-nearest seed differ by less than
``membrane_px`` are membrane. The image is a per-cell grey level with dark membranes,
blurred and with noise. Harder volumes (:meth:`SyntheticSpec.hard`, the demo's) add what makes
real EM hard: membranes whose darkness varies from one pair of cells to the next (some barely
darker than cytoplasm), organelles inside cells with dark rims that look like membranes but are
not, thin membranes between touching cells, more blur and noise.

Every voxel's value is a function of (seed, z, y, x) only: seed jitter and noise come
from a counter-based hash of integer coordinates instead of a sequential random stream,
and the blur is computed with a halo. So any block of any volume can be generated on its
own, and blocks tile into exactly the volume generated whole. That is what lets a
benchmark write a volume larger than memory block by block.

Axis order (z, y, x); sizes in voxels. Labels follow the ISBI 2012 polarity:
255 = cell interior, 0 = membrane.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

MEMBRANE = 0
INTERIOR = 255
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed uint64 hash of uint64 input (vectorised)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def _hash_uniform(seed: int, stream: int, *coords: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) that depend only on (seed, stream, coords)."""
    with np.errstate(over="ignore"):
        h = _splitmix(np.asarray(np.uint64(seed) * np.uint64(1_000_003) + np.uint64(stream)))
        for c in coords:
            h = _splitmix(h ^ np.asarray(c, dtype=np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic EM-like volume. shape is (z, y, x) in voxels."""

    shape: tuple[int, int, int] = (8, 256, 256)
    seed: int = 0
    cell_yx: float = 48.0
    cell_z: float = 6.0
    membrane_px: float = 2.0
    blur_sigma: float = 1.0
    noise_std: float = 12.0
    # Share of cells holding an organelle: a sphere of radius ~ 0.2 * cell_yx with a dark rim of
    # membrane-like darkness, labelled interior (the model must learn it is not a boundary).
    organelles: float = 0.0
    # 0: every membrane equally dark; 1: a pair of cells' membrane may be as faint as cytoplasm.
    membrane_contrast_spread: float = 0.0

    @classmethod
    def hard(cls, shape: tuple[int, int, int], seed: int = 0) -> SyntheticSpec:
        """A volume on which a small model scores clearly below perfect and improves with training."""
        return cls(shape=shape, seed=seed, cell_yx=40.0, cell_z=5.0, membrane_px=1.2, blur_sigma=1.4,
                   noise_std=22.0, organelles=0.7, membrane_contrast_spread=0.5)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be 3 positive sizes (z, y, x), got {self.shape}")
        if self.cell_yx < 4 or self.cell_z <= 0 or self.membrane_px <= 0:
            raise ValueError(
                "cell_yx must be >= 4 and cell_z, membrane_px > 0, got "
                f"{self.cell_yx}, {self.cell_z}, {self.membrane_px}"
            )
        if not (0 <= self.organelles <= 1 and 0 <= self.membrane_contrast_spread <= 1):
            raise ValueError("organelles and membrane_contrast_spread must be in [0, 1], got "
                             f"{self.organelles}, {self.membrane_contrast_spread}")


@dataclass(frozen=True)
class SyntheticBlock:
    """One generated block: image (uint8), labels (uint8, 0 membrane / 255 interior),
    cells (int64 cell id per voxel, the ground-truth segmentation). All (z, y, x)."""

    image: np.ndarray
    labels: np.ndarray
    cells: np.ndarray


def _seeds_near(spec: SyntheticSpec, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seeds (in scaled coordinates, z multiplied by cell_yx/cell_z) of all grid cells within
    two cells of the box [lo, hi) given in voxels, and their global ids."""
    spacing = np.array([spec.cell_z, spec.cell_yx, spec.cell_yx])
    g_lo = np.floor(lo / spacing).astype(np.int64) - 2
    g_hi = np.floor(hi / spacing).astype(np.int64) + 2
    gz, gy, gx = np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(g_lo, g_hi, strict=True)],
                             indexing="ij")
    gz, gy, gx = gz.ravel(), gy.ravel(), gx.ravel()
    jitter = np.stack([_hash_uniform(spec.seed, s, gz, gy, gx) for s in range(3)], axis=1)
    pos = (np.stack([gz, gy, gx], axis=1) + 0.1 + 0.8 * jitter) * spacing
    pos[:, 0] *= spec.cell_yx / spec.cell_z
    ids = (gz + 100_000) * 10**10 + (gy + 100_000) * 10**5 + (gx + 100_000)
    return pos, ids


def generate_block(spec: SyntheticSpec, z: slice, y: slice, x: slice) -> SyntheticBlock:
    """Generate the region [z, y, x] (slices with explicit start/stop) of the volume."""
    starts = np.array([s.start or 0 for s in (z, y, x)])
    stops = np.array([s.stop if s.stop is not None else n for s, n in zip((z, y, x), spec.shape,
                                                                           strict=True)])
    if np.any(starts < 0) or np.any(stops > np.array(spec.shape)) or np.any(stops <= starts):
        raise ValueError(f"region {(z, y, x)} is not inside a volume of shape {spec.shape}")
    halo = int(np.ceil(4 * spec.blur_sigma)) if spec.blur_sigma > 0 else 0
    # Compute with a halo in y, x so the blur near the block edge equals the whole-volume blur.
    lo = starts - np.array([0, halo, halo])
    hi = stops + np.array([0, halo, halo])
    pos, ids = _seeds_near(spec, lo.astype(float), hi.astype(float))
    tree = cKDTree(pos)
    zz, yy, xx = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    pts = np.stack([(zz + 0.5) * spec.cell_yx / spec.cell_z, yy + 0.5, xx + 0.5], axis=-1)
    dist, idx = tree.query(pts.reshape(-1, 3), k=2)
    membrane = (dist[:, 1] - dist[:, 0]) < spec.membrane_px
    cells = ids[idx[:, 0]].reshape(zz.shape)
    membrane = membrane.reshape(zz.shape)

    grey = 140.0 + 70.0 * _hash_uniform(spec.seed, 7, cells)
    texture = 10.0 * (_hash_uniform(spec.seed, 8, zz, yy // 3, xx // 3) - 0.5)
    dark = np.full(zz.shape, 45.0)
    if spec.membrane_contrast_spread > 0:  # per pair of cells, whichever side the voxel is on
        a, b = ids[idx[:, 0]], ids[idx[:, 1]]
        pair = _hash_uniform(spec.seed, 11, np.minimum(a, b), np.maximum(a, b)).reshape(zz.shape)
        dark = dark + spec.membrane_contrast_spread * pair * (grey - 15.0 - dark)
    image = np.where(membrane, dark, grey + texture)
    if spec.organelles > 0:
        image = np.where(_organelle_rims(spec, pos, ids, idx[:, 0], pts).reshape(zz.shape) & ~membrane,
                         55.0, image)
    if spec.blur_sigma > 0:
        image = ndimage.gaussian_filter(image, sigma=(0, spec.blur_sigma, spec.blur_sigma),
                                        mode="nearest")
    crop = (slice(None), slice(halo, image.shape[1] - halo), slice(halo, image.shape[2] - halo))
    image, membrane, cells = image[crop], membrane[crop], cells[crop]
    zc, yc, xc = zz[crop], yy[crop], xx[crop]
    # Box-Muller noise from two hashed uniforms per voxel.
    u1 = _hash_uniform(spec.seed, 9, zc, yc, xc)
    u2 = _hash_uniform(spec.seed, 10, zc, yc, xc)
    noise = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)
    image = np.clip(np.rint(image + spec.noise_std * noise), 0, 255).astype(np.uint8)
    labels = np.where(membrane, MEMBRANE, INTERIOR).astype(np.uint8)
    return SyntheticBlock(image=image, labels=labels, cells=cells)


def _organelle_rims(spec: SyntheticSpec, pos: np.ndarray, ids: np.ndarray, nearest: np.ndarray,
                    pts: np.ndarray) -> np.ndarray:
    """Boolean per point: on the dark rim of its cell's organelle (a sphere inside the cell, in the
    scaled coordinates where cells are round), for the cells that hold one."""
    has = _hash_uniform(spec.seed, 12, ids) < spec.organelles
    offset = (np.stack([_hash_uniform(spec.seed, 13 + s, ids) for s in range(3)], axis=1) - 0.5)
    centre = pos + 0.25 * spec.cell_yx * offset
    radius = spec.cell_yx * (0.12 + 0.1 * _hash_uniform(spec.seed, 16, ids))
    d = np.linalg.norm(pts.reshape(-1, 3) - centre[nearest], axis=1)
    return has[nearest] & (np.abs(d - radius[nearest]) < 1.0)


def generate_volume(spec: SyntheticSpec) -> SyntheticBlock:
    """The whole volume in memory (for small test and demo volumes)."""
    return generate_block(spec, *(slice(0, n) for n in spec.shape))


def iter_slabs(spec: SyntheticSpec, slab_z: int) -> Iterator[tuple[int, SyntheticBlock]]:
    """Yield (z0, block) for consecutive slabs of ``slab_z`` whole slices, for volumes
    larger than memory. Peak memory is one slab (times the generator's temporaries)."""
    if slab_z < 1:
        raise ValueError(f"slab_z must be >= 1, got {slab_z}")
    for z0 in range(0, spec.shape[0], slab_z):
        z1 = min(z0 + slab_z, spec.shape[0])
        yield z0, generate_block(spec, slice(z0, z1), slice(0, spec.shape[1]),
                                 slice(0, spec.shape[2]))
