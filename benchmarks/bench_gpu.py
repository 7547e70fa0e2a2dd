"""Training throughput on a GPU: the reference loop vs aaer's step, precision, memory format
and the GPU-resident loader, on random CIFAR-shaped data (no data set needed).

Configurations (RS-AAER, PreActResNet18, batch 128 by default):
- reference: SPEC §2's loop (benchmarks/bench_train_step.py's ReferenceLoop) in fp32, fed
  like the reference, by a DataLoader with per-image CPU crop/flip and 2 workers;
- aaer's Trainer.train_step fed by the same DataLoader, then by the GPU-resident
  BatchLoader, in fp32 / bf16 / fp16, contiguous (NCHW) or channels_last (NHWC);
- with --compile, also torch.compile (the first steps pay the compilation).
Each configuration runs warm-up steps, then times --steps steps end to end (data included)
and reports images per second. A host-sync check runs aaer's step under
torch.cuda.set_sync_debug_mode("error").

    python benchmarks/bench_gpu.py                      # needs CUDA; < 5 min on one H100
    python benchmarks/bench_gpu.py --device cpu --tiny  # smoke test of every code path

Last line: ``gpu_bench_speedup: <best aaer images/s / reference images/s>``.

Two more modes (issue 30), each instead of the table above, each with ``--json FILE``:

- ``--step-matrix``: images/s of one run's step for fp32 / bf16 x eager / CUDA graphs
  (``--compile --compile-mode reduce-overhead``; refused on a CPU, which is recorded), with
  the first step's loss of each beside eager fp32's (same weights, batch and noise);
- ``--packing 1,2,4,8``: K processes, each one run's Trainer on its own random data, time
  the same number of steps at once after a common start (a barrier after their warm-up);
  aggregate images/s = all images / (last end - first start). Last line
  ``gpu_packing_gain: <best aggregate / K=1>``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import make_trainer, reference_for, sync  # noqa: E402


class PerImageCrops(torch.utils.data.Dataset):
    """The reference's input pipeline: one image at a time on the CPU, random crop with zero
    padding and horizontal flip, then to float in [0, 1] (normalisation is in the model)."""

    def __init__(self, x_uint8, y, pad=4):
        self.x, self.y, self.pad = x_uint8, y, pad

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img, p = self.x[i], self.pad
        _, h, w = img.shape
        padded = F.pad(img, (p, p, p, p))
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = padded[:, top:top + h, left:left + w]
        if torch.rand(()) < 0.5:
            img = img.flip(2)
        return img.float().div(255), self.y[i]


def device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def reference_batches(x_uint8, y, batch_size, device, workers):
    loader = torch.utils.data.DataLoader(
        PerImageCrops(x_uint8, y), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False)
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def measure(step, batches, warmup, steps, batch_size, device):
    """images/s over `steps` steps after `warmup` steps, data loading included."""
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    sync(device)
    return steps * batch_size / (time.perf_counter() - t)


def sync_check(trainer, device):
    """Run aaer's step with CUDA's sync debug mode set to error: which call (if any) makes
    the host wait for the device inside the step."""
    if torch.device(device).type != "cuda":
        return "n/a (CPU)"
    from aaer.methods import StepContext
    ctx = StepContext(0, 0, 1, 1)
    trainer.loader.set_epoch(1)            # the timing loop left epoch 0 at its end
    it = iter(trainer.loader)
    batches = [next(it) for _ in range(4)]
    trainer.train_step(*batches[0], ctx)
    sync(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for xb, yb in batches[1:]:
            trainer.train_step(xb, yb, ctx)
        return "none"
    except RuntimeError as e:
        return "SYNC: " + str(e).strip().splitlines()[0][:160]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        sync(device)


def step_matrix(model, B, device, warmup, steps, tmp, modes=("eager", "graphs")):
    """images/s and the first step's loss of one run's step: fp32/bf16 x ``modes`` (eager,
    graphs); eager fp32, the reference of the losses, is always measured."""
    from aaer.engine import close_logger
    from aaer.methods import StepContext
    rows = []
    configs = [(p, m) for p in ("fp32", "bf16") for m in ("eager", "graphs") if m in modes]
    if ("fp32", "eager") not in configs:
        configs.insert(0, ("fp32", "eager"))
    for prec, mode in configs:
        row = {"precision": prec, "step": mode}
        tr = None
        try:
            comp = {"compile": True, "compile_mode": "reduce-overhead"} \
                if mode == "graphs" else {}
            tr = make_trainer(model, "rs-aaer", B, device, os.path.join(tmp, prec + mode),
                              n=(warmup + steps + 1) * B, precision=prec,
                              channels_last="auto", **comp)
            from torch._dynamo.utils import counters
            skips = counters["inductor"]["cudagraph_skips"]
            tr.loader.set_epoch(0)
            xb, yb = next(iter(tr.loader))
            torch.manual_seed(0)
            t = time.perf_counter()
            out = tr.train_step(xb, yb, StepContext(0, 0, 1, 1))
            row["first_loss"] = float(out.loss.detach())
            row["first_step_s"] = round(time.perf_counter() - t, 3)   # compile included
            tr.loader.set_epoch(1)

            def step(x, y, tr=tr):
                tr.train_step(x, y, StepContext(0, 0, 1, 1))
            row["images_per_s"] = round(measure(step, tr.loader, warmup, steps, B, device), 1)
            if mode == "graphs":       # graphs torch.compile fell back from (e.g. mutated
                from torch._dynamo.utils import counters      # BatchNorm buffers): 0 = none
                row["cudagraph_skips"] = int(counters["inductor"]["cudagraph_skips"] - skips)
        except Exception as e:         # noqa: BLE001 - recorded: one must not hide the rest
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        finally:
            if tr is not None:
                close_logger(tr.log)
            del tr
            gc.collect()
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(f"  {prec} {mode}: " + (f"{row['images_per_s']:.0f} images/s, first loss "
                                      f"{row['first_loss']:.6f}" if "error" not in row
                                      else row["error"]), flush=True)
    ref = rows[0].get("first_loss")
    for r in rows:
        if ref is not None and "first_loss" in r:
            r["first_loss_vs_eager_fp32"] = round(abs(r["first_loss"] - ref) / abs(ref), 6)
    return rows


def packing_worker(args) -> int:
    """One of K packed processes: warm up, report ready, wait for the common start, time
    --steps steps, write its times."""
    from aaer.engine import close_logger
    from aaer.methods import StepContext
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tr = make_trainer(args.model, "rs-aaer", args.batch_size, device, tmp,
                          n=(args.warmup + args.steps + 1) * args.batch_size,
                          precision=args.precision, channels_last="auto")
        ctx = StepContext(0, 0, 1, 1)
        it = iter(tr.loader)
        for _ in range(args.warmup):
            tr.train_step(*next(it), ctx)
        sync(device)
        open(args.packing_worker + ".ready", "w").close()
        while not os.path.exists(args.packing_worker + ".go"):
            time.sleep(0.01)
        t0 = time.time()
        for _ in range(args.steps):
            tr.train_step(*next(it), ctx)
        sync(device)
        t1 = time.time()
        close_logger(tr.log)
    with open(args.packing_worker, "w") as f:
        json.dump({"start": t0, "end": t1, "images": args.steps * args.batch_size}, f)
    return 0


def packing(ks, args, model, B, steps, warmup, tmp):
    """Aggregate images/s of K processes training at once, for each K."""
    import subprocess
    rows = []
    for k in ks:
        base = os.path.join(tmp, f"pack{k}")
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--device",
                                   args.device, "--model", model, "--batch-size", str(B),
                                   "--steps", str(steps), "--warmup", str(warmup),
                                   "--precision", args.precision,
                                   "--packing-worker", f"{base}.{i}"])
                 for i in range(k)]
        t_wait = time.time()
        while not all(os.path.exists(f"{base}.{i}.ready") for i in range(k)):
            if any(p.poll() not in (None, 0) for p in procs) or time.time() - t_wait > 600:
                break
            time.sleep(0.05)
        for i in range(k):
            open(f"{base}.{i}.go", "w").close()
        codes = [p.wait() for p in procs]
        row = {"k": k}
        if any(codes):
            row["error"] = f"worker exit codes {codes}"
        else:
            times = [json.load(open(f"{base}.{i}")) for i in range(k)]
            span = max(t["end"] for t in times) - min(t["start"] for t in times)
            images = sum(t["images"] for t in times)
            row.update(aggregate_images_per_s=round(images / span, 1),
                       per_run_images_per_s=round(images / span / k, 1),
                       seconds=round(span, 3))
        rows.append(row)
        print(f"  K={k}: " + (f"{row['aggregate_images_per_s']:.0f} images/s in all, "
                              f"{row['per_run_images_per_s']:.0f} per run"
                              if "error" not in row else row["error"]), flush=True)
    one = next((r for r in rows if r["k"] == 1 and "error" not in r), None)
    for r in rows:
        if one is not None and "error" not in r:
            r["vs_k1"] = round(r["aggregate_images_per_s"] / one["aggregate_images_per_s"], 3)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default=None, help="default: preactresnet18 (small-cnn with --tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (16 with --tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration "
                   "(default 100; 3 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="default 15 (1 with --tiny)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the "
                   "reference-style pipeline (the reference uses 2)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (any device)")
    p.add_argument("--step-matrix", nargs="?", const="eager,graphs", default=None,
                   metavar="MODES", help="only: one run's step, fp32/bf16 x eager/CUDA graphs "
                   "(reduce-overhead); MODES: eager, graphs or both (default)")
    p.add_argument("--packing", default=None, metavar="K,K,...", help="only: aggregate "
                   "images/s of K processes training at once, e.g. 1,2,4,8")
    p.add_argument("--precision", default="fp32", help="--packing: the runs' precision")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    p.add_argument("--packing-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.packing_worker:
        return packing_worker(args)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available here; nothing measured "
              "(`--device cpu --tiny` runs every code path on the CPU)")
        print("gpu_bench: skipped (no CUDA)")
        return 0
    model = args.model or ("small-cnn" if args.tiny else "preactresnet18")
    B = args.batch_size or (16 if args.tiny else 128)
    steps = args.steps or (3 if args.tiny else 100)
    warmup = args.warmup or (1 if args.tiny else 15)
    n_images = (steps + warmup) * B
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
        mem = torch.cuda.get_device_properties(device).total_memory / 2**30
        print(f"device: {name} ({mem:.0f} GiB), CUDA {torch.version.cuda}, cuDNN "
              f"{torch.backends.cudnn.version()}, TF32 convs {torch.backends.cudnn.allow_tf32}")
    else:
        torch.set_num_threads(1)       # a loaded small machine runs 1 thread far faster
        print(f"device: CPU ({platform.processor() or platform.machine()}), "
              f"{torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}; RS-AAER on {model}, batch {B}, {steps} timed steps "
          f"after {warmup} warm-up steps per configuration, random CIFAR-shaped data")

    if args.step_matrix or args.packing:
        result = {"device": device_name(device), "torch": torch.__version__, "model": model,
                  "method": "rs-aaer", "batch_size": B, "steps": steps, "warmup": warmup}
        with tempfile.TemporaryDirectory() as tmp:
            if args.step_matrix:
                print("one run's step: fp32/bf16 x eager/CUDA graphs")
                modes = tuple(m.strip() for m in args.step_matrix.split(","))
                if not set(modes) <= {"eager", "graphs"}:
                    p.error(f"--step-matrix {args.step_matrix!r}: valid: eager, graphs")
                result["step_matrix"] = step_matrix(model, B, device, warmup, steps, tmp,
                                                    modes)
            if args.packing:
                ks = [int(k) for k in args.packing.split(",")]
                print(f"packing: K processes at once, {args.precision}, {steps} timed steps each")
                result["packing_precision"] = args.precision
                result["packing"] = packing(ks, args, model, B, steps, warmup, tmp)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        if args.packing:
            ok = [r for r in result["packing"] if "vs_k1" in r]
            best = max(ok, key=lambda r: r["aggregate_images_per_s"], default=None)
            print(f"gpu_packing_gain: {best['vs_k1']:.2f} (K={best['k']})" if best
                  else "gpu_packing_gain: nan")
        return 0

    from aaer.methods import StepContext
    from aaer.engine import close_logger
    ctx = StepContext(0, 0, 1, 1)
    configs = [  # (label, step, precision, layout, data, compile)
        ("reference loop (SPEC 2)", "reference", "fp32", "off", "dataloader", False),
        ("aaer step", "aaer", "fp32", "off", "dataloader", False),
        ("aaer step", "aaer", "fp32", "off", "resident", False),
        ("aaer step", "aaer", "fp32", "on", "resident", False),
        ("aaer step", "aaer", "bf16", "off", "resident", False),
        ("aaer step", "aaer", "bf16", "on", "resident", False),
        ("aaer step", "aaer", "bf16", "on", "dataloader", False),
        ("aaer step", "aaer", "fp16", "on", "resident", False),
    ]
    if args.compile:
        configs.append(("aaer step, compiled", "aaer", "bf16", "on", "resident", True))
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        configs = [c for c in configs if c[2] != "bf16"]
        print("this GPU has no bf16: bf16 configurations left out")

    rows, syncs = [], {}
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, kind, prec, layout, data, comp) in enumerate(configs):
            tr = None
            try:
                tr = make_trainer(model, "rs-aaer", B, device, os.path.join(tmp, str(i)),
                                  n=n_images, precision=prec, channels_last=layout,
                                  compile=comp)
                if kind == "reference":
                    ref = reference_for(tr)
                    step = ref.step
                else:
                    def step(xb, yb, tr=tr):
                        tr.train_step(xb, yb, ctx)
                if data == "resident":
                    tr.loader.set_epoch(0)
                    batches = tr.loader
                    where = "GPU-resident" if tr.loader.on_device and device.type == "cuda" \
                        else ("device-resident" if tr.loader.on_device else "host fallback")
                else:
                    batches = reference_batches(tr.train_x, tr.train_y, B, device, args.workers)
                    where = f"DataLoader x{args.workers}"
                ips = measure(step, batches, warmup, steps, B, device)
                if hasattr(batches, "close"):
                    batches.close()             # stop the DataLoader's workers now
                rows.append((label, prec, "channels_last" if tr.channels_last else "NCHW",
                             where, ips))
                if kind == "aaer" and data == "resident" and not comp and layout == "off":
                    syncs[prec] = sync_check(tr, device)
            except Exception as e:          # report and go on: one failure must not hide the rest
                traceback.print_exc()
                rows.append((label, prec, layout, data, float("nan")))
                print(f"configuration {i} failed: {type(e).__name__}: {e}")
            finally:
                if tr is not None:
                    close_logger(tr.log)
                del tr
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(f"  [{time.time() - t_start:5.1f} s] {rows[-1][0]}, {rows[-1][1]}, "
                  f"{rows[-1][2]}, {rows[-1][3]}: {rows[-1][4]:.0f} images/s", flush=True)

    ref_ips = rows[0][4]
    print()
    print(f"{'configuration':<24} {'precision':<9} {'layout':<14} {'data':<16} "
          f"{'images/s':>10} {'vs reference':>12}")
    for label, prec, layout, where, ips in rows:
        print(f"{label:<24} {prec:<9} {layout:<14} {where:<16} {ips:>10.0f} "
              f"{ips / ref_ips:>11.2f}x")
    for prec, result in syncs.items():
        print(f"host syncs inside aaer's step ({prec}, sync debug mode 'error'): {result}")
    best = max((r for r in rows[1:] if r[4] == r[4]), key=lambda r: r[4], default=None)
    if best is not None:
        print(f"fastest aaer configuration: {best[0]}, {best[1]}, {best[2]}, {best[3]}")
    print(f"total {time.time() - t_start:.0f} s")
    print(f"gpu_bench_speedup: {best[4] / ref_ips:.2f}" if best is not None and ref_ips == ref_ips
          else "gpu_bench_speedup: nan")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
