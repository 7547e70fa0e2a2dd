"""Where a suite's runs execute, behind one interface: ``submit(runs, out_dir, log)``.

- ``LocalExecutor``: subprocesses on this machine, ``--jobs`` at a time (one per GPU), or
  with ``--runs-per-gpu K``, K at a time on each GPU (each pinned to it with
  CUDA_VISIBLE_DEVICES; on CPU, K side by side per --jobs slot, the cores shared out).
  ``<out>/logs/executor.jsonl`` records each run's process: pid, device, threads, start,
  end and exit code.
- ``SlurmExecutor``: one Slurm job per run, submitted as one job array through submitit;
  with ``--runs-per-gpu K``, one job per K runs (``PackedJob``), which train at once on the
  job's GPU.

Packing is for steps that leave the device idle: a PreActResNet18 step at batch 128 is
launch-bound on an H100, so K runs side by side train more images per second in all than
one run does (``benchmarks/bench_gpu.py --packing`` measures it).

Both run ``python -m aaer train <the run's flags>`` for a new run and ``... --resume
<run dir>`` for an interrupted one, in the run's own directory, and skip a finished run;
so a job resolves its run through the same aaer.config.resolve as every other door.

On Slurm, a job that gets SIGTERM (preemption, ``scancel --signal=TERM``, or the time
limit's warning, sent ``--slurm-signal-delay`` seconds before the end) lets `aaer train`
write its checkpoint (it does on SIGTERM), then asks to be requeued (submitit's
checkpoint/requeue hook, with SIGTERM as its preemption signal); requeued, it resumes
exactly where it stopped. ``<out>/slurm/jobs.json`` records each run's job, so a second
call submits nothing for a run that is finished, pending or running, and ``status`` can
say where every run stands.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aaer.errors import UsageError, require
from aaer.io import append_jsonl, atomic_write_json, read_json
from aaer.runs import RunDir


def command_for(run, out_dir: str) -> list[str]:
    """`aaer train` arguments of a suite run: its flags, or --resume when interrupted."""
    run_dir = os.path.join(out_dir, run.name)
    if RunDir(run_dir).state == "interrupted":
        return ["train", "--resume", run_dir, "--no-progress"]
    return run.argv(out_dir)


def _gpu_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _unfinished(runs, out_dir: str) -> list:
    return [r for r in runs if RunDir(os.path.join(out_dir, r.name)).state != "finished"]


def slot_devices(gpus: int, jobs: int, runs_per_gpu: int) -> list[str | None]:
    """The device of each concurrent slot: CUDA_VISIBLE_DEVICES of the slot's process, or
    None on CPU. On CUDA, --jobs J uses J GPUs (1 by default; every visible GPU when only
    --runs-per-gpu K > 1 is given), K slots on each; on CPU, J x K slots."""
    if not gpus:
        return [None] * (jobs * runs_per_gpu)
    used = min(jobs, gpus) if jobs > 1 else (gpus if runs_per_gpu > 1 else 1)
    return [str(g) for g in range(used) for _ in range(runs_per_gpu)]


class LocalExecutor:
    """``jobs`` runs at a time on this machine (one per visible GPU on CUDA), each device
    shared by ``runs_per_gpu`` runs at once."""

    RECORD = "executor.jsonl"

    def __init__(self, jobs: int = 1, runs_per_gpu: int = 1):
        self.jobs = jobs
        self.runs_per_gpu = runs_per_gpu

    def submit(self, runs, out_dir: str, log=print) -> dict[str, int]:
        """Run every unfinished run to its end; returns ok / failed / skipped counts and
        ``peak``, the most runs that were alive at once."""
        logs = os.path.join(out_dir, "logs")
        os.makedirs(logs, exist_ok=True)
        devices = slot_devices(_gpu_count(), self.jobs, self.runs_per_gpu)
        todo = _unfinished(runs, out_dir)
        counts = {"skipped": len(runs) - len(todo), "ok": 0, "failed": 0, "peak": 0}
        if counts["skipped"]:
            log(f"{counts['skipped']} finished run(s) skipped")
        cpu_threads = max(1, (os.cpu_count() or 1) // len(devices))
        if self.runs_per_gpu > 1 and todo:
            where = f"GPU(s) {', '.join(sorted(set(devices)))}" if devices[0] is not None \
                else f"the CPU ({cpu_threads} thread(s) each)"
            log(f"{len(devices)} run(s) at once: {self.runs_per_gpu} per device on {where}")
        running: list[tuple[subprocess.Popen, Any, int, Any, float]] = []
        free_slots = list(range(len(devices)))
        queue = list(todo)
        while queue or running:
            while queue and free_slots:
                run = queue.pop(0)
                slot = free_slots.pop(0)
                env = dict(os.environ)
                if devices[slot] is not None:
                    env["CUDA_VISIBLE_DEVICES"] = devices[slot]
                elif len(devices) > 1:
                    env["OMP_NUM_THREADS"] = str(cpu_threads)
                argv = command_for(run, out_dir)
                logf = open(os.path.join(logs, run.name + ".log"), "ab")
                log(f"{'resume' if argv[1] == '--resume' else 'start '} {run.name}"
                    + (f" on GPU {devices[slot]}" if devices[slot] is not None and
                       len(devices) > 1 else ""))
                p = subprocess.Popen([sys.executable, "-m", "aaer", *argv], stdout=logf,
                                     stderr=subprocess.STDOUT, env=env)
                running.append((p, run, slot, logf, time.time()))
            counts["peak"] = max(counts["peak"], len(running))
            time.sleep(0.2)
            for item in list(running):
                p, run, slot, logf, t0 = item
                if p.poll() is None:
                    continue
                t1 = time.time()
                running.remove(item)
                logf.close()
                free_slots.append(slot)
                ok = p.returncode == 0
                counts["ok" if ok else "failed"] += 1
                append_jsonl(os.path.join(logs, self.RECORD), {
                    "run": run.name, "pid": p.pid, "slot": slot,
                    "device": "cpu" if devices[slot] is None else f"cuda:{devices[slot]}",
                    "threads": cpu_threads if devices[slot] is None and len(devices) > 1
                    else None, "start": round(t0, 3), "end": round(t1, 3),
                    "returncode": p.returncode})
                log(f"{'done  ' if ok else 'FAILED'} {run.name} ({t1 - t0:.0f} s"
                    f"{'' if ok else f', exit {p.returncode}, see logs/{run.name}.log'})")
        return counts


# -- Slurm ------------------------------------------------------------------------------

@dataclass
class SlurmSettings:
    """What each run's job asks Slurm for (the --slurm-* flags of `aaer reproduce`)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int = 4
    mem_gb: float | None = None
    time_min: int = 24 * 60
    array_parallelism: int = 64
    signal_delay_s: int = 120
    max_requeues: int = 3
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    runs_per_gpu: int = 1          # runs packed into one job, training at once on its GPU(s)


