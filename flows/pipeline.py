"""The end-to-end pipeline: ingest -> augment -> train -> infer -> evaluate, as sub-flows.

::

    source.tif ─ingest─▶ volumes/<name>.zarr ─augment─▶ datasets/<run>.zarr ─train─▶ models/<run>/
    labels.tif ─┘        labels/<name>.zarr                                             │ best
                              │                                                          ▼
                              └──────────────────────────infer──────────▶ predictions/<name>.zarr
                                                                                         │
                                                                evaluate ─▶ reports/<report>/

Steps pass workspace names/paths, never arrays. Before each step the pipeline asks
:func:`storage.provenance.is_current` whether the step's output is complete and was
made from the same inputs and parameters, comparing what the stage itself recorded in
its output (Zarr attrs, config.json, metrics.json). Two steps get a stamp the pipeline
writes after they return: ingest, because it is compared by its inputs' content digests
(a touched or re-copied stack with the same bytes is not ingested again), and training,
whose run folder exists from its first step on.
A current step is skipped unless a step before it ran in this pipeline run (its output
may have changed). So a re-run after a failure continues at the failed step (and inside
it: augmentation and inference resume their unfinished groups, training its last
checkpoint), and a re-run of a finished pipeline does nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow

from flows.pipeline_config import PipelineParams
from storage import freshness
from storage.provenance import (
    clear_stamp,
    is_current,
    memo_content_digest,
    read_record,
    write_stamp,
)
from storage.workspace import Workspace
from tasks.locks import output_lock
from tasks.observe import publish_metrics_table, publish_summary, save_previews_task
from tasks.progress import run_logger
from tasks.split import stack_split
from unet.split import parse_slice_range

if TYPE_CHECKING:
    from unet.train_stage import TrainStageResult

Mode = Literal["create", "resume", "replace"]
STEPS = ("ingest", "augment", "train", "infer", "evaluate")


@dataclass(frozen=True)
class StepCheck:
    """Whether a step must run and, if so, how: on nothing, resuming, or replacing a stale output."""

    run: bool
    mode: Mode
    reason: str


def decide(output_record: dict[str, Any] | None, expected: dict[str, Any], upstream_ran: bool) -> StepCheck:
    """:func:`storage.freshness.decide` as the pipeline applies it (pure: tested without files).

    Current output and nothing upstream ran: skip. No output: create. An output made from
    the same inputs and parameters but unfinished: resume. Anything else: replace (the
    pipeline owns its outputs).
    """
    d = freshness.decide(output_record, expected, upstream_ran=upstream_ran, on_stale="replace")
    if d.action == "reuse":
        return StepCheck(False, "resume", d.reason)
    mode: Mode = "create" if d.action == "create" else "resume" if d.action == "resume" else "replace"
    return StepCheck(True, mode, d.reason)


def _stamp(ws: Workspace, step: str, key: str) -> str:
    return os.path.join(ws.root, "pipeline", f"{step}-{key}.json")


class _Runner:
    """Runs steps in order, tracking whether any step ran (then every later one runs too)."""

    def __init__(self) -> None:
        self.upstream_ran = False
        self.log = run_logger()
        self.table: list[dict[str, Any]] = []

    def step(self, name: str, output: str, record: Callable[[], dict[str, Any] | None],
             expected: dict[str, Any], run: Callable[[Mode], Any], stamp: str | None = None) -> Any:
        """Check and (maybe) run one step while holding its output's write lock, so another
        run writing the same output waits, then finds it current."""
        with output_lock(output):
            check = decide(record(), expected, self.upstream_ran)
            if not check.run:
                self.log.info("%s: skipped (%s)", name, check.reason)
                self.table.append({"step": name, "action": "skipped", "seconds": 0.0, "why": check.reason})
                return None
            self.log.info("%s: running, %s (%s)", name, check.mode, check.reason)
            if stamp:
                clear_stamp(stamp)
            t0 = time.perf_counter()
            result = run(check.mode)
            if stamp:
                write_stamp(stamp, expected)
        self.upstream_ran = True
        self.table.append({"step": name, "action": check.mode, "seconds": round(time.perf_counter() - t0, 1),
                           "why": check.reason})
        return result


@flow(name="pipeline", log_prints=True)
def pipeline_flow(params: PipelineParams) -> dict[str, Any]:
    """ingest -> augment -> train -> infer -> evaluate; each step skipped when its output is current.

    Returns the output locations, the validation scores of the best checkpoint, the
    whole-volume scores, the prediction's scores on the held-out validation slices, and what
    each step did.
    """
    from flows.augment import augment_flow
    from flows.evaluate import evaluate_flow
    from flows.infer import infer_flow
    from flows.ingest import ingest_flow
    from flows.train import train_flow
    from unet.checkpoint import checkpoint_sha256

    # Empty slice selections take their part of the stack's default split; every selection is
    # checked against the stack's depth (from its header) before any step runs.
    split = stack_split(params.source, params.train_slices, params.val_slices, params.ingest.channel,
                        params.evaluate.slices)
    p = params.model_copy(update={"train_slices": split.train, "val_slices": split.val})
    ws = Workspace(p.workspace)
    runner = _Runner()
    runner.log.info("slices: train %s, validation %s", p.train_slices, p.val_slices)
    paths = {"volume": ws.volume(p.name), "labels": ws.labels(p.name), "dataset": ws.dataset(p.run),
             "model_dir": ws.model_dir(p.run), "prediction": ws.prediction(p.name),
             "report": ws.report_dir(p.report_name)}

    # ingest: compared by the inputs' content (SHA-256, remembered by size and mtime), so a
    # touched or re-copied stack holding the same bytes re-runs nothing; the stamp records
    # the digests and settings the finished ingest was made from.
    memo = os.path.join(ws.root, "pipeline", "digests.json")
    ingest_expected = {"image": memo_content_digest(p.source, memo),
                       "labels": memo_content_digest(p.labels, memo), "params": p.ingest.output_params()}
    ingest_stamp = _stamp(ws, "ingest", p.name)

    def ingest_record() -> dict[str, Any] | None:
        complete = _volumes_complete(read_record(paths["volume"]), read_record(paths["labels"]))
        if complete is None:
            return None
        stamped = read_record(ingest_stamp)
        return stamped if stamped is not None and complete else {**(stamped or {}), "complete": False}

    runner.step(
        "ingest", paths["volume"], ingest_record, ingest_expected,
        # Anything there that is not current was made from other bytes (or never finished).
        lambda mode: ingest_flow(sources=[p.source], workspace=p.workspace, name=p.name, labels=[p.labels],
                                 config=p.ingest.model_copy(update={"overwrite": mode != "create"})),
        stamp=ingest_stamp)

    # augment: datasets/<run>.zarr records its sources and parameters.
    aug_expected = {"sources.image": paths["volume"], "sources.labels": paths["labels"],
                    "sources.split.train": p.train_slices,
                    "params": {"n_samples": p.n_samples, "root_seed": 0,
                               "augment": p.augment.model_dump(mode="json")}}
    runner.step(
        "augment", paths["dataset"], lambda: read_record(paths["dataset"]), aug_expected,
        lambda mode: augment_flow(image=p.name, labels=p.name, dataset=p.run, workspace=p.workspace,
                                  slices=p.train_slices, n_samples=p.n_samples, root_seed=0, config=p.augment,
                                  dask_address=p.dask_address, overwrite=mode == "replace"))

    # train: config.json records the configs and inputs; the stamp says the run finished.
    train_expected = {"unet": p.unet.model_dump(mode="json"), "train": p.train.model_dump(mode="json"),
                      "dataset": paths["dataset"], "validation.z": list(parse_slice_range(p.val_slices))}
    stamp = _stamp(ws, "train", p.run)

    best = os.path.join(paths["model_dir"], "checkpoint-best.pt")

    def train_record() -> dict[str, Any] | None:
        stamped, folder = read_record(stamp), read_record(paths["model_dir"])
        if folder is None:
            return None  # never trained, or the run folder was removed: a stamp alone proves nothing
        if stamped is None:
            # A run folder without a stamp: a killed or failed run. Same configs: resume it.
            return {**folder, "complete": False}
        return stamped

    last_ckpt = os.path.join(paths["model_dir"], "checkpoint-last.pt")
    train_result = runner.step(
        "train", paths["model_dir"], train_record, train_expected,
        lambda mode: train_flow(workspace=p.workspace, dataset=p.run, val_image=p.name, val_labels=p.name,
                                val_slices=p.val_slices, run=p.run, train=p.train, unet=p.unet,
                                resume=mode == "resume" and os.path.exists(last_ckpt),
                                overwrite=mode == "replace"),
        stamp=stamp)
    if not os.path.exists(best):
        raise RuntimeError(f"training left no best checkpoint at {best} (no validation ran?)")

    # infer: the prediction records the checkpoint's SHA-256 and the output-shaping config, as fitted
    # to the volume (tile shrunk to small volumes, automatic pyramid resolved).
    from storage.volume import open_volume
    from unet.infer_config import fit_to_volume

    fitted = fit_to_volume(p.infer, open_volume(paths["volume"]).shape)
    infer_expected = {"inference.model_sha256": checkpoint_sha256(best),
                      "inference.config": fitted.identity()}
    runner.step(
        "infer", paths["prediction"], lambda: read_record(paths["prediction"]), infer_expected,
        # previews=False: the pipeline draws its own (raw | prediction | labels) into reports/<run>/.
        lambda mode: infer_flow(workspace=p.workspace, volume=p.name, checkpoint=best, output=p.name,
                                config=p.infer, dask_address=p.dask_address, overwrite=mode == "replace",
                                previews=False))

    # evaluate: metrics.json records what was scored: the whole volume (evaluate.slices: some) and,
    # in the same pass, the held-out validation slices on their own (metrics.json["held_out"]).
    metrics_path = os.path.join(paths["report"], "metrics.json")
    eval_expected = {"prediction": paths["prediction"], "labels": paths["labels"],
                     "polarity": p.evaluate.polarity, "slices": p.evaluate.slices or None,
                     "held_out.slices": p.val_slices, "thresholds": list(p.evaluate.thresholds)}
    runner.step(
        "evaluate", paths["report"], lambda: read_record(metrics_path), eval_expected,
        lambda mode: evaluate_flow(workspace=p.workspace, prediction=p.name, labels=p.name,
                                   polarity=p.evaluate.polarity, run=p.report_name,
                                   thresholds=p.evaluate.thresholds, slices=p.evaluate.slices,
                                   held_out=p.val_slices, overwrite=mode == "replace"))
    if not is_current(metrics_path, eval_expected).current:
        raise RuntimeError(f"evaluate left no report matching the prediction at {metrics_path}")

    # segment (optional, params.segment): the segmentation records its source and config.
    if p.segment is not None:
        from flows.segment import segment_flow

        seg_path, seg_cfg = ws.segmentation(p.name), p.segment
        runner.step(
            "segment", seg_path, lambda: read_record(seg_path),
            {"segment.source": paths["prediction"], "segment.config": seg_cfg.identity()},
            lambda mode: segment_flow(workspace=p.workspace, probability=paths["prediction"], name=p.name,
                                      config=seg_cfg, dask_address=p.dask_address,
                                      overwrite=mode == "replace"))

    return _publish(p, paths, runner.table, metrics_path, train_result)


def _volumes_complete(image: dict[str, Any] | None, labels: dict[str, Any] | None) -> bool | None:
    """None when neither volume exists, else whether both are complete."""
    if image is None and labels is None:
        return None
    return bool(image and image.get("complete") and labels and labels.get("complete"))


def _checkpoint_scores(path: str) -> dict[str, Any]:
    """The validation scores a best checkpoint stores beside its weights (scalars only), so a
    summary always shows the scores of the model on disk, never an earlier run's."""
    from unet.checkpoint import load_checkpoint

    metrics = load_checkpoint(path)["extra"].get("metrics", {})
    return {k: v for k, v in metrics.items() if not isinstance(v, list | dict)}


