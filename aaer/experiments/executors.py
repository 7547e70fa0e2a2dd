"""Where a suite's runs execute, behind one interface: ``submit(runs, out_dir, log)``.

- ``LocalExecutor``: subprocesses on this machine, ``--jobs`` at a time (one per GPU).
- ``SlurmExecutor``: one Slurm job per run, submitted as one job array through submitit.

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
from aaer.io import atomic_write_json, read_json
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


class LocalExecutor:
    """``jobs`` runs at a time on this machine (one per visible GPU on CUDA)."""

    def __init__(self, jobs: int = 1):
        self.jobs = jobs

    def submit(self, runs, out_dir: str, log=print) -> dict[str, int]:
        """Run every unfinished run to its end; returns ok / failed / skipped counts."""
        os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
        jobs = self.jobs
        gpus = _gpu_count()
        if gpus:
            jobs = min(jobs, gpus) if jobs > 1 else 1
        todo = _unfinished(runs, out_dir)
        counts = {"skipped": len(runs) - len(todo), "ok": 0, "failed": 0}
        if counts["skipped"]:
            log(f"{counts['skipped']} finished run(s) skipped")
        cpu_threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
        running: list[tuple[subprocess.Popen, Any, int, Any, float]] = []
        free_slots = list(range(jobs))
        queue = list(todo)
        while queue or running:
            while queue and free_slots:
                run = queue.pop(0)
                slot = free_slots.pop(0)
                env = dict(os.environ)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot)
                elif jobs > 1:
                    env["OMP_NUM_THREADS"] = str(cpu_threads)
                argv = command_for(run, out_dir)
                logf = open(os.path.join(out_dir, "logs", run.name + ".log"), "ab")
                log(f"{'resume' if argv[1] == '--resume' else 'start '} {run.name}")
                p = subprocess.Popen([sys.executable, "-m", "aaer", *argv], stdout=logf,
                                     stderr=subprocess.STDOUT, env=env)
                running.append((p, run, slot, logf, time.time()))
            time.sleep(0.2)
            for item in list(running):
                p, run, slot, logf, t0 = item
                if p.poll() is None:
                    continue
                running.remove(item)
                logf.close()
                free_slots.append(slot)
                ok = p.returncode == 0
                counts["ok" if ok else "failed"] += 1
                log(f"{'done  ' if ok else 'FAILED'} {run.name} ({time.time() - t0:.0f} s"
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

    def __call__(self) -> dict[str, Any]:
        run = RunDir(self.run_dir)
        if run.state == "finished":
            return {"run": self.run_name, "state": "finished"}
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self._proc = subprocess.Popen([self.python, "-m", "aaer", *self.command()], env=env)
        while self._proc.poll() is None:
            time.sleep(0.5)
        rc = self._proc.returncode
        if rc != 0:
            raise RuntimeError(f"aaer train for {self.run_name} exited with code {rc} (run "
                               f"directory {self.run_dir}, state {run.state})")
        return {"run": self.run_name, "state": run.state}

    def checkpoint(self, *args, **kwargs):
        """The job got SIGTERM, and so did `aaer train`: wait until it has written its
        checkpoint and exited, then requeue this job (it resumes from the checkpoint)."""
        from submitit.helpers import DelayedSubmission
        proc = self._proc
        if proc is not None:
            deadline = time.time() + self.grace_s
            while time.time() < deadline:
                try:               # reap here: the interrupted wait loop never resumes
                    pid, _ = os.waitpid(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                time.sleep(0.2)
            else:
                os.kill(proc.pid, signal.SIGTERM)
        return DelayedSubmission(TrainJob(self.run_name, self.argv, self.run_dir,
                                          self.threads, self.grace_s, self.python))


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


class SlurmExecutor:
    """One Slurm job per run, in one job array (submitit's ``batch()``)."""

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
        params: dict[str, Any] = {"timeout_min": s.time_min, "cpus_per_task": s.cpus_per_run,
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
        ex.update_parameters(**params)
        return ex

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
        with ex.batch():
            grace = max(5.0, self.settings.signal_delay_s - 10.0)
            submitted = [(r, ex.submit(TrainJob(r.name, r.argv(out_dir),
                                                os.path.join(out_dir, r.name),
                                                self.settings.cpus_per_run, grace)))
                         for r in todo]
        jobs = self.jobs(out_dir)
        for run, job in submitted:
            jobs[run.name] = {"job_id": str(job.job_id),
                              "log": str(job.paths.stdout).replace("%j", str(job.job_id)),
                              "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            log(f"submitted {run.name}: job {job.job_id}")
        atomic_write_json(self.jobs_file(out_dir), jobs)
        counts["submitted"] = len(submitted)
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