class TrainJob:
    """What a Slurm job runs: `aaer train` for one run, as a subprocess; submitit calls
    ``checkpoint`` on the preemption signal (SIGTERM here) and requeues the job with what
    it returns."""

    def __init__(self, run_name: str, argv: list[str], run_dir: str, threads: int,
                 grace_s: float = 110.0, python: str = sys.executable):
        self.run_name, self.argv, self.run_dir = run_name, list(argv), run_dir
        self.threads, self.grace_s, self.python = threads, grace_s, python
        self._proc: subprocess.Popen | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_proc"] = None
        return state

    def command(self) -> list[str]:
        if RunDir(self.run_dir).state == "interrupted":
            return ["train", "--resume", self.run_dir, "--no-progress"]
        return self.argv

    def start(self) -> subprocess.Popen | None:
        """Start `aaer train` (or its resume); None when the run is already finished."""
        if RunDir(self.run_dir).state == "finished":
            return None
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self._proc = subprocess.Popen([self.python, "-m", "aaer", *self.command()], env=env)
        return self._proc

    def result(self) -> dict[str, Any]:
        """Once the process has ended: the run's state, or RuntimeError if it failed."""
        state = RunDir(self.run_dir).state
        rc = self._proc.returncode if self._proc is not None else 0
        if rc != 0:
            raise RuntimeError(f"aaer train for {self.run_name} exited with code {rc} (run "
                               f"directory {self.run_dir}, state {state})")
        return {"run": self.run_name, "state": state}

    def __call__(self) -> dict[str, Any]:
        proc = self.start()
        while proc is not None and proc.poll() is None:
            time.sleep(0.5)
        return self.result()

    def wait_for_exit(self, deadline: float) -> None:
        """After SIGTERM: wait until `aaer train` has written its checkpoint and exited (at
        most until ``deadline``, then SIGTERM it again)."""
        proc = self._proc
        if proc is None:
            return
        while time.time() < deadline:
            try:                   # reap here: the interrupted wait loop never resumes
                pid, _ = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)

    def fresh(self) -> "TrainJob":
        return TrainJob(self.run_name, self.argv, self.run_dir, self.threads, self.grace_s,
                        self.python)

    def checkpoint(self, *args, **kwargs):
        """The job got SIGTERM, and so did `aaer train`: wait until it has written its
        checkpoint and exited, then requeue this job (it resumes from the checkpoint)."""
        from submitit.helpers import DelayedSubmission
        self.wait_for_exit(time.time() + self.grace_s)
        return DelayedSubmission(self.fresh())


