"""Segmentation on a real Dask cluster (a LocalCluster of 2 worker processes, started and torn
down with the test) writes the same bytes as the in-process run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.workspace import Workspace
from tests.unet.test_segment import synthetic_probability, write_probability
from tests.unet.test_segment_resume import assert_same_output
from unet.segment_config import SegmentConfig
from unet.segment_stage import segment_stage

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CFG = SegmentConfig(block_shape=(2, 64, 64), halo=(12, 12), seed_distance=2.0, link_slices=True,
                    min_seed_size=20, pyramid_levels=1)


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def test_distributed_segmentation_equals_local_byte_for_byte(tmp_path: Path, client: object) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    write_probability(Path(ws.prediction("em")), synthetic_probability((4, 192, 160), seed=6))
    local = segment_stage(ws, "em", CFG, name="local")
    dist = segment_stage(ws, "em", CFG, name="dist", client=client)
    assert dist.blocks == local.blocks == 18 and dist.n_cells == local.n_cells > 10
    workers = client.run(lambda: __import__("os").getpid())  # type: ignore[attr-defined]
    assert len(set(workers.values())) == 2  # two processes, neither of them this one
    assert_same_output(ws, "dist", "local")
