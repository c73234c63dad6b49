"""exactmath: within a few ulp of numpy, with defined edge values."""

from __future__ import annotations

import numpy as np
import pytest

from unet import exactmath


def test_exp_log_power_match_numpy() -> None:
    x = np.concatenate([np.linspace(-745.0, 709.0, 20001), np.random.default_rng(0).uniform(-30, 5, 10000)])
    ref = np.exp(x)
    assert np.all(np.abs(exactmath.exp(x) - ref) <= 4e-16 * ref)
    y = np.geomspace(1e-300, 1e300, 20001)
    assert np.allclose(exactmath.log(y), np.log(y), rtol=1e-15, atol=2e-13)
    grey = np.arange(256) / 255.0
    assert np.allclose(exactmath.power(grey, 1.2), grey**1.2, rtol=1e-14, atol=0)
    assert exactmath.exp(-np.inf) == 0.0 and exactmath.exp(0.0) == 1.0 and exactmath.log(1.0) == 0.0
    with pytest.raises(ValueError):
        exactmath.log(0.0)
