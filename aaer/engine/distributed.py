"""Data-parallel training over several processes (torchrun) with DistributedDataParallel.

``torchrun --nproc_per_node N -m aaer train ...`` starts N processes; each builds the same
Trainer, and ``setup_distributed`` turns the torchrun environment (RANK, WORLD_SIZE,
LOCAL_RANK) into a process group: NCCL with one GPU per process on CUDA, gloo on CPU.

Semantics (chosen so that N processes train like one process on the same global batch):
- ``--batch-size`` is the GLOBAL batch, split evenly over the ranks (128 on 4 GPUs =
  32 per GPU), so the learning rate, schedule and steps per epoch of a recipe carry over.
- Each rank takes a disjoint strided share of the same shuffled order (BatchLoader's
  rank/world_size), so the union of the ranks' k-th batches is the single-process k-th batch.
- DDP averages the gradients. Batch statistics that enter the loss (the AAER
  regulariser's m, CEvar, AV, NV) are summed over the global batch with ``batch_sum``.
- BatchNorm stays per-GPU (no SyncBatchNorm), as in standard DDP: each rank normalises
  with its own share's statistics; the running averages are rank 0's (broadcast_buffers).
- Only rank 0 writes to the run directory; per-epoch metrics are reduced over the ranks once.

Shutdown (``shutdown``) cannot deadlock and cannot wait forever. A gloo worker thread that
drops the last reference to a finished collective's tensor needs the GIL; if the main
thread holds the GIL while it destroys the process group (which joins those threads), both
wait for ever. So: wait for every rank's outstanding work (a barrier), drop the DDP wrapper
and its reducer while the process group is still registered (the reducer then never holds
its last reference), collect, and only then destroy the group. The whole teardown runs
under a watchdog (``faulthandler``): if it has not finished within ``shutdown_timeout``
seconds it prints every thread's stack and ends the process. Collectives time out after
``--dist-timeout`` seconds (a rank that died leaves the others waiting no longer).
"""
from __future__ import annotations

import faulthandler
import gc
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from aaer.errors import UsageError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device | None = None
    owns_group: bool = False        # we called init_process_group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer "
                         "(it is set by torchrun)") from None


def setup_distributed(device_name: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join (or create) the process group torchrun describes; a 1-process DistInfo otherwise.

    device_name: auto or cuda (cuda:LOCAL_RANK when CUDA is present, else cpu), or cpu.
    A fixed cuda:N is refused under several processes: they would all share one GPU.
    """
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        owns = False
    else:
        world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
        owns = True
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise UsageError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    local_rank = _env_int("LOCAL_RANK", rank)
    if device_name in ("auto", "cuda"):
        use_cuda = torch.cuda.is_available()
        if device_name == "cuda" and not use_cuda:
            raise UsageError("--device cuda asked for CUDA, but no CUDA device is available; "
                             "use --device cpu or auto")
    elif device_name == "cpu":
        use_cuda = False
    else:
        raise UsageError(f"invalid --device {device_name!r} under torchrun ({world} processes): "
                         "use auto, cuda (one GPU per process, cuda:LOCAL_RANK) or cpu")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} has no GPU: only "
                             f"{torch.cuda.device_count()} visible; lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if owns:
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    else:
        backend = dist.get_backend()
    return DistInfo(rank, world, local_rank, backend, device, owns)


def shutdown(info: DistInfo, release=None, timeout_s: float = 60.0) -> None:
    """Tear the process group down in an order that leaves no work alive (module docstring).

    ``release()`` drops the caller's references to the DDP-wrapped model before the group
    is destroyed. Past ``timeout_s`` seconds the watchdog prints all stacks and exits the
    process with code 1: a finished run's files are written by then.
    """
    if release is not None:
        release()
    if not (info.owns_group and dist.is_available() and dist.is_initialized()):
        gc.collect()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    faulthandler.dump_traceback_later(timeout_s, exit=True)
    try:
        try:
            dist.barrier()
            if info.device is not None and info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
        except RuntimeError:           # another rank is gone: nothing left to wait for
            pass
        gc.collect()                   # the reducer and its buckets go while the group lives
        dist.destroy_process_group()
        gc.collect()
    finally:
        faulthandler.cancel_dump_traceback_later()


@dataclass
class Shard:
    """This process's share of an evaluation: batch k is its own when k % world_size ==
    rank; ``gather(obj)`` returns every process's obj, in rank order."""

    rank: int = 0
    world_size: int = 1

    def gather(self, obj):
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def owns(self, k: int) -> bool:
        return k % self.world_size == self.rank


def shard_of(info: DistInfo) -> Shard:
    return Shard(info.rank, info.world_size)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Every process takes rank 0's buffers (BatchNorm statistics), so that evaluating the
    model in eval mode gives the same numbers on every process."""
    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise UsageError(f"--batch-size {global_batch} (the global batch) does not split evenly "
                         f"over {world_size} processes; use a multiple of {world_size}, e.g. "
                         f"{max(world_size, global_batch // world_size * world_size)}")
    return global_batch // world_size


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP
    if info.device is not None and info.device.type == "cuda":
        return DDP(model, device_ids=[info.device.index], output_device=info.device.index)
    return DDP(model)


class _GlobalSum(torch.autograd.Function):
    """Sum over all ranks, differentiable for a loss term every rank computes identically.

    Rank r's loss is f(S) + (its own terms) with S = sum_q s_q the same on every rank, so the
    exact backward of the all-reduce, sum_q df/dS, is world_size * df/dS, computed locally.
    DDP then averages over ranks: mean_r(world_size * df/dS * ds_r/dw) = df/dS * dS/dw.
    """

    @staticmethod
    def forward(ctx, t):
        out = t.detach().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad * dist.get_world_size()


def batch_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of a per-rank batch statistic over the global batch (see ``_GlobalSum``)."""
    return _GlobalSum.apply(t)


def reduce_sums(values: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Sum a dict of scalars over the ranks with one all-reduce (once per epoch)."""
    keys = sorted(values)
    if not keys:
        return {}
    flat = torch.stack([torch.as_tensor(values[k], device=device).detach().double().reshape(())
                        for k in keys])
    dist.all_reduce(flat)
    return dict(zip(keys, flat.unbind()))


def reseed_for_rank(seed: int, info: DistInfo) -> None:
    """Distinct noise per rank: ranks > 0 re-seed after the (shared) model initialisation."""
    if info.rank > 0:
        torch.manual_seed(seed + 1_000_003 * info.rank)


def any_rank(flag: bool, device) -> bool:
    """True on every process when ``flag`` is True on any (one all-reduce): the processes
    agree on a divergence that one of them saw."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order (on every process)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(index: torch.Tensor, values: torch.Tensor):
    """(index, values) of every process's batch, concatenated in rank order: the rows
    written to a per-example memory, so that each process's copy stays the whole memory.
    Every rank's batch has the same size (the loader pads the global order)."""
    world = dist.get_world_size()
    idx = [torch.empty_like(index) for _ in range(world)]
    val = [torch.empty_like(values) for _ in range(world)]
    dist.all_gather(idx, index.contiguous())
    dist.all_gather(val, values.contiguous())
    return torch.cat(idx), torch.cat(val)
