"""storage.inbox: stable-file scan, stack names, the processed ledger, newest checkpoint."""

from __future__ import annotations

import json
import os
import time

import pytest

from storage.errors import StoreNotFoundError
from storage.inbox import ProcessedLedger, newest_best_checkpoint, scan_stable, stack_name


def test_scan_takes_only_files_that_stopped_changing(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"done")
    (tmp_path / "a_labels.tif").write_bytes(b"labels")
    (tmp_path / "b.TIFF").write_bytes(b"done too")
    (tmp_path / "copying.tif").write_bytes(b"part")
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    (tmp_path / "orphan_labels.tif").write_bytes(b"labels whose stack is gone")

    def copy_goes_on(seconds: float) -> None:  # a copy still in progress during the settle interval
        with open(tmp_path / "copying.tif", "ab") as f:
            f.write(b"more")

    stacks, changing = scan_stable(tmp_path, 1.0, sleep=copy_goes_on)
    assert [os.path.basename(s.path) for s in stacks] == ["a.tif", "b.TIFF"]
    assert stacks[0].labels == str(tmp_path / "a_labels.tif") and stacks[1].labels is None
    assert sorted(os.path.basename(p) for p in changing) == ["copying.tif", "empty.tif"]


def test_scan_refuses_missing_inbox(tmp_path):
    with pytest.raises(StoreNotFoundError, match="nowhere"):
        scan_stable(tmp_path / "nowhere", 0)


def test_stack_name_is_safe_and_keyed_by_content():
    name = stack_name("/in/My Stack (1).ome.tif", "sha256:0123456789abcdef")
    assert name == "My-Stack-1-01234567"


def test_ledger_persists_atomically(tmp_path):
    ledger = ProcessedLedger.in_workspace(tmp_path)
    assert ledger.get("sha256:x") is None
    ledger.record("sha256:x", name="a", status="done")
    again = ProcessedLedger.in_workspace(tmp_path)
    assert again.get("sha256:x")["status"] == "done"
    data = json.loads((tmp_path / "nightly" / "processed.json").read_text())
    assert list(data["stacks"]) == ["sha256:x"]
    assert [p for p in os.listdir(tmp_path / "nightly") if p.endswith(".tmp")] == []
    (tmp_path / "nightly" / "processed.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an emseg inbox ledger"):
        ProcessedLedger.in_workspace(tmp_path)


def test_newest_best_checkpoint(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no finished training run"):
        newest_best_checkpoint(tmp_path / "models")
    for i, run in enumerate(["b-old", "a-new"]):
        os.makedirs(tmp_path / "models" / run)
        ckpt = tmp_path / "models" / run / "checkpoint-best.pt"
        ckpt.write_bytes(b"x")
        os.utime(ckpt, ns=(time.time_ns() + i * 10**9,) * 2)
        (tmp_path / "models" / run / "complete.json").write_text("{}")  # training finished
    os.makedirs(tmp_path / "models" / "unfinished")
    assert newest_best_checkpoint(tmp_path / "models").endswith(os.path.join("a-new", "checkpoint-best.pt"))