class PackedJob:
    """What a Slurm job of ``--runs-per-gpu K`` runs: K TrainJobs at once on the job's
    GPU (Slurm's CUDA_VISIBLE_DEVICES, inherited); requeued as a whole on SIGTERM, where
    each run resumes from its own checkpoint and a finished one is skipped."""

    def __init__(self, jobs: list[TrainJob]):
        self.jobs = list(jobs)

    def __call__(self) -> list[dict[str, Any]]:
        procs = [job.start() for job in self.jobs]
        while any(p is not None and p.poll() is None for p in procs):
            time.sleep(0.5)
        results, failed = [], []
        for job in self.jobs:
            try:
                results.append(job.result())
            except RuntimeError as e:
                failed.append(str(e))
        if failed:      # the job fails, so Slurm and submitit report it
            raise RuntimeError(f"packed runs failed: {'; '.join(failed)}")
        return results

    def checkpoint(self, *args, **kwargs):
        """SIGTERM: wait for every run's checkpoint, then requeue the whole pack."""
        from submitit.helpers import DelayedSubmission
        deadline = time.time() + max(job.grace_s for job in self.jobs)
        for job in self.jobs:
            job.wait_for_exit(deadline)
        return DelayedSubmission(PackedJob([job.fresh() for job in self.jobs]))


def _need_slurm(*commands: str) -> None:
    import shutil
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise UsageError(f"--executor slurm needs Slurm's {', '.join(missing)} on PATH, and "
                         "this machine has none; run `aaer reproduce` on the cluster's login "
                         "node (or see scripts/slurm.sh for a one-node Slurm)")


