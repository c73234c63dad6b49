"""Segment stage: seeds, watershed, block geometry, the global merge, blockwise = whole volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import adapted_rand_error

from storage.errors import InputError, StoreExistsError
from storage.segmentation import SegmentationMismatchError, open_segmentation
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume, open_volume
from unet.segment import grow, label_seeds, seed_mask, segment_array
from unet.segment_blocks import CAP, face_pairs, merge_seeds, plan_segment_blocks
from unet.segment_config import SegmentConfig
from unet.segment_run import segment_blockwise


def synthetic_probability(shape: tuple[int, int, int] = (4, 160, 176), seed: int = 1) -> np.ndarray:
    """uint8 membrane probability: the true membranes of a synthetic volume, blurred, with noise."""
    vol = generate_volume(SyntheticSpec(shape=shape, seed=seed, cell_yx=40.0))
    prob = ndimage.gaussian_filter((vol.labels == 0).astype(np.float32), (0, 1.5, 1.5))
    prob += np.random.default_rng(seed).normal(0.0, 0.05, prob.shape).astype(np.float32)
    return np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8)


def write_probability(path: Path, prob: np.ndarray, kind: str = "prediction") -> str:
    w = create_volume(path, prob.shape, prob.dtype, (40.0, 4.0, 4.0), kind=kind)  # type: ignore[arg-type]
    w.write(0, prob)
    w.mark_complete()
    return str(path)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b are equal up to a one-to-one relabelling."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


# ----------------------------------------------------------------------------- arrays


def test_two_cells_split_by_a_membrane_cover_every_pixel() -> None:
    prob = np.zeros((1, 20, 30), np.uint8)
    prob[0, :, 14:16] = 255  # a vertical membrane
    cells = segment_array(prob, SegmentConfig())
    assert cells.dtype == np.uint32 and set(np.unique(cells)) == {1, 2}
    assert (cells[0, :, :14] == cells[0, 0, 0]).all() and (cells[0, :, 16:] == cells[0, 0, 29]).all()


def test_seed_distance_splits_cells_joined_through_a_gap() -> None:
    prob = np.zeros((1, 40, 40), np.uint8)
    prob[0, :, 19:21] = 255
    prob[0, 18:22, 19:21] = 0  # a 4-pixel gap in the membrane joins the two halves
    assert label_seeds(seed_mask(prob, 0.5), link_slices=False)[1] == 1
    assert label_seeds(seed_mask(prob, 0.5, seed_distance=3), link_slices=False)[1] == 2
    assert len(np.unique(segment_array(prob, SegmentConfig(seed_distance=3, halo=(8, 8))))) == 2


def test_seeds_are_per_slice_unless_linked() -> None:
    mask = np.ones((3, 4, 4), bool)
    assert label_seeds(mask, link_slices=False)[1] == 3
    labels, n = label_seeds(mask, link_slices=True)
    assert n == 1 and (labels == 1).all()


def test_grow_keeps_large_ids_and_leaves_seedless_slices_empty() -> None:
    prob = np.zeros((2, 8, 8), np.uint8)
    markers = np.zeros((2, 8, 8), np.uint64)
    markers[0, 1, 1], markers[0, 6, 6] = 7 << 40, 3
    grown = grow(prob, markers)
    assert set(np.unique(grown[0])) == {7 << 40, 3} and (grown[1] == 0).all()


def test_min_seed_size_drops_small_seeds() -> None:
    prob = np.full((1, 30, 30), 255, np.uint8)
    prob[0, 2:12, 2:12] = 0  # 100 px
    prob[0, 20:23, 20:23] = 0  # 9 px
    assert len(np.unique(segment_array(prob, SegmentConfig(min_seed_size=10)))) == 1


def test_bad_probability_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        segment_array(np.zeros((1, 4, 4), np.float32), SegmentConfig())


@pytest.mark.parametrize("kwargs, match", [
    ({"block_shape": (1, 16, 16)}, "smaller than the halo"),
    ({"seed_distance": 40.0}, "must exceed seed_distance"),
    ({"threshold": 1.5}, "less than 1"),
    ({"colour": "red"}, "Extra inputs"),
])
def test_config_validation_names_the_bad_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SegmentConfig(**kwargs)


# ----------------------------------------------------------------------------- geometry and merge


def test_plan_regions_are_exact() -> None:
    plan = plan_segment_blocks((3, 10, 7), (2, 4, 4), (2, 1))
    assert plan.counts == (2, 3, 2) and len(plan.blocks) == 12
    b = plan.at((1, 1, 1))
    assert b.write == ((2, 3), (4, 8), (4, 7)) and b.read == ((2, 3), (2, 10), (3, 7))
    assert b.write_in_read == (slice(0, 1), slice(2, 6), slice(1, 4))
    # Faces: along y, 2 z-rows x 2 x-columns x 2 inner borders; along x, 2 x 3 x 1.
    assert len(list(plan.faces((1,)))) == 8 and len(list(plan.faces((2,)))) == 6


def test_face_pairs_and_merge_join_across_blocks_and_drop_small() -> None:
    a = np.array([[CAP + 1, 0], [CAP + 2, CAP + 2]], np.uint64)
    b = np.array([[2 * CAP + 1, 2 * CAP + 1], [0, 2 * CAP + 3]], np.uint64)
    pairs = face_pairs(a, b)
    assert pairs.tolist() == [[CAP + 1, 2 * CAP + 1], [CAP + 2, 2 * CAP + 3]]
    sizes = [np.array([5], np.uint64), np.array([3, 1], np.uint64), np.array([4, 9, 2], np.uint64)]
    keys, values, n = merge_seeds(sizes, pairs, min_size=4)
    assert keys.tolist() == [1, CAP + 1, CAP + 2, 2 * CAP + 1, 2 * CAP + 2, 2 * CAP + 3]
    # 1 alone (5); CAP+1 with 2CAP+1 (7); CAP+2 with 2CAP+3 (3: dropped); 2CAP+2 alone (9).
    assert values.tolist() == [1, 2, 0, 2, 3, 0] and n == 3


# ----------------------------------------------------------------------------- blockwise


@pytest.fixture(scope="module")
def prob_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    prob = synthetic_probability()
    return write_probability(tmp_path_factory.mktemp("seg") / "prob.zarr", prob), prob


@pytest.mark.parametrize("block, extra", [
    ((4, 160, 176), {}),                                     # one block: exactly the whole-volume run
    ((2, 64, 64), {}),
    ((3, 24, 40), {"halo": (16, 16)}),                      # blocks smaller than a cell (40 px)
    ((2, 50, 37), {"seed_distance": 3.0, "halo": (12, 12), "min_seed_size": 20}),
    ((1, 64, 48), {"link_slices": True, "seed_distance": 4.0, "halo": (16, 16)}),
])
def test_blockwise_equals_whole_volume(prob_store: tuple[str, np.ndarray], tmp_path: Path,
                                       block: tuple[int, int, int], extra: dict) -> None:
    path, prob = prob_store
    cfg = SegmentConfig(block_shape=block, **extra)
    whole = segment_array(prob, cfg)
    result = segment_blockwise(path, str(tmp_path / "seg.zarr"), cfg)
    out = open_segmentation(result["segmentation"]).read(slice(None))
    assert out.dtype == np.uint32 and out.shape == prob.shape
    assert result["n_cells"] == len(np.unique(whole[whole > 0])) == len(np.unique(out[out > 0]))
    assert adapted_rand_error(whole.astype(np.int64), out.astype(np.int64))[0] <= 0.01
    if block == prob.shape:
        assert same_partition(whole, out)


class Killed(Exception):
    pass


def _kill_after(n: int):  # type: ignore[no-untyped-def]
    def progress(done: int, total: int) -> None:
        if done >= n:
            raise Killed(f"killed after {done} of {total} block passes")
    return progress


@pytest.mark.parametrize("kill_at", [3, 22])  # in the seed pass; in the label pass (18 blocks)
def test_killed_run_resumes_to_the_same_bytes(prob_store: tuple[str, np.ndarray], tmp_path: Path,
                                              kill_at: int) -> None:
    path, _ = prob_store
    cfg = SegmentConfig(block_shape=(2, 64, 64), seed_distance=2.0, halo=(8, 8))
    clean = segment_blockwise(path, str(tmp_path / "clean.zarr"), cfg)["segmentation"]
    target = str(tmp_path / "killed.zarr")
    with pytest.raises(Killed):
        segment_blockwise(path, target, cfg, progress=_kill_after(kill_at))
    with pytest.raises(Exception, match="incomplete"):
        open_segmentation(target)
    passes: list[int] = []
    segment_blockwise(path, target, cfg, progress=lambda done, total: passes.append(done))
    assert passes[0] == kill_at + 1 and passes[-1] == 36  # resumed, not restarted
    a, b = open_segmentation(clean), open_segmentation(target)
    assert np.array_equal(a.read(slice(None)), b.read(slice(None)))
    assert a.attrs["n_cells"] == b.attrs["n_cells"] and "work" not in b.group


def test_resume_with_other_parameters_and_existing_output_are_refused(
        prob_store: tuple[str, np.ndarray], tmp_path: Path) -> None:
    path, _ = prob_store
    target = str(tmp_path / "seg.zarr")
    cfg = SegmentConfig(block_shape=(4, 80, 88))
    with pytest.raises(Killed):
        segment_blockwise(path, target, cfg, progress=_kill_after(1))
    with pytest.raises(SegmentationMismatchError, match="threshold"):
        segment_blockwise(path, target, cfg.model_copy(update={"threshold": 0.3}))
    segment_blockwise(path, target, cfg)
    with pytest.raises(StoreExistsError, match="overwrite"):
        segment_blockwise(path, target, cfg)
    assert segment_blockwise(path, target, cfg, overwrite=True)["n_cells"] > 0


@pytest.mark.parametrize("dtype, kind, match", [
    (np.float32, "prediction", "not uint8"),
    (np.uint8, "label", "not a membrane probability"),
])
def test_non_probability_input_writes_nothing(tmp_path: Path, dtype: type, kind: str, match: str) -> None:
    src = write_probability(tmp_path / "in.zarr", np.zeros((1, 8, 8), dtype), kind=kind)
    out = tmp_path / "seg.zarr"
    with pytest.raises(InputError, match=match):
        segment_blockwise(src, str(out), SegmentConfig(block_shape=(1, 32, 32)))
    assert not out.exists()
    assert open_volume(src).is_complete
