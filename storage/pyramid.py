"""The pyramid of a volume: levels s1, s2, ... each 2x downsampled in y, x (z kept), with Dask."""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np

from storage.volume_handle import VolumeWriter
from storage.zarr_store import group_array


def build_pyramid(writer: VolumeWriter, *, method: Literal["mean", "nearest"] = "mean",
                  first: int = 1) -> None:
    """Fill levels s<first>.. from the level above, streaming with Dask (2x in y, x; z kept).

    ``mean`` (of each 2 x 2, rounded half to even for integers) suits images and probabilities,
    ``nearest`` (stride sampling) suits labels, whose values must not be mixed. Levels below
    ``first`` were written already (e.g. block by block, by inference).
    """
    import dask.array as da

    levels = writer.levels
    for i in range(max(1, first), len(levels)):
        src_arr = group_array(writer.group, levels[i - 1])
        dst = group_array(writer.group, levels[i])
        src = da.from_zarr(src_arr, chunks=(src_arr.chunks[0], src_arr.chunks[1], src_arr.chunks[2]))
        ty, tx = dst.shape[1] * 2, dst.shape[2] * 2
        src = src[:, :ty, :tx]
        if method == "nearest":
            down = src[:, ::2, ::2]
        else:
            mean = da.coarsen(np.mean, src.astype(np.float32), {1: 2, 2: 2}, trim_excess=True)
            if np.issubdtype(dst.dtype, np.integer):
                mean = da.round(mean)
            down = mean.astype(dst.dtype)
        da.store(down.rechunk(dst.shards or dst.chunks), cast(Any, dst), lock=False)
