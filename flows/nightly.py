"""Nightly inbox processing: new TIFF stacks -> ingest -> infer (-> evaluate where labels exist).

::

    inbox/a.tif ──(stable? new digest?)──▶ volumes/a-<d8>.zarr ─infer─▶ predictions/a-<d8>.zarr
    inbox/a_labels.tif ──────────────────▶ labels/a-<d8>.zarr ──evaluate──▶ reports/nightly-a-<d8>/

A stack is taken once its size and mtime stayed unchanged over ``settle_s`` (a copy in
progress waits for the next run), keyed by the SHA-256 of its bytes (renamed or
re-copied files are not processed twice), and recorded in
``workspace/nightly/processed.json`` after it finishes or fails. Each stack runs as its
own sub-flow; a failing stack is recorded as failed, listed in the summary artifact and
the return value, and the others go on.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, task
from pydantic import BaseModel, ConfigDict, Field

from storage.inbox import ProcessedLedger, newest_best_checkpoint, scan_stable, stack_name
from storage.ingest_config import IngestConfig
from storage.provenance import is_current, memo_content_digest, params_digest
from storage.workspace import Workspace
from tasks.locks import output_lock
from tasks.observe import publish_metrics_table, publish_summary, save_previews_task
from tasks.progress import run_logger
from unet.infer_config import InferConfig
from unet.labels import Polarity
from unet.segment_config import SegmentConfig


class NightlyParams(BaseModel):
    """What the nightly run scans, with which model, and how stacks are processed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inbox: str = Field("inbox", description="Folder scanned for new TIFF stacks (`<stem>_labels.tif` "
                       "beside a stack holds its labels).", json_schema_extra={"position": 0})
    workspace: str = Field("workspace", description="Workspace root; the ledger of processed stacks is "
                           "nightly/processed.json in it.", json_schema_extra={"position": 1})
    checkpoint: str | None = Field(None, description="Model checkpoint; default: checkpoint-best.pt of "
                                   "the newest training run under models/.",
                                   json_schema_extra={"position": 2})
    settle_s: float = Field(60.0, ge=0, description="A file is taken only when its size and mtime stayed "
                            "the same for this many seconds.", json_schema_extra={"position": 3})
    retry_failed: bool = Field(False, description="Try stacks that failed before again (a corrected file "
                               "has a new digest and is always picked up).",
                               json_schema_extra={"position": 4})
    polarity: Polarity = Field("zero_is_membrane", description="Label polarity for evaluation.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Ingest settings.")
    infer: InferConfig = Field(default_factory=InferConfig, description="Blockwise inference settings.")
    dask_address: str | None = Field(None, description="Existing Dask scheduler for inference "
                                     "(tcp://host:8786); none = in-process.")
    segment: SegmentConfig | None = Field(None, description="Cell segmentation of each prediction "
                                          "(segmentations/<name>.zarr, scored too where labels exist); "
                                          "none = skip.")


def _digest_memo(workspace: str) -> str:
    return os.path.join(workspace, "nightly", "digests.json")


@task(name="scan-inbox", retries=2, retry_delay_seconds=[5, 30])
def scan_inbox(inbox: str, settle_s: float, memo_file: str) -> dict[str, Any]:
    """Stable stacks (with their labels and content digests) and files still being copied.

    Digests are remembered by size and mtime in ``memo_file``: stacks already in the inbox
    last night are not read again, however large.
    """
    stacks, changing = scan_stable(inbox, settle_s)
    found = []
    for s in stacks:
        digest = memo_content_digest(s.path, memo_file)
        found.append({"path": s.path, "labels": s.labels, "digest": digest,
                      "name": stack_name(s.path, digest)})
    return {"stacks": found, "changing": changing}


