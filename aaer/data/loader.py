"""Mini-batches from uint8 image tensors, with the standard augmentation done on the device.

The images stay uint8 (on the GPU when they fit, else in pinned host memory); each batch is
gathered, random-cropped with zero padding and randomly flipped in one vectorised indexing
op, then returned as float32 in [0, 1]. Every random choice of an epoch (order, crop
offsets, flips) is drawn up front from a CPU generator seeded by (seed, epoch), so an epoch
is reproducible on any device and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from aaer.errors import UsageError


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"aaer-batches:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


_U8_TO_UNIT = torch.arange(256, dtype=torch.float32).div_(255)


class LoaderPosition:
    """Where a loader is in its run: the epoch and the batches already yielded in it, saved
    and restored with the settings that fix the batch order (seed, shuffle, batch size,
    examples, world size), so a resumed loader replays exactly the remaining batches."""

    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        if not (self._resume_epoch == epoch and self.epoch == epoch):
            self.position = 0
        self.epoch = epoch
        self._resume_epoch = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "shuffle": self.shuffle, "batch_size": self.batch_size,
                "num_examples": self.num_examples, "world_size": self.world_size}

    def load_state_dict(self, d: dict) -> None:
        for key in ("seed", "shuffle", "batch_size", "num_examples", "world_size"):
            if key in d and d[key] != getattr(self, key):
                raise UsageError(f"loader state has {key}={d[key]!r} but this loader has "
                                 f"{key}={getattr(self, key)!r}: resuming would not replay the "
                                 "same batches")
        position = int(d["position"])
        if not 0 <= position <= len(self):
            raise UsageError(f"loader state position {position} is outside 0..{len(self)}")
        self.epoch, self.position = int(d["epoch"]), position
        self._resume_epoch = self.epoch


class BatchLoader(LoaderPosition):
    """Iterate (x float32 [B, C, H, W] in [0, 1], y int64 [B]) on `device`.

    Each epoch's order is a permutation seeded by (seed, epoch) (identity when shuffle is
    False). With world_size > 1, every rank takes a disjoint strided share of the same global
    order, padded by wrapping around (as DistributedSampler does) so all ranks yield the same
    number of batches of `batch_size` each. The last partial batch is kept unless drop_last.

    Position: iteration resumes at `self.position` (batches already yielded this epoch) and,
    when an epoch is exhausted, moves on to the next epoch. `set_epoch(e)` starts epoch e from
    its first batch, except right after `load_state_dict` of a state inside epoch e, where
    it keeps the restored position (so `load_state_dict` then `set_epoch` resumes correctly).
    An iteration abandoned early (break) stays where it stopped until set_epoch is called.
    """

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                 pad: int = 0, flip: bool = False, device="cpu", seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1):
        if x_uint8.ndim != 4:
            raise ValueError(f"x must be images [N, C, H, W], got shape {tuple(x_uint8.shape)}")
        if y.ndim != 1 or len(y) != len(x_uint8):
            raise ValueError(f"y must be labels [N] with N = {len(x_uint8)}, got shape {tuple(y.shape)}")
        if len(y) == 0:
            raise ValueError("cannot batch an empty data set (0 examples)")
        if int(batch_size) < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if int(pad) < 0:
            raise UsageError(f"pad must be >= 0, got {pad}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.batch_size, self.pad, self.flip = int(batch_size), int(pad), bool(flip)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.num_examples = len(y)
        self.share = math.ceil(self.num_examples / self.world_size)
        if self.drop_last and self.share < self.batch_size:
            raise UsageError(f"drop_last with batch_size {batch_size} leaves no batch: each rank "
                             f"has only {self.share} examples")
        self._luts: dict = {}
        self.x, self.y, self.on_device = self._place(x_uint8, y.long())
        self.epoch, self.position = 0, 0
        self._resume_epoch = None

    def _place(self, x: torch.Tensor, y: torch.Tensor):
        if self.device.type == "cpu":
            return x.cpu(), y.cpu(), True
        if x.device == self.device:
            return x, y.to(self.device), True
        fits = True
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            fits = x.numel() * x.element_size() < free // 2  # leave room for the model
        if fits:
            try:
                return x.to(self.device), y.to(self.device), True
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
        x = x.cpu()
        try:
            x = x.pin_memory()
        except RuntimeError:
            pass
        return x, y.cpu(), False

    def __len__(self) -> int:
        if self.drop_last:
            return self.share // self.batch_size
        return math.ceil(self.share / self.batch_size)

    def _plan(self):
        """This rank's example indices and augmentation draws for the current epoch."""
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        n, total = self.num_examples, self.share * self.world_size
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if total > n:
            order = order.repeat(math.ceil(total / n))[:total]
        k = 2 * self.pad + 1
        offsets = torch.randint(0, k, (2, total), generator=g) if self.pad else None
        flips = torch.rand(total, generator=g) < 0.5 if self.flip else None
        mine = slice(self.rank, None, self.world_size)
        idx = order[mine].to(self.x.device)
        aug_device = self.device
        if offsets is not None:
            offsets = offsets[:, mine].to(aug_device)
        if flips is not None:
            flips = flips[mine].to(aug_device)
        return idx, offsets, flips

    def _augment(self, xb: torch.Tensor, offsets, flips) -> torch.Tensor:
        B, C, H, W = xb.shape
        if self.pad:
            # out[b, :, i, j] = padded[b, :, oy_b + i, ox_b + j] (j mirrored when flipped),
            # one gather over the flattened padded image
            p = self.pad
            xp = F.pad(xb, (p, p, p, p)).reshape(B, C, -1)
            rows = offsets[0, :, None] + torch.arange(H, device=xb.device)
            cols = offsets[1, :, None] + torch.arange(W, device=xb.device)
            if flips is not None:
                cols = torch.where(flips[:, None], cols.flip(1), cols)
            flat = rows[:, :, None] * (W + 2 * p) + cols[:, None, :]
            xb = torch.gather(xp, 2, flat.reshape(B, 1, H * W).expand(B, C, H * W))
            xb = xb.reshape(B, C, H, W)
        elif flips is not None:
            xb = torch.where(flips[:, None, None, None], xb.flip(3), xb)
        return self._to_unit(xb) if xb.dtype == torch.uint8 else xb.float()

    def _to_unit(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] through a table of v / 255 computed on the CPU.

        CUDA divides by a scalar as a multiplication by its reciprocal, which differs from
        true division in the last bit for some values; the table gives every device the
        CPU's (and torchvision's ToTensor's) exact values.
        """
        lut = self._luts.get(xb.device)
        if lut is None:
            lut = self._luts[xb.device] = _U8_TO_UNIT.to(xb.device)
        return lut[xb.long()]

    def __iter__(self):
        for xb, yb, _ in self.indexed():
            yield xb, yb

    def indexed(self):
        """Iterate (x, y, index): ``index`` holds each example's position in the training
        set (a long tensor on the batch's device), what per-example state is keyed by."""
        idx, offsets, flips = self._plan()
        while self.position < len(self):
            s = slice(self.position * self.batch_size,
                      min((self.position + 1) * self.batch_size, self.share))
            bi = idx[s]
            xb, yb = self.x.index_select(0, bi), self.y.index_select(0, bi)
            if not self.on_device:  # host-resident data: pinned copies overlap with compute
                if self.device.type == "cuda":
                    xb, yb = xb.pin_memory(), yb.pin_memory()
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
            xb = self._augment(xb, None if offsets is None else offsets[:, s],
                               None if flips is None else flips[s])
            self.position += 1
            yield xb, yb, bi.to(self.device, non_blocking=True)
        self.epoch += 1
        self.position = 0
        self._resume_epoch = None
