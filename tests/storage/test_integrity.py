"""Issue 16: data integrity under concurrency, kills and odd inputs (storage side).

Ledger updates from concurrent processes, kills during store creation, write locks of
ingest and inference, missing chunk files, full or read-only disks, label validation at
ingest, report overwrites, and the completion marker of training runs.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from storage import locks
from storage.errors import (
    DamagedStoreError,
    InputError,
    OutputWriteError,
    StoreExistsError,
    StoreNotFoundError,
)
from storage.files import check_report_target, write_json
from storage.inbox import ProcessedLedger, newest_best_checkpoint
from storage.ingest import IngestConfig, LabelsRefusedError, ingest, plan_ingest, run_plan
from storage.prediction import create_or_resume_prediction, release_prediction_lock
from storage.runs import clear_run_complete, is_run_complete, mark_run_complete
from storage.volume import create_volume, open_volume

ROOT = Path(__file__).resolve().parents[2]
SMALL = IngestConfig(chunk_yx=16, workers=2)


def _stack(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, photometric="minisblack")
    return path


def _image(shape: tuple[int, int, int] = (6, 32, 32)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def _labels(shape: tuple[int, int, int] = (6, 32, 32), interior: int = 255) -> np.ndarray:
    lab = np.full(shape, interior, np.uint8)
    lab[:, ::8, :] = 0  # thin membranes: a minority
    lab[:, :, ::8] = 0
    return lab


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# -- 1. the nightly ledger ----------------------------------------------------------------------------

def _record_many(workspace: str, worker: int, n: int) -> None:
    ledger = ProcessedLedger.in_workspace(workspace)  # loaded once, like a nightly run
    for i in range(n):
        ledger.record(f"sha256:{worker}-{i}", name=f"s{worker}-{i}", status="done")


def test_concurrent_ledger_updates_lose_no_entry(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    entries = ProcessedLedger.in_workspace(tmp_path).entries()
    assert sorted(entries) == sorted(f"sha256:{w}-{i}" for w in range(3) for i in range(15))


def test_failed_does_not_replace_a_done_recorded_meanwhile(tmp_path: Path) -> None:
    loser = ProcessedLedger.in_workspace(tmp_path)  # loaded before the other run finished
    time.sleep(1.1)  # entries are stamped to the second
    ProcessedLedger.in_workspace(tmp_path).record("sha256:a", name="a", status="done")
    loser.record("sha256:a", name="a", status="failed", error="it was written by the other run")
    loser.record("sha256:b", name="b", status="failed", error="a real failure")
    entries = ProcessedLedger.in_workspace(tmp_path).entries()
    assert entries["sha256:a"]["status"] == "done" and entries["sha256:b"]["status"] == "failed"


# -- 3. a kill during store creation -------------------------------------------------------------------

@pytest.mark.parametrize("moment", ["before_metadata", "after_rename"])
def test_kill_while_creating_is_resumed_by_the_same_command(tmp_path: Path, moment: str) -> None:
    src = _stack(tmp_path / "in" / "s.tif", _image())
    out = tmp_path / "ws" / "v.zarr"
    # The writer process dies (os._exit: no cleanup, like SIGKILL) at ``moment`` of creating the store.
    target = "write_ome_metadata" if moment == "before_metadata" else "_publish"
    result = _python(f"""
        import os
        import storage.volume_create as v
        from storage.ingest import IngestConfig, ingest
        real = v.{target}
        def dying(*a, **k):
            if {moment == "after_rename"}:
                real(*a, **k)
            os._exit(9)
        v.{target} = dying
        ingest({str(src)!r}, {str(out)!r}, IngestConfig(chunk_yx=16, workers=1))
    """)
    assert result.returncode == 9, result.stderr
    if moment == "before_metadata":
        assert not out.exists()  # only a hidden leftover beside it
    else:
        assert open_volume(out, require_complete=False).attrs["sources"]  # identified from the start
    vol = ingest(src, out, SMALL)  # the same command, no --overwrite
    np.testing.assert_array_equal(vol.read(slice(None)), _image())
    assert sorted(os.listdir(out.parent)) == ["v.zarr", "v.zarr.lock"]  # leftovers cleaned up


# -- 7. write locks --------------------------------------------------------------------------------------

def test_second_inference_on_the_same_output_fails_naming_the_lock(tmp_path: Path) -> None:
    pred = tmp_path / "pred.zarr"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from storage.prediction import create_or_resume_prediction
        create_or_resume_prediction({str(pred)!r}, shape=(2, 8, 8), voxel_size=(1, 1, 1), chunks=(1, 8, 8),
                                    shards=(1, 8, 8), n_blocks=2, identity={{"m": 1}})
        print("holding", flush=True)
        time.sleep(60)
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(locks.StoreLockedError, match=r"pred\.zarr\.lock") as err:
            create_or_resume_prediction(pred, shape=(2, 8, 8), voxel_size=(1, 1, 1), chunks=(1, 8, 8),
                                        shards=(1, 8, 8), n_blocks=2, identity={"m": 1})
        assert f"pid {holder.pid}" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: the same command resumes.
    store = create_or_resume_prediction(pred, shape=(2, 8, 8), voxel_size=(1, 1, 1), chunks=(1, 8, 8),
                                        shards=(1, 8, 8), n_blocks=2, identity={"m": 1})
    assert store.pending() == [0, 1]
    for i in range(2):
        store.write_block(i, (i, 0, 0), np.full((1, 8, 8), 7, np.uint8))
    store.finish()
    assert not locks.is_held_here(pred)  # finish gives the lock back


def test_prediction_lock_is_reentrant_for_a_caller_that_holds_it(tmp_path: Path) -> None:
    pred = tmp_path / "pred.zarr"
    with locks.store_lock(pred):  # the nightly flow waits for the lock, then runs infer inside it
        store = create_or_resume_prediction(pred, shape=(1, 8, 8), voxel_size=(1, 1, 1), chunks=(1, 8, 8),
                                            shards=(1, 8, 8), n_blocks=1, identity={"m": 1})
        store.write_block(0, (0, 0, 0), np.zeros((1, 8, 8), np.uint8))
        store.finish()
        assert locks.is_held_here(pred)
    assert not locks.is_held_here(pred)
    release_prediction_lock(pred)  # nothing held: no-op


def test_waiting_ingest_reuses_what_the_other_run_wrote(tmp_path: Path) -> None:
    src = _stack(tmp_path / "in" / "s.tif", _image())
    out = tmp_path / "v.zarr"
    plan = plan_ingest(src, out, SMALL)
    assert plan.action == "create"
    ingest(src, out, SMALL)  # the other run finished first, while this one waited for the lock
    before = os.stat(out / "zarr.json").st_mtime_ns
    vol = run_plan(plan)  # decided again under the lock: reused, not replaced
    assert plan.action == "reuse" and vol.is_complete and os.stat(out / "zarr.json").st_mtime_ns == before


# -- 8. a missing chunk file -----------------------------------------------------------------------------

@pytest.mark.parametrize("shards", [None, (2, 16, 32)])
def test_complete_volume_with_a_missing_chunk_file_is_refused(tmp_path: Path, shards: tuple[int, ...] | None,
                                                             ) -> None:
    path = tmp_path / "v.zarr"
    w = create_volume(path, (4, 32, 32), np.uint8, (1, 1, 1), chunks=(1, 16, 16), shards=shards)
    w.write(0, np.zeros((4, 32, 32), np.uint8))  # even all-zero data is stored: a gap is lost data
    w.mark_complete()
    assert open_volume(path).read(slice(None)).sum() == 0
    os.remove(path / "s0" / "c" / "1" / "1" / "0")
    with pytest.raises(DamagedStoreError, match=r"v\.zarr is damaged: 1 of its \d+ level-0 .* s0/c/1/1/0"):
        open_volume(path)


def test_sparse_writers_are_not_flagged(tmp_path: Path) -> None:
    path = tmp_path / "v.zarr"
    w = create_volume(path, (4, 32, 32), np.uint8, (1, 1, 1), chunks=(1, 16, 16))
    w.write(0, np.ones((1, 32, 32), np.uint8))  # only slice 0: the writer never stored the rest
    w.mark_complete()
    assert open_volume(path).read(slice(1, 4)).sum() == 0


# -- 9. read-only or full disk -----------------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_full_or_read_only_disk_is_one_line_naming_the_path_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    import storage.ingest as ingest_mod

    src = _stack(tmp_path / "in" / "s.tif", _image())
    out = tmp_path / "ws" / "v.zarr"
    real = ingest_mod._copy_slab
    calls = {"n": 0}

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 1:  # the first slab is written, then the disk is full
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_mod, "_copy_slab", failing)
    with pytest.raises(OutputWriteError) as err:
        ingest(src, out, SMALL.model_copy(update={"slab_z": 2, "workers": 1, "scheduler": "sync"}))
    message = str(err.value)
    assert "\n" not in message and str(out) in message and f"errno {code}" in message
    assert not out.exists() and [p for p in os.listdir(out.parent) if not p.endswith(".lock")] == []


def test_permanent_os_errors_are_not_retried() -> None:
    from prefect.states import Failed

    from storage.errors import OutputWriteError
    from tasks.ingest import ingest_stack
    from tasks.retry import is_transient

    for code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
        try:
            raise OutputWriteError("cannot write v.zarr") from OSError(code, os.strerror(code))
        except OutputWriteError as e:
            assert is_transient(ingest_stack, None, Failed(data=e)) is False  # type: ignore[arg-type]
        assert is_transient(ingest_stack, None, Failed(data=OSError(code, "x"))) is False  # type: ignore[arg-type]
    assert is_transient(ingest_stack, None, Failed(data=OSError(errno.EIO, "x"))) is True  # type: ignore[arg-type]


def test_read_only_workspace_fails_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr

    def read_only(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(zarr, "create_group", read_only)
    with pytest.raises(OutputWriteError, match=r"cannot write .*v\.zarr: Read-only file system \[errno 30\]"):
        create_volume(tmp_path / "v.zarr", (1, 8, 8), np.uint8, (1, 1, 1))
    assert os.listdir(tmp_path) == []


# -- 6. labels where they enter ---------------------------------------------------------------------------

def test_binary_labels_pass_ingest_and_record_their_values(tmp_path: Path) -> None:
    for interior in (255, 1):
        src = _stack(tmp_path / "in" / f"l{interior}.tif", _labels(interior=interior))
        vol = ingest(src, tmp_path / f"l{interior}.zarr", SMALL, kind="label")
        assert vol.attrs["label_values"] == [0, interior]


@pytest.mark.parametrize(("data", "match"), [
    (np.arange(6 * 32 * 32, dtype=np.uint16).reshape(6, 32, 32) % 50, "instance"),
    (255 - _labels(), "inverted"),
    (_labels() // 255 + 3, "binary membrane labels need 0"),
])
def test_instance_or_inverted_labels_are_refused_at_ingest(tmp_path: Path, data: np.ndarray,
                                                           match: str) -> None:
    src = _stack(tmp_path / "in" / "l.tif", data)
    with pytest.raises(LabelsRefusedError, match=match) as err:
        ingest(src, tmp_path / "l.zarr", SMALL, kind="label")
    assert isinstance(err.value, InputError) and "l.tif" in str(err.value)
    assert not (tmp_path / "l.zarr").exists()


def test_augment_needs_the_interior_value_the_labels_hold() -> None:
    from unet.labels import check_interior_value, value_counts

    ones = value_counts(_labels(interior=1))
    with pytest.raises(ValueError, match="pass interior_value=1"):
        check_interior_value(ones, 255, "labels l.zarr")
    check_interior_value(ones, 1, "labels l.zarr", "zero_is_membrane")
    with pytest.raises(ValueError, match=r"ingested as nonzero_is_membrane .* pass interior_value=0"):
        check_interior_value(ones, 1, "labels l.zarr", "nonzero_is_membrane")
    with pytest.raises(ValueError, match="instance"):
        check_interior_value({0: 5, 1: 5, 2: 5}, 1)
    with pytest.raises(ValueError, match="inverted"):
        check_interior_value(value_counts(255 - _labels()), 255)


# -- 5. reports made from other inputs ---------------------------------------------------------------------

def test_report_of_other_inputs_is_refused_naming_overwrite(tmp_path: Path) -> None:
    report = tmp_path / "reports" / "r" / "metrics.json"
    made_from = {"prediction": "/ws/predictions/a.zarr", "labels": "/ws/labels/a.zarr",
                 "polarity": "zero_is_membrane"}
    check_report_target(report, made_from)  # nothing there yet
    write_json(report, {**made_from, "v_rand": 0.9})
    check_report_target(report, made_from)  # the same inputs: made again
    other = {**made_from, "prediction": "/ws/predictions/b.zarr"}
    with pytest.raises(StoreExistsError, match=r"made from other inputs \(prediction: .*--overwrite") as err:
        check_report_target(report, other)
    assert "\n" not in str(err.value)
    check_report_target(report, other, overwrite=True)
    assert json.loads(report.read_text())["v_rand"] == 0.9  # untouched by the checks


# -- 4. unfinished training runs -----------------------------------------------------------------------------

def test_nightly_model_choice_passes_over_unfinished_runs(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for i, run in enumerate(["finished", "still-training"]):
        (models / run).mkdir(parents=True)
        ckpt = models / run / "checkpoint-best.pt"
        ckpt.write_bytes(b"x")
        os.utime(ckpt, ns=(time.time_ns() + i * 10**9,) * 2)  # the unfinished run is the newest
    with pytest.raises(StoreNotFoundError, match="unfinished run"):
        newest_best_checkpoint(models)
    mark_run_complete(models / "finished", step=10)
    assert newest_best_checkpoint(models) == str(models / "finished" / "checkpoint-best.pt")
    mark_run_complete(models / "still-training", step=10)
    assert newest_best_checkpoint(models).endswith(os.path.join("still-training", "checkpoint-best.pt"))
    clear_run_complete(models / "still-training")  # resumed: unfinished again
    assert not is_run_complete(models / "still-training")
    assert newest_best_checkpoint(models).endswith(os.path.join("finished", "checkpoint-best.pt"))


def test_augment_refuses_zero_one_labels_with_the_default_interior_before_writing(tmp_path: Path) -> None:
    from storage.workspace import Workspace
    from unet.augment import AugmentConfig
    from unet.augment_stage import AugmentStageConfig, plan_augment

    ws = Workspace(str(tmp_path))
    ingest(_stack(tmp_path / "in" / "img.tif", _image((4, 256, 256))), ws.volume("a"), SMALL)
    ingest(_stack(tmp_path / "in" / "lab.tif", _labels((4, 256, 256), interior=1)), ws.labels("a"), SMALL,
           kind="label")
    with pytest.raises(ValueError, match="pass interior_value=1"):
        plan_augment(ws, "a", "a", "set", AugmentStageConfig(slices="0-3", n_samples=4))
    assert not os.path.exists(ws.dataset("set"))
    cfg = AugmentStageConfig(slices="0-3", n_samples=4, augment=AugmentConfig(interior_value=1))
    assert plan_augment(ws, "a", "a", "set", cfg).decision.action == "create"