def _squeue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, node list) of the jobs Slurm still knows (pending, running, ...)."""
    if not job_ids:
        return {}
    _need_slurm("squeue")
    # -r: one line per array task (pending tasks are otherwise listed as 12_[0-3])
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%N", "-j", ",".join(job_ids)],
                         capture_output=True, text=True)
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise UsageError(f"squeue failed (exit {out.returncode}): {out.stderr.strip()}; is "
                         "this a Slurm login node with SLURM_CONF pointing at the cluster?")
    known = {}
    for line in out.stdout.splitlines():
        jid, state, nodes = line.split("|", 2)
        known[jid] = (state, nodes)
    return known


def packs(runs: list, size: int) -> list[list]:
    """``runs`` in groups of ``size`` (the last may be smaller), in order."""
    return [runs[i:i + size] for i in range(0, len(runs), size)]


class SlurmExecutor:
    """One Slurm job per run (per K runs with --runs-per-gpu K), in one job array
    (submitit's ``batch()``)."""

    ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING",
              "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING")

    def __init__(self, settings: SlurmSettings):
        self.settings = settings

    @staticmethod
    def folder(out_dir: str) -> str:
        return os.path.join(out_dir, "slurm")

    def jobs_file(self, out_dir: str) -> str:
        return os.path.join(self.folder(out_dir), "jobs.json")

    def jobs(self, out_dir: str) -> dict[str, dict]:
        path = self.jobs_file(out_dir)
        if not os.path.exists(path):
            return {}
        return read_json(path, "it is written by `aaer reproduce --executor slurm`; remove "
                         "it to submit every unfinished run again")

    def active(self, out_dir: str) -> dict[str, tuple[str, str]]:
        """run name -> (state, nodes) of the runs whose job is still queued or running."""
        jobs = self.jobs(out_dir)
        known = _squeue([j["job_id"] for j in jobs.values()])
        return {name: known[j["job_id"]] for name, j in jobs.items()
                if j["job_id"] in known and known[j["job_id"]][0] in self.ACTIVE}

    def _executor(self, out_dir: str):
        _need_slurm("sbatch", "srun", "squeue", "scontrol")
        # submitit's preemption signal: SIGTERM, the signal `aaer train` checkpoints on
        os.environ["SUBMITIT_PREEMPT_SIGNAL"] = "TERM"
        submitit = require("submitit", "submitit", "slurm", "--executor slurm")
        s = self.settings
        ex = submitit.AutoExecutor(folder=os.path.join(self.folder(out_dir), "%j"),
                                   cluster="slurm", slurm_max_num_timeout=s.max_requeues)
        ex.update_parameters(**self.parameters())
        return ex

    def parameters(self) -> dict[str, Any]:
        """submitit's parameters of each job: a packed job (--runs-per-gpu K) asks for the
        GPUs of one run and the CPUs of K."""
        s = self.settings
        params: dict[str, Any] = {"timeout_min": s.time_min,
                                  "cpus_per_task": s.cpus_per_run * s.runs_per_gpu,
                                  "nodes": 1, "tasks_per_node": 1, "name": "aaer",
                                  "slurm_array_parallelism": s.array_parallelism,
                                  "slurm_signal_delay_s": s.signal_delay_s,
                                  "slurm_setup": ["export SUBMITIT_PREEMPT_SIGNAL=TERM",
                                                  *s.setup],
                                  "slurm_additional_parameters": {
                                      "signal": f"TERM@{s.signal_delay_s}", "requeue": True,
                                      **s.sbatch}}
        if s.gpus_per_run:
            params["gpus_per_node"] = s.gpus_per_run
        if s.mem_gb is not None:
            params["mem_gb"] = s.mem_gb
        for key, value in (("partition", s.partition), ("account", s.account),
                           ("qos", s.qos)):
            if value is not None:
                params[f"slurm_{key}"] = value
        return params

    def submit(self, runs, out_dir: str, log=print) -> dict[str, int]:
        """Submit every run that is neither finished nor queued; returns the counts."""
        todo = _unfinished(runs, out_dir)
        active = self.active(out_dir)
        queued = [r for r in todo if r.name in active]
        todo = [r for r in todo if r.name not in active]
        counts = {"skipped": len(runs) - len(todo) - len(queued), "queued": len(queued),
                  "submitted": 0, "ok": 0, "failed": 0}
        if counts["skipped"]:
            log(f"{counts['skipped']} finished run(s) skipped")
        if queued:
            log(f"{len(queued)} run(s) already queued or running: not submitted again")
        if not todo:
            return counts
        out_dir = os.path.abspath(out_dir)          # jobs may start in another directory
        ex = self._executor(out_dir)               # refused before anything is written
        os.makedirs(self.folder(out_dir), exist_ok=True)
        grace = max(5.0, self.settings.signal_delay_s - 10.0)

        def train_job(r):
            return TrainJob(r.name, r.argv(out_dir), os.path.join(out_dir, r.name),
                            self.settings.cpus_per_run, grace)
        k = self.settings.runs_per_gpu
        with ex.batch():
            submitted = [(pack, ex.submit(train_job(pack[0]) if k == 1 else
                                          PackedJob([train_job(r) for r in pack])))
                         for pack in packs(todo, k)]
        jobs = self.jobs(out_dir)
        for pack, job in submitted:
            for run in pack:
                jobs[run.name] = {"job_id": str(job.job_id),
                                  "log": str(job.paths.stdout).replace("%j", str(job.job_id)),
                                  "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            log(f"submitted {', '.join(r.name for r in pack)}: job {job.job_id}")
        atomic_write_json(self.jobs_file(out_dir), jobs)
        counts["submitted"] = sum(len(pack) for pack, _ in submitted)
        return counts

    def wait(self, runs, out_dir: str, poll_s: float = 2.0, log=print) -> dict[str, int]:
        """Wait until no job of the suite is queued or running; returns ok / failed."""
        while self.active(out_dir):
            time.sleep(poll_s)
        rows = self.status(runs, out_dir)
        counts = {"ok": sum(r["state"] == "finished" for r in rows),
                  "failed": sum(r["state"] in ("failed", "interrupted") for r in rows)}
        for r in rows:
            if r["state"] != "finished":
                log(f"{r['state'].upper()} {r['run']}: {r['detail']}")
        return counts

    def status(self, runs, out_dir: str) -> list[dict[str, str]]:
        """Per run: pending / running (job, node) / finished / interrupted / failed (log) /
        not submitted."""
        jobs = self.jobs(out_dir)
        known = _squeue([j["job_id"] for j in jobs.values()])
        rows = []
        for run in runs:
            state = RunDir(os.path.join(out_dir, run.name)).state
            job = jobs.get(run.name)
            q = known.get(job["job_id"]) if job else None
            if state == "finished":
                row = ("finished", f"job {job['job_id']}" if job else "")
            elif q is not None and q[0] in self.ACTIVE:
                where = f" on {q[1]}" if q[1] else ""
                row = (q[0].lower(), f"job {job['job_id']}{where}")
            elif job is None:
                row = ("interrupted" if state == "interrupted" else "not submitted",
                       "not submitted to Slurm")
            elif state == "interrupted":
                row = ("interrupted", f"job {job['job_id']} ended with a checkpoint; run "
                       f"the suite again to resubmit it (log {job['log']})")
            else:
                row = ("failed", f"job {job['job_id']}, log {job['log']}")
            rows.append({"run": run.name, "state": row[0], "detail": row[1]})
        return rows


def status_lines(rows: list[dict[str, str]]) -> list[str]:
    width = max([len(r["run"]) for r in rows] + [3])
    return [f"{r['run']:<{width}}  {r['state']:<13}  {r['detail']}" for r in rows]


