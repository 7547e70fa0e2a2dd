"""Tests of aaer.data.BatchLoader: order reproducible per (seed, epoch), every example
exactly once per epoch, crops/flips equal to a manual shift of the image, exact resume
from state_dict, and disjoint covering shares for DDP ranks."""

import math

import pytest
import torch

from aaer.data import BatchLoader


def _data(n, c=3, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    return x, torch.arange(n)


def _collect(loader):
    return [(xb.clone(), yb.clone()) for xb, yb in loader]


def test_every_example_once_and_last_partial_batch_kept():
    x, y = _data(103)
    loader = BatchLoader(x, y, 10, shuffle=True, seed=3)
    assert len(loader) == 11
    batches = _collect(loader)
    assert [len(b[1]) for b in batches] == [10] * 10 + [3]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(103))
    assert seen.tolist() != list(range(103))  # shuffled
    for xb, yb in batches:  # no augmentation: exactly the stored pixels / 255
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(xb, x[yb].float() / 255)
    dropped = BatchLoader(x, y, 10, shuffle=True, seed=3, drop_last=True)
    assert len(dropped) == 10 and [len(b[1]) for b in _collect(dropped)] == [10] * 10


def test_order_is_a_function_of_seed_and_epoch():
    x, y = _data(50)

    def order(seed, epoch):
        loader = BatchLoader(x, y, 7, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([yb for _, yb in loader]).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 1) == order(0, 1)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    plain = BatchLoader(x, y, 7, shuffle=False)
    assert torch.cat([yb for _, yb in plain]).tolist() == list(range(50))
    # epochs advance by themselves when a loop never calls set_epoch
    auto = BatchLoader(x, y, 7, shuffle=True, seed=0)
    first, second = [torch.cat([yb for _, yb in auto]).tolist() for _ in range(2)]
    assert first == order(0, 0) and second == order(0, 1) and auto.epoch == 2


