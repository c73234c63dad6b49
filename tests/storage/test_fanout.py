"""storage.fanout.fan_out: results in unit order, progress after each unit, shared arguments once."""

from __future__ import annotations

import pytest

from storage.fanout import fan_out


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_results_in_order_with_progress(scheduler):
    seen: list[tuple[int, int]] = []
    out = fan_out(lambda base, u: base + u, [1, 2, 3, 4], shared=(10,), scheduler=scheduler, num_workers=2,
                  progress=lambda d, t: seen.append((d, t)), done=2, total=6)
    assert out == [11, 12, 13, 14]
    assert seen[0] == (2, 6) and seen[-1] == (6, 6) and len(seen) == 5
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_weights_count_what_each_unit_did_and_nothing_to_do_reports_once():
    seen: list[tuple[int, int]] = []
    fan_out(len, [[1, 2], [3], [4, 5, 6]], progress=lambda d, t: seen.append((d, t)), weight=lambda n: n,
            total=6)
    assert seen[-1] == (6, 6)
    seen.clear()
    assert fan_out(len, [], progress=lambda d, t: seen.append((d, t)), done=3, total=3) == []
    assert seen == [(3, 3)]


@pytest.mark.slow
def test_a_distributed_cluster_runs_the_same_units():
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        seen: list[int] = []
        out = fan_out(pow, [1, 2, 3], shared=(2,), client=c, progress=lambda d, t: seen.append(d))
    assert out == [2, 4, 8] and seen[-1] == 3