def _ingest_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Cache ingest by the input's content digest and the output-shaping settings, while its
    output is still there and complete (a deleted or broken volume is ingested again)."""
    ws = Workspace(parameters["workspace"])
    if not is_current(ws.volume(parameters["name"]), {"complete": True}).current:
        return None  # no key: no cache, run
    cfg: IngestConfig = parameters["config"]
    return "ingest-" + params_digest([parameters["digest"], parameters["labels_digest"],
                                      cfg.output_params(), os.path.abspath(parameters["workspace"]),
                                      parameters["name"]]).split(":")[1]


@task(name="ingest-stack-cached", cache_key_fn=_ingest_cache_key, retries=1, retry_delay_seconds=[10],
      persist_result=True)
def ingest_cached(path: str, labels: str | None, workspace: str, name: str, config: IngestConfig,
                  digest: str, labels_digest: str | None) -> dict[str, Any]:
    """Run the ingest flow; the result (paths only) is cached by content digest."""
    from flows.ingest import ingest_flow

    out = ingest_flow(sources=[path], workspace=workspace, name=name, labels=[labels] if labels else None,
                      config=config)
    return {"image": out.image.path, "labels": out.labels.path if out.labels else None}


@flow(name="nightly-stack", flow_run_name="stack-{name}")
def process_stack(name: str, path: str, labels: str | None, digest: str, checkpoint: str,
                  params: NightlyParams) -> dict[str, Any]:
    """One stack: ingest, infer, evaluate (with labels), previews. Raises on any failure."""
    ws = Workspace(params.workspace)
    labels_digest = memo_content_digest(labels, _digest_memo(params.workspace)) if labels else None
    with output_lock(ws.volume(name)):  # the stack's outputs are all named after it
        return _process_stack(ws, name, path, labels, digest, labels_digest, checkpoint, params)


def _process_stack(ws: Workspace, name: str, path: str, labels: str | None, digest: str,
                   labels_digest: str | None, checkpoint: str, params: NightlyParams) -> dict[str, Any]:
    from flows.evaluate import evaluate_flow
    from flows.infer import infer_flow
    from storage.locks import store_lock
    from storage.volume import open_volume
    from unet.checkpoint import checkpoint_sha256
    from unet.infer_config import fit_to_volume

    vols = ingest_cached(path, labels, params.workspace, name, params.ingest, digest, labels_digest)
    # Under the prediction's file lock (waiting for another run writing it, on any Prefect home):
    # a prediction already made with this model and config is current, not a failure.
    fitted = fit_to_volume(params.infer, open_volume(vols["image"]).shape)  # as the run records it
    with store_lock(ws.prediction(name)):
        if not is_current(ws.prediction(name), {"inference.model_sha256": checkpoint_sha256(checkpoint),
                                                "inference.config": fitted.identity()}).current:
            infer_flow(workspace=params.workspace, volume=name, checkpoint=checkpoint, output=name,
                       config=params.infer, dask_address=params.dask_address)
    result: dict[str, Any] = {"name": name, "source": path, "volume": vols["image"],
                              "prediction": ws.prediction(name), "metrics": None}
    report_dir = ws.report_dir(f"nightly-{name}")
    if params.segment is not None:
        from flows.segment import segment_flow
        from storage.freshness import decide
        from storage.provenance import read_record

        expected = {"segment.source": ws.prediction(name), "segment.config": params.segment.identity()}
        # Made already (a retried stack): reuse; unfinished: resume; anything else there: replace.
        d = decide(read_record(ws.segmentation(name)), expected, on_stale="replace")
        if d.runs:
            segment_flow(workspace=params.workspace, probability=ws.prediction(name), name=name,
                         config=params.segment, dask_address=params.dask_address,
                         overwrite=d.action == "replace")
        result["segmentation"] = ws.segmentation(name)
    if vols["labels"]:
        report = evaluate_flow(workspace=params.workspace, prediction=name, labels=name,
                               polarity=params.polarity, run=f"nightly-{name}",
                               segmentation=name if params.segment is not None else None)
        scores = report.metrics or {}
        result["metrics"] = {k: scores[k] for k in ("isbi_pixel_error", "v_rand", "v_info") if k in scores}
        if report.segmentation is not None:
            result["metrics"].update({f"cells_{k}": report.segmentation[k]
                                      for k in ("v_rand", "v_info", "n_cells")})
    previews = save_previews_task(vols["image"], report_dir, ws.prediction(name), vols["labels"], 1)
    result["previews"] = [p["path"] for p in previews]
    result["thumbs"] = list(previews)  # with their data: URIs, for the run's summary artifact
    return result


@flow(name="nightly", log_prints=True)
def nightly_flow(params: NightlyParams = NightlyParams()) -> dict[str, Any]:  # noqa: B008 (frozen)
    """Process every new, stable stack in the inbox; report processed, failed and waiting ones."""
    log = run_logger()
    ledger = ProcessedLedger.in_workspace(params.workspace)
    scan = scan_inbox(params.inbox, params.settle_s, _digest_memo(params.workspace))
    todo, seen = [], []
    for s in scan["stacks"]:
        entry = ledger.get(s["digest"])
        if entry is None or (params.retry_failed and entry.get("status") == "failed"):
            todo.append(s)
        else:
            seen.append({"source": s["path"], "name": entry.get("name"), "status": entry.get("status")})
    log.info("inbox %s: %d new, %d already seen, %d still changing", params.inbox, len(todo), len(seen),
             len(scan["changing"]))
    processed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    previews: list[dict[str, Any]] = []
    if todo:
        checkpoint = params.checkpoint or newest_best_checkpoint(os.path.join(params.workspace, "models"))
        log.info("model: %s", checkpoint)
        for s in todo:
            state = process_stack(s["name"], s["path"], s["labels"], s["digest"], checkpoint, params,
                                  return_state=True)
            if state.is_completed():
                out = state.result()
                previews.extend(out.pop("thumbs"))
                ledger.record(s["digest"], status="done", checkpoint=checkpoint, **out)
                processed.append(out)
            else:
                error = _error_text(state)
                log.error("stack %s failed: %s", s["path"], error)
                ledger.record(s["digest"], status="failed", name=s["name"], source=s["path"], error=error)
                failed.append({"source": s["path"], "name": s["name"], "error": error})
    _report(params, processed, failed, seen, scan["changing"], previews)
    return {"processed": processed, "failed": failed, "already_seen": seen, "waiting": scan["changing"]}


def _error_text(state: Any) -> str:
    try:
        state.result()
    except Exception as e:  # the sub-flow's exception, re-raised by result()
        return f"{type(e).__name__}: {e}"[:2000]
    return state.message or state.name


def _report(params: NightlyParams, processed: list[dict[str, Any]], failed: list[dict[str, Any]],
            seen: list[dict[str, Any]], waiting: list[str], previews: list[dict[str, Any]]) -> None:
    rows = [{"stack": p["name"], "status": "done", **(p["metrics"] or {})} for p in processed]
    rows += [{"stack": f["name"], "status": "FAILED", "error": f["error"][:200]} for f in failed]
    if rows:
        publish_metrics_table("nightly-stacks", rows, f"stacks processed from {params.inbox}")
    outputs = {p["name"]: p["prediction"] for p in processed}
    notes = [f"FAILED {f['source']}: {f['error']}" for f in failed]
    notes += [f"{len(seen)} stack(s) already processed earlier", f"{len(waiting)} file(s) still changing"]
    publish_summary("nightly-summary", f"Nightly run: {len(processed)} processed, {len(failed)} failed",
                    outputs, None, previews, notes)
