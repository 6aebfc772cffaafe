"""The built-in shapes set: ships in resources/, < 2 MB, loads at any size, matches its generator."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_studio.config import DataConfig
from ddpm_studio.data import Cancelled, load_images
from ddpm_studio.data import builtin


def test_builtin_files_are_small():
    files = [p for p in builtin.builtin_dir().iterdir() if p.is_file()]
    assert {p.name for p in files} >= {builtin.SHEET_NAME, builtin.INDEX_NAME}
    assert sum(p.stat().st_size for p in files) < 2 * 1024 * 1024


@pytest.mark.parametrize("size", [8, 32])
def test_builtin_loads_at_requested_size(size):
    s = load_images(DataConfig(folder=None, image_size=size))
    assert s.source == "built-in" and s.channels == 3
    assert s.images.shape == (builtin.COUNT, size, size, 3) and s.images.dtype == np.uint8
    assert len(s.paths) == builtin.COUNT and s.fingerprint
    assert s.images.std() > 30  # not blank: strong shapes on calm backgrounds


def test_builtin_greyscale_and_fingerprint_depends_on_settings():
    g = load_images(DataConfig(folder=None, image_size=16, channels="1"))
    c = load_images(DataConfig(folder=None, image_size=16))
    assert g.images.shape[3] == 1 and g.fingerprint != c.fingerprint


def test_stored_set_matches_the_generator():
    s = load_images(DataConfig(folder=None, image_size=32))
    fresh, labels = builtin.generate(24)
    np.testing.assert_array_equal(s.images[:24], fresh)
    assert [p.split("-")[-1] for p in s.paths[:24]] == [builtin.SHAPES[k] for k in labels]
    assert set(labels) == set(range(len(builtin.SHAPES)))  # every shape appears early on


def test_builtin_cancel():
    with pytest.raises(Cancelled):
        load_images(DataConfig(folder=None, image_size=16), should_stop=lambda: True)
