"""The default train/validation split and its checks against a stack's depth (issue 14)."""

from __future__ import annotations

import pytest

from unet.split import SliceSplit, default_split, parse_slices, resolve_split


@pytest.mark.parametrize("n, train, val", [
    (30, "0-19", "20-29"),  # ISBI 2012: the benchmark's split
    (16, "0-10", "11-15"),
    (8, "0-4", "5-7"),
    (3, "0-1", "2-2"),
    (2, "0-0", "1-1"),
])
def test_default_split_is_proportional_and_covers_the_stack(n, train, val):
    split = default_split(n)
    assert split == SliceSplit(train, val)
    assert sorted(parse_slices(split.train, n) + parse_slices(split.val, n)) == list(range(n))


@pytest.mark.parametrize("n", [0, 1])
def test_too_small_a_stack_is_refused_with_its_depth(n):
    with pytest.raises(ValueError, match=f"the stack has {n} slice"):
        default_split(n)


def test_resolve_fills_blanks_and_checks_given_selections_against_the_depth():
    assert resolve_split(16) == SliceSplit("0-10", "11-15")
    assert resolve_split(16, "0-7") == SliceSplit("0-7", "11-15")
    assert resolve_split(16, "", "14-15") == SliceSplit("0-10", "14-15")
    assert resolve_split(30, "0-19", "20-29") == SliceSplit("0-19", "20-29")
    with pytest.raises(ValueError, match="train_slices.*out of range: the volume has 16 slices"):
        resolve_split(16, "0-19", "20-29")
    with pytest.raises(ValueError, match="val_slices '12-20' is out of range: the volume has 16"):
        resolve_split(16, "0-5", "12-20")
    with pytest.raises(ValueError, match="overlap"):
        resolve_split(16, "0-12")  # the default validation part starts at 11
