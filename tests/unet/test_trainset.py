"""Training-set generation: determinism across grouping and schedulers, resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from storage.dataset import create_training_set, resume_training_set
from storage.synthetic import SyntheticSpec, generate_volume
from unet.augment import AugmentConfig
from unet.trainset import generate_sample, prepare_sources, sample_rng, write_pending_groups

ROOT = Path(__file__).resolve().parents[2]
CONFIG = AugmentConfig(max_displacement_px=5.0)
N = 12


@pytest.fixture(scope="module")
def sources():
    block = generate_volume(SyntheticSpec(shape=(4, 96, 96), cell_yx=24, seed=4))
    return prepare_sources(block.image, block.labels, CONFIG)


def arrays(path):
    ts = resume_training_set(path)
    return ts.image[:], ts.label[:], ts.weight[:]


def make(path, group_size):
    create_training_set(path, N, (96, 96), group_size=group_size)
    return str(path)


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.tobytes() == y.tobytes()


def test_seed_of_sample_i_equals_spawned_child():
    children = np.random.SeedSequence(42).spawn(5)
    for i in range(5):
        assert sample_rng(42, i).integers(1 << 62) == np.random.default_rng(children[i]).integers(1 << 62)


def test_same_bytes_whatever_grouping_and_scheduler(sources, tmp_path):
    reference = make(tmp_path / "g1.zarr", 1)
    assert write_pending_groups(reference, sources, 7, CONFIG, scheduler="sync") == N
    expected = arrays(reference)
    # each sample on its own equals its place in the set
    img, lab, wgt, _ = generate_sample(sources, 7, 5, CONFIG)
    assert np.array_equal(expected[0][5], img) and np.array_equal(expected[1][5], lab)
    assert np.array_equal(expected[2][5], wgt.astype(np.float16))
    assert len({expected[0][i].tobytes() for i in range(N)}) == N
    for group_size, workers in ((5, 2), (4, 1)):
        other = make(tmp_path / f"g{group_size}.zarr", group_size)
        write_pending_groups(other, sources, 7, CONFIG, scheduler="threads", num_workers=workers)
        assert_same(arrays(other), expected)
    again = write_pending_groups(reference, sources, 7, CONFIG)
    assert again == 0  # a finished set: nothing to do


@pytest.mark.e2e
def test_same_bytes_on_distributed_cluster(sources, tmp_path):
    from distributed import Client, LocalCluster

    reference = make(tmp_path / "ref.zarr", 3)
    write_pending_groups(reference, sources, 7, CONFIG, scheduler="sync")
    other = make(tmp_path / "dist.zarr", 3)
    seen = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cl:
        with Client(cl) as client:
            write_pending_groups(other, sources, 7, CONFIG, client=client,
                                 progress=lambda d, t: seen.append((d, t)))
    assert_same(arrays(other), arrays(reference))
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)


KILLABLE = textwrap.dedent("""
    import sys, time
    from storage.synthetic import SyntheticSpec, generate_volume
    from unet.augment import AugmentConfig
    from unet.trainset import prepare_sources, write_pending_groups
    config = AugmentConfig(max_displacement_px=5.0)
    block = generate_volume(SyntheticSpec(shape=(4, 96, 96), cell_yx=24, seed=4))
    sources = prepare_sources(block.image, block.labels, config)
    # slow progress so the parent can kill it between groups
    write_pending_groups(sys.argv[1], sources, 7, config, scheduler="sync",
                         progress=lambda done, total: time.sleep(0.3))
""")


@pytest.mark.e2e
def test_killed_generation_resumes_to_the_same_bytes(sources, tmp_path):
    reference = make(tmp_path / "ref.zarr", 2)
    write_pending_groups(reference, sources, 7, CONFIG)
    killed = make(tmp_path / "killed.zarr", 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, killed], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = resume_training_set(killed).ledger.done_mask().sum()
            if done >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "generation finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ledger = resume_training_set(killed).ledger
    assert 2 <= ledger.done_mask().sum() < ledger.n_units
    pending_before = ledger.pending()
    written = write_pending_groups(killed, sources, 7, CONFIG)
    assert written == len(pending_before)
    assert_same(arrays(killed), arrays(reference))


def test_mismatched_sources_are_refused(sources, tmp_path):
    path = str(tmp_path / "small.zarr")
    create_training_set(path, 2, (64, 64), group_size=1)
    with pytest.raises(ValueError, match="holds samples of"):
        write_pending_groups(path, sources, 0, AugmentConfig(max_displacement_px=2.0))
    with pytest.raises(ValueError, match="would fold"):
        write_pending_groups(path, sources, 0, AugmentConfig())
