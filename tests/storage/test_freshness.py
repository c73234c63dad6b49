"""The one create / reuse / resume / replace / refuse rule (storage.freshness), without files."""

from __future__ import annotations

import pytest

from storage.errors import StoreExistsError
from storage.freshness import decide

EXPECTED = {"params": {"steps": 10}, "source.digest": "sha256:ab"}
DONE = {"complete": True, "params": {"steps": 10}, "source": {"digest": "sha256:ab"}}


def test_no_output_is_created_and_a_current_one_reused():
    assert decide(None, EXPECTED).action == "create"
    d = decide(DONE, EXPECTED)
    assert d.action == "reuse" and not d.runs
    assert decide(DONE, EXPECTED, upstream_ran=True).action == "replace"
    assert decide(DONE, EXPECTED, overwrite=True).action == "replace"


def test_unfinished_with_the_same_inputs_resumes_or_is_redone():
    unfinished = {**DONE, "complete": False}
    assert decide(unfinished, EXPECTED).action == "resume"
    assert decide(unfinished, EXPECTED, resumable=False).action == "replace"


def test_other_inputs_are_refused_with_the_flag_that_fixes_it_unless_the_caller_owns_them():
    stale = {**DONE, "params": {"steps": 20}}
    d = decide(stale, EXPECTED)
    assert d.action == "refuse" and "params differs" in d.reason
    with pytest.raises(StoreExistsError, match=r"out\.zarr exists .*--overwrite"):
        d.check("out.zarr")
    assert decide(stale, EXPECTED, on_stale="replace").action == "replace"
    assert decide({**stale, "complete": False}, EXPECTED, on_stale="replace").action == "replace"
    # tuples and lists compare alike once both went through JSON
    assert decide({**DONE, "params": {"steps": 10, "z": [1, 2]}}, {"params.z": (1, 2)}).action == "reuse"
