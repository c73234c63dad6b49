"""``emseg demo``: the whole pipeline on embedded defaults, in a few minutes on a laptop CPU.

Prefect runs on its temporary local server (unless ``PREFECT_API_URL`` points at one),
whose database lives in ``<workspace>/.prefect`` unless ``PREFECT_HOME`` says otherwise;
Dask in-process. Input: a synthetic EM-like volume written as TIFF stacks
(:mod:`storage.synthetic`: 16 slices of 256 x 256 with known membranes), or the ISBI 2012
training stacks when their folder is given. The model is small and trains for a few
hundred steps: the point is to exercise every step, not to reach the best scores.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # importing the pipeline imports Prefect, which must wait for PREFECT_HOME
    from flows.pipeline_config import PipelineParams

SYNTHETIC_SHAPE = (16, 256, 256)
Recipe = Literal["demo", "cpu"]
RECIPES: tuple[Recipe, ...] = ("demo", "cpu")
PREFECT_DIR = ".prefect"
# Prefect's INFO lines (the temporary server's start and stop, every flow and task run's start and
# end, the pipeline's step decisions) and its telemetry error on a closed network drown the demo's
# summary, above all on a re-run that has nothing to do. The stages' own ``emseg.*`` messages
# still show while they work. A user's own setting of either variable wins.
QUIET_PREFECT = {"PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def use_workspace_prefect_home(workspace: str, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Point ``PREFECT_HOME`` at ``<workspace>/.prefect`` unless Prefect is configured already
    (``PREFECT_HOME`` or ``PREFECT_API_URL`` set): the demo's temporary server then keeps its
    database in the workspace, not in ``~/.prefect``, and ``make clean`` removes it with the
    workspace. Call it before Prefect is imported (Prefect reads its settings once)."""
    if environ.get("PREFECT_HOME") or environ.get("PREFECT_API_URL"):
        return environ.get("PREFECT_HOME")
    environ["PREFECT_HOME"] = os.path.abspath(os.path.join(workspace, PREFECT_DIR))
    os.makedirs(environ["PREFECT_HOME"], exist_ok=True)  # Prefect warns when it must create it itself
    return environ["PREFECT_HOME"]


def quiet_prefect(environ: MutableMapping[str, str] = os.environ) -> None:
    """Lower Prefect's console logging to warnings for the demo (:data:`QUIET_PREFECT`), unless the
    user set those variables: a re-run with nothing to do then prints only the summary. Call it
    before Prefect is imported (Prefect configures its logging once, on import)."""
    for key, value in QUIET_PREFECT.items():
        environ.setdefault(key, value)


def demo_name(isbi: bool, recipe: Recipe = "demo") -> str:
    """The demo's volume name: each input (and recipe) gets its own volumes, prediction and stamps."""
    name = "isbi" if isbi else "synthetic"
    return name if recipe == "demo" else f"{name}-{recipe}"


def demo_run(isbi: bool, recipe: Recipe = "demo") -> str:
    """The demo's run name: each input and recipe gets its own training set, model folder and
    report, so the demos never overwrite (or mix into) each other's outputs."""
    return f"demo-{demo_name(isbi, recipe)}"