SCORE_KEYS = ("isbi_pixel_error", "v_rand", "v_info", "v_rand_threshold", "v_info_threshold")


def _publish(p: PipelineParams, paths: dict[str, str], steps: list[dict[str, Any]], metrics_path: str,
             train_result: TrainStageResult | None) -> dict[str, Any]:
    from storage.files import read_json

    whole = read_json(metrics_path)
    scores = {f"volume_{k}": whole[k] for k in SCORE_KEYS if isinstance(whole.get(k), int | float)}
    held = whole.get("held_out") or {}  # the prediction on the validation slices, as inferred
    held_out = {k: held[k] for k in ("slices", *SCORE_KEYS) if k in held}
    train_cfg = read_record(paths["model_dir"]) or {}
    best_val: dict[str, Any] = dict(train_result.best_metrics) if train_result else {}
    if not best_val:  # training was skipped: the scores of the checkpoint the prediction came from
        best_val = _checkpoint_scores(os.path.join(paths["model_dir"], "checkpoint-best.pt"))
    # With a segmentation: its previews beside the membranes' and its cell count among the scores.
    segmentation = Workspace(p.workspace).segmentation(p.name) if p.segment is not None else None
    if segmentation is not None:
        scores["cells"] = int((read_record(segmentation) or {}).get("n_cells", 0))
    previews = save_previews_task(paths["volume"], paths["report"], paths["prediction"], paths["labels"],
                                  segmentation_path=segmentation)
    main = f"slices {p.evaluate.slices} of {p.name}" if p.evaluate.slices else f"whole volume {p.name}"
    scopes = [(f"validation slices {p.val_slices} (best checkpoint)", best_val)] if best_val else []
    scopes += [(f"held-out slices {p.val_slices} (the prediction, as inferred)", held), (main, whole)]
    rows = [{"scope": scope, **{k: scored.get(k) for k in SCORE_KEYS}} for scope, scored in scopes]
    publish_metrics_table(f"pipeline-{p.report_name}-metrics", rows,
                          f"scores of run {p.run} (the whole volume includes the training slices)")
    publish_summary(f"pipeline-{p.report_name}-summary", f"Pipeline {p.run}: {p.name}",
                    {**paths, "metrics": metrics_path},
                    {**scores, **{f"held_out_{k}": held[k] for k in SCORE_KEYS if k in held}}, previews,
                    [f"{s['step']}: {s['action']} ({s['seconds']} s) - {s['why']}" for s in steps]
                    + [f"device: {train_cfg.get('device', '?')}"])
    return {"outputs": {**paths, "metrics": metrics_path}, "metrics": scores, "validation": best_val,
            "held_out": held_out, "steps": steps, "previews": [pv["path"] for pv in previews]}
