"""storage.demo_data: synthetic TIFF stacks for the demo, tests and inbox."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from storage.demo_data import write_synthetic_stack
from storage.errors import StoreExistsError
from storage.synthetic import SyntheticSpec, generate_volume


def test_writes_image_and_labels_and_refuses_overwrite(tmp_path):
    spec = SyntheticSpec(shape=(3, 32, 40), seed=2)
    image, labels = write_synthetic_stack(tmp_path, spec, stem="s")
    expected = generate_volume(spec)
    assert np.array_equal(tifffile.imread(image), expected.image)
    assert np.array_equal(tifffile.imread(labels), expected.labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif", "s_labels.tif"]
    with pytest.raises(StoreExistsError, match="s.tif"):
        write_synthetic_stack(tmp_path, spec, stem="s")
    image_only, none = write_synthetic_stack(tmp_path, spec, stem="t", with_labels=False)
    assert none is None and image_only.endswith("t.tif")