def demo_params(workspace: str, source: str, labels: str, *, isbi: bool = False,
                steps: int | None = None, recipe: Recipe = "demo") -> PipelineParams:
    """The demo's settings for ``recipe`` (:data:`RECIPES`); ``steps`` overrides its step count.

    ``demo``: small and fast, a 3-level U-Net with 16 base channels, 128-px crops, CPU-sized blocks.
    ``cpu``: the recipe for a lab without a GPU (issue 12): a 5-level U-Net with 16 base channels
    (receptive-field radius 107 px, about 5/3 the cost of the demo's per pixel: each level costs
    about the same), batches of 4 × 256² crops for 1,200 steps (about 13 minutes on 2 cores),
    300 MLS samples, validation every 200 steps. No test-time augmentation: on ISBI slices 20-29
    the 8 d4 views cost 8x the inference time and scored no better (docs/benchmarks.md).
    """
    from flows.pipeline_config import PipelineParams
    from storage.ingest_config import IngestConfig
    from unet.augment import AugmentConfig
    from unet.infer_config import InferConfig
    from unet.model import UNetConfig
    from unet.train import TrainConfig

    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    cpu = recipe == "cpu"
    steps = steps or (1200 if cpu else 300)
    size = 512 if isbi else SYNTHETIC_SHAPE[1]
    return PipelineParams(
        source=source, labels=labels, workspace=workspace, name=demo_name(isbi, recipe),
        run=demo_run(isbi, recipe),
        train_slices="0-19" if isbi else "0-11", val_slices="20-29" if isbi else "12-15",
        n_samples=(300 if cpu else 96) if isbi else 64,
        ingest=IngestConfig(voxel_size=(50.0, 4.0, 4.0) if isbi else (40.0, 4.0, 4.0), shard_z=4,
                            chunk_yx=size, shard_yx=size),
        augment=AugmentConfig(max_displacement_px=8.0),
        unet=UNetConfig(depth=5 if cpu else 3, base_channels=16),
        train=TrainConfig(steps=steps, batch_size=4, crop=min(256, size) if cpu else 128, lr=2e-3,
                          warmup_steps=50 if cpu else 20, val_every=200 if cpu else max(steps // 3, 1),
                          log_every=25, loader_threads=1, prefetch=2),
        infer=InferConfig(tile=(size, size), overlap=(0, 0), halo=(0, 16, 16), blend="crop", batch_size=2,

                          block_shape=(4, size, size), chunks=(1, size, size), read_threads=1,
                          write_threads=1),
    )


def run_demo(workspace: str = "workspace", isbi_dir: str | None = None, steps: int | None = None,
             recipe: Recipe = "demo") -> dict[str, Any]:
    """Write (or find) the input stacks, run the pipeline, print where everything is."""
    quiet_prefect()
    from flows.pipeline import pipeline_flow

    if isbi_dir:
        source = os.path.join(isbi_dir, "train-volume.tif")
        labels = os.path.join(isbi_dir, "train-labels.tif")
        params = demo_params(workspace, source, labels, isbi=True, steps=steps, recipe=recipe)
    else:
        from storage.demo_data import write_synthetic_stack
        from storage.synthetic import SyntheticSpec

        inputs = os.path.join(workspace, "inputs")
        source = os.path.join(inputs, "synthetic.tif")
        labels = os.path.join(inputs, "synthetic_labels.tif")
        if not (os.path.exists(source) and os.path.exists(labels)):
            write_synthetic_stack(inputs, SyntheticSpec.hard(shape=SYNTHETIC_SHAPE, seed=1), stem="synthetic",
                                  overwrite=True)
        params = demo_params(workspace, source, labels, steps=steps, recipe=recipe)
    result = pipeline_flow(params)
    print_summary(result)
    return result


def print_summary(result: dict[str, Any]) -> None:
    print("\nemseg demo finished.")
    print("\nsteps:")
    for s in result["steps"]:
        print(f"  {s['step']:<9} {s['action']:<8} {s['seconds']:>7} s   {s['why']}")
    if result.get("validation"):
        print("\nvalidation slices (best checkpoint):")
        for k in ("isbi_pixel_error", "v_rand", "v_info"):
            if k in result["validation"]:
                print(f"  {k:<16} {result['validation'][k]:.4f}")
    held = result.get("held_out") or {}
    if held:
        print(f"\nheld-out slices {held.get('slices', '?')} (the prediction, as inferred):")
        for k in ("isbi_pixel_error", "v_rand", "v_info"):
            if k in held:
                print(f"  {k:<16} {held[k]:.4f}")
    print("\nwhole volume (includes the training slices):")
    width = max(map(len, result["metrics"]), default=0)
    for k, v in result["metrics"].items():
        print(f"  {k:<{width}} {v:.4f}")
    print("\noutputs:")
    for k, v in result["outputs"].items():
        print(f"  {k:<10} {os.path.abspath(v)}")
    for p in result["previews"]:
        print(f"  preview    {os.path.abspath(p)}")
