"""storage.provenance: content digests and the "is this output current?" check."""

from __future__ import annotations

import os

import numpy as np
import pytest

from storage.errors import StoreNotFoundError
from storage.files import write_json
from storage.provenance import (
    check_current,
    content_digest,
    file_digest,
    is_current,
    params_digest,
    read_record,
)
from storage.volume import create_volume


def test_file_digest_follows_bytes_not_name(tmp_path):
    a, b, c = tmp_path / "a.tif", tmp_path / "renamed.tif", tmp_path / "c.tif"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"x" * 100)
    c.write_bytes(b"x" * 99 + b"y")
    assert file_digest(a) == file_digest(b)
    assert file_digest(a) != file_digest(c)
    assert file_digest(a).startswith("sha256:")


def test_folder_digest_sees_names_and_bytes(tmp_path):
    d = tmp_path / "slices"
    d.mkdir()
    (d / "0.tif").write_bytes(b"a")
    (d / "1.tif").write_bytes(b"b")
    first = content_digest(d)
    (d / "1.tif").rename(d / "2.tif")
    assert content_digest(d) != first
    with pytest.raises(StoreNotFoundError, match="missing"):
        content_digest(tmp_path / "missing")


def test_params_digest_ignores_key_order():
    assert params_digest({"a": 1, "b": [1, 2]}) == params_digest({"b": [1, 2], "a": 1})
    assert params_digest({"a": 1}) != params_digest({"a": 2})


def test_check_current_reasons():
    expected = {"config": {"steps": 10, "lr": 1e-3}, "source_digest": "sha256:ab"}
    assert not check_current(None, expected).exists
    incomplete = check_current({"complete": False, **expected}, expected)
    assert not incomplete.current and incomplete.exists and "incomplete" in incomplete.reason
    done = {"complete": True, "config": {"lr": 1e-3, "steps": 10}, "source_digest": "sha256:ab", "x": 1}
    assert check_current(done, expected).current
    changed = check_current({**done, "config": {"steps": 11, "lr": 1e-3}}, expected)
    assert not changed.current and "config differs" in changed.reason
    missing = check_current({"complete": True, "config": expected["config"]}, expected)
    assert not missing.current and "source_digest" in missing.reason
    # dotted keys reach into nested records; tuples compare equal to lists
    assert check_current({"complete": True, "cfg": {"shape": [1, 2]}}, {"cfg.shape": (1, 2)}).current


def test_records_of_zarr_store_and_folder(tmp_path):
    path = tmp_path / "volumes" / "v.zarr"
    writer = create_volume(path, (2, 8, 8), np.uint8, (40, 4, 4), attrs={"source_digest": "sha256:1"})
    assert not is_current(path, {"source_digest": "sha256:1"}).current
    writer.mark_complete()
    assert is_current(path, {"source_digest": "sha256:1"}).current
    assert not is_current(path, {"source_digest": "sha256:2"}).current

    run = tmp_path / "models" / "r1"
    assert read_record(run) is None
    os.makedirs(run)
    assert read_record(run) is None
    write_json(run / "config.json", {"train": {"steps": 5}})
    assert is_current(run, {"train.steps": 5}).current
    write_json(run / "config.json", {"train": {"steps": 5}, "complete": False})
    assert not is_current(run, {"train.steps": 5}).current


def test_memo_digest_rehashes_only_changed_files(tmp_path, monkeypatch):
    from storage import provenance

    f, memo = tmp_path / "stack.tif", tmp_path / "memo" / "digests.json"
    f.write_bytes(b"slices")
    calls = []
    real = provenance.content_digest
    monkeypatch.setattr(provenance, "content_digest", lambda p: calls.append(p) or real(p))

    first = provenance.memo_content_digest(f, memo)
    assert first == provenance.file_digest(f) and len(calls) == 1
    assert provenance.memo_content_digest(f, memo) == first and len(calls) == 1  # remembered

    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # copied in again: same bytes
    assert provenance.memo_content_digest(f, memo) == first and len(calls) == 2

    f.write_bytes(b"other slices")
    assert provenance.memo_content_digest(f, memo) != first and len(calls) == 3
    with pytest.raises(StoreNotFoundError, match="no file or folder"):
        provenance.memo_content_digest(tmp_path / "missing.tif", memo)