def _manual_crop(img, dy, dx, pad, flipped):
    """img shifted so that output[i, j] = img[i + dy - pad, j + dx - pad], zero outside."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    i0, i1 = max(0, pad - dy), min(h, h + pad - dy)  # output rows whose source row exists
    j0, j1 = max(0, pad - dx), min(w, w + pad - dx)
    out[:, i0:i1, j0:j1] = img[:, i0 + dy - pad:i1 + dy - pad, j0 + dx - pad:j1 + dx - pad]
    return out.flip(2) if flipped else out


def test_crop_and_flip_are_manual_shifts_with_all_offsets_used():
    pad = 2
    x, y = _data(400, c=2, h=5, w=7, seed=1)
    loader = BatchLoader(x, y, 64, shuffle=True, pad=pad, flip=True, seed=11)
    found = set()
    flips = 0
    for xb, yb in loader:
        for k in range(len(yb)):
            img, out = x[yb[k]], xb[k] * 255
            assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255
            matches = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                       for f in (False, True)
                       if torch.equal(out.to(torch.uint8), _manual_crop(img, dy, dx, pad, f))]
            assert len(matches) == 1, matches  # random pixels: exactly one shift explains it
            found.add(matches[0][:2])
            flips += matches[0][2]
    assert found == {(dy, dx) for dy in range(5) for dx in range(5)}
    assert 160 < flips < 240  # about half of 400
    # the reference shift itself, on a known case: offset (0, 0) puts `pad` zero rows on top
    ramp = torch.arange(1, 36, dtype=torch.uint8).reshape(1, 5, 7)
    shifted = _manual_crop(ramp, 0, 0, pad, False)
    assert shifted[0, :2].sum() == 0 and shifted[0, :, :2].sum() == 0
    assert torch.equal(shifted[0, 2:, 2:], ramp[0, :3, :5])


def test_flip_without_padding_and_reproducible_augmentation():
    x, y = _data(64, h=4, w=4)
    loader = BatchLoader(x, y, 64, shuffle=False, flip=True, seed=2)
    (xb, yb), = _collect(loader)
    flipped = torch.tensor([torch.equal(xb[k], x[k].flip(2).float() / 255) for k in range(64)])
    same = torch.tensor([torch.equal(xb[k], x[k].float() / 255) for k in range(64)])
    assert bool((flipped | same).all()) and 16 < int(flipped.sum()) < 48
    again = BatchLoader(x, y, 64, shuffle=False, flip=True, seed=2)
    assert torch.equal(_collect(again)[0][0], xb)


def test_state_dict_resume_replays_the_remaining_batches():
    x, y = _data(95)
    kw = dict(shuffle=True, pad=1, flip=True, seed=5)
    ref = BatchLoader(x, y, 10, **kw)
    ref.set_epoch(4)
    full = _collect(ref)
    run = BatchLoader(x, y, 10, **kw)
    run.set_epoch(4)
    for k, (xb, yb) in enumerate(run):
        if k == 2:
            state = run.state_dict()
            break
    assert state["epoch"] == 4 and state["position"] == 3
    resumed = BatchLoader(x, y, 10, **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the usual `for epoch ...: set_epoch(epoch)` keeps the restored spot
    rest = _collect(resumed)
    assert len(rest) == len(full) - 3
    for (a, ya), (b, yb) in zip(rest, full[3:]):
        assert torch.equal(ya, yb) and torch.equal(a, b)
    assert resumed.state_dict()["epoch"] == 5 and resumed.state_dict()["position"] == 0
    # without a restore, set_epoch starts the epoch over (after an early break too)
    run.set_epoch(4)
    assert torch.equal(_collect(run)[0][1], full[0][1])
    # a checkpoint taken during the last batch resumes into the next epoch
    late = BatchLoader(x, y, 10, **kw)
    late.load_state_dict({"epoch": 4, "position": len(late)})
    late.set_epoch(4)
    assert _collect(late) == [] and late.state_dict()["epoch"] == 5
    ref.set_epoch(5)
    assert torch.equal(torch.cat([b for _, b in _collect(late)]),
                       torch.cat([b for _, b in _collect(ref)]))


def test_state_dict_from_another_setup_is_refused():
    x, y = _data(30)
    a = BatchLoader(x, y, 4, shuffle=True, seed=1)
    with pytest.raises(ValueError, match="batch_size=4 but this loader has batch_size=5"):
        BatchLoader(x, y, 5, shuffle=True, seed=1).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="position 99 is outside 0..8"):
        a.load_state_dict({"epoch": 0, "position": 99})


@pytest.mark.parametrize("n", [100, 101, 7])
def test_ranks_take_disjoint_covering_equal_shares(n):
    x, y = _data(n)
    ws, bs = 3, 8
    shares = []
    for rank in range(ws):
        loader = BatchLoader(x, y, bs, shuffle=True, seed=9, rank=rank, world_size=ws)
        loader.set_epoch(2)
        shares.append(torch.cat([yb for _, yb in loader]).tolist())
        assert len(loader) == math.ceil(math.ceil(n / ws) / bs)
    per = math.ceil(n / ws)
    assert all(len(s) == per for s in shares)
    everything = sum(shares, [])
    assert set(everything) == set(range(n))
    assert len(everything) - len(set(everything)) == per * ws - n  # only the wrap-around pad
    if n % ws == 0:
        assert len(set(everything)) == len(everything)
    one = BatchLoader(x, y, bs, shuffle=True, seed=9)
    one.set_epoch(2)
    glob = torch.cat([yb for _, yb in one]).tolist()
    assert shares[1] == (glob + glob)[1:per * ws:ws]  # strided slices of one global order


def test_bad_arguments_are_named():
    x, y = _data(10)
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(x, y, 4, shuffle=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(x, y, 0, shuffle=True)
    with pytest.raises(ValueError, match="N = 10"):
        BatchLoader(x, y[:5], 4, shuffle=True)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        BatchLoader(x[:, 0], y, 4, shuffle=True)


def test_uint8_to_unit_is_true_division_by_255():
    # the table is what makes CUDA batches equal CPU batches (CUDA divides by a scalar
    # as a multiplication by its reciprocal); it must equal true division exactly
    from aaer.data.loader import _U8_TO_UNIT
    v = torch.arange(256, dtype=torch.uint8)
    exact = torch.tensor([i / 255 for i in range(256)], dtype=torch.float64).float()
    assert torch.equal(_U8_TO_UNIT, exact)
    loader = BatchLoader(v.view(256, 1, 1, 1), torch.zeros(256, dtype=torch.long), 256,
                         shuffle=False)
    xb, _ = next(iter(loader))
    assert torch.equal(xb.flatten(), exact)
