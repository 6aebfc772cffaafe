"""Batches: uint8 in, float [-1, 1] out; the batch of step k depends only on (seed, k); DDP shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_studio.data import ImageDataset, ImageSet, make_loader


def _set(n: int = 20, size: int = 4, c: int = 3) -> ImageSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, c), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # each image identifiable by its top-left value... unless flipped
    images[:, 0, -1, 0] = np.arange(n)  # ...so mirror it on the top-right too
    return ImageSet(images=images, paths=[str(i) for i in range(n)], channels=c, image_size=size)


def _ids(batch: torch.Tensor) -> list[int]:
    return [int(round(v)) for v in ((batch[:, 0, 0, 0] + 1) * 127.5).tolist()]


def test_dataset_items_are_float_chw_in_range():
    s = _set(c=1)
    ds = ImageDataset(s, flip=False)
    x = ds[3]
    assert len(ds) == 20 and x.shape == (1, 4, 4) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_allclose(x.numpy()[0], s.images[3, :, :, 0] / 127.5 - 1, atol=1e-6)


def test_batch_depends_only_on_seed_and_step():
    s = _set()
    a = make_loader(s, 8, flip=True, seed=3)
    b = make_loader(s, 8, flip=True, seed=3)
    for k in (0, 1, 7, 2, 7):  # any order of asking
        assert torch.equal(a.batch(k), b.batch(k))
    assert not torch.equal(a.batch(0), make_loader(s, 8, flip=True, seed=4).batch(0))
    # Resume: starting at step 5 yields exactly steps 5, 6, 7 of an uninterrupted run.
    it = make_loader(s, 8, flip=True, seed=3).batches(start_step=5)
    whole = make_loader(s, 8, flip=True, seed=3).batches()
    uninterrupted = [next(whole) for _ in range(8)]
    for k in range(5, 8):
        assert torch.equal(next(it), uninterrupted[k])


def test_each_epoch_visits_every_image_once_and_flips_about_half():
    s = _set(n=20)
    loader = make_loader(s, 4, flip=True, seed=0)
    ids = [i for k in range(5) for i in _ids(loader.batch(k))]  # steps 0-4 = epoch 0
    assert sorted(ids) == list(range(20))
    assert ids != list(range(20))  # shuffled
    flips = np.concatenate([loader.indices(k)[1] for k in range(50)])
    assert 0.35 < flips.mean() < 0.65
    idx, fl = loader.indices(0)
    x = loader.batch(0)
    for j in range(4):
        want = s.images[idx[j]][:, ::-1] if fl[j] else s.images[idx[j]]
        np.testing.assert_allclose(x[j].permute(1, 2, 0).numpy(), want / 127.5 - 1, atol=1e-6)
    assert not make_loader(s, 4, flip=False, seed=0).indices(3)[1].any()


def test_ranks_get_disjoint_slices_of_the_global_batch():
    s = _set(n=20)
    single = make_loader(s, 10, flip=True, seed=1)
    for k in (0, 3):
        parts = [make_loader(s, 10, flip=True, seed=1, rank=r, world_size=3).batch(k) for r in range(3)]
        assert [p.shape[0] for p in parts] == [4, 3, 3]
        assert torch.equal(torch.cat(parts), single.batch(k))


def test_batch_larger_than_the_set_and_bad_arguments():
    s = _set(n=3)
    x = make_loader(s, 7, flip=False, seed=0).batch(2)
    assert x.shape == (7, 3, 4, 4) and x.is_contiguous() and x.dtype == torch.float32
    assert make_loader(s, 4, flip=False, seed=0, epoch_offset=1).batch(0).shape[0] == 4
    with pytest.raises(ValueError, match="rank"):
        make_loader(s, 4, flip=False, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(s, 1, flip=False, seed=0, world_size=2)
