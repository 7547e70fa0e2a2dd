"""AutoAttack (Croce & Hein, ICML 2020): the parameter-free ensemble robust accuracy.

Runs its attacks in sequence, each only on the points every earlier attack failed on, in
batches, seeding each attack call with `seed` as the official code (fra31/auto-attack)
does. Versions:
  standard  apgd-ce (100 it, 1 restart), apgd-t (100 it, 9 targets, 1 restart),
            fab-t (100 it, 9 targets, 1 restart), square (5000 queries, 1 restart)
  plus      apgd-ce, apgd-dlr (5 restarts each), fab (5 restarts), square, apgd-t, fab-t
  rand      apgd-ce, apgd-dlr with EOT over 20 forward passes, 1 restart (randomized models)
  custom    `attacks_to_run` with the official per-attack defaults (apgd-ce / apgd-dlr /
            fab 5 restarts, the targeted attacks and square as in standard)
The attack objects (`self.attacks[name]`) may be tuned before `run`. With `state_path`
the evaluation is saved atomically after every batch and resumes from there.

Several processes (`shard`: an object with rank, world_size and gather(obj) -> [obj of
every rank], e.g. aaer.engine.distributed.Shard): every attack's batches of still-robust
points are formed exactly as in one process, process r attacks batches b with
b % world_size == r, and at the end of each attack the processes exchange the points
they broke (and their adversarial images). Each attack call is seeded by itself, so every
process ends with the verdicts and images one process would have: the same robust
accuracy, point for point. Each process keeps its own resume state
(`<state>.rank<r>of<N>.pt`).
"""

import hashlib
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from aaer.attacks import checks
from aaer.attacks.apgd import APGD, APGDT, check_inputs, check_norm_eps, logits_of, lp_norm
from aaer.attacks.fab import FAB, FABT
from aaer.attacks.square import Square
from aaer.errors import UsageError

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = {
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
    "rand": ["apgd-ce", "apgd-dlr"],
    "custom": None,
}
_STATE_FORMAT = "aaer-autoattack-state-1"
# attributes that change an attack's result, part of the resume fingerprint
_SETTINGS = ("norm", "eps", "n_iter", "n_restarts", "loss", "rho", "eot_iter",
             "n_target_classes", "alpha_max", "eta", "beta", "n_queries", "p_init",
             "rescale_schedule", "seed")


def shard_state_path(path, shard) -> Path:
    """The resume-state file of this process: ``path`` itself in one process."""
    path = Path(path)
    if shard is None or shard.world_size == 1:
        return path
    return path.with_name(f"{path.stem}.rank{shard.rank}of{shard.world_size}{path.suffix}")


def _frac(mask):
    return mask.sum().item() / mask.numel()


def _model_device(model, fallback):
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return fallback


def _digest(*tensors_or_text):
    h = hashlib.sha256()
    for t in tensors_or_text:
        if torch.is_tensor(t):
            t = t.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(t).encode())
    return h.hexdigest()


def _save_atomic(obj, path):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class AutoAttack:
    def __init__(self, model, norm="Linf", eps=8 / 255, version="standard", attacks_to_run=None,
                 seed=0, batch_size=500, verbose=False, log=None, state_path=None, device=None,
                 shard=None):
        self.model = model
        self.shard = shard
        self.norm = norm
        self.eps = check_norm_eps(norm, eps)
        if version not in VERSIONS:
            raise UsageError(f"version={version!r} is not supported; valid: "
                             f"{', '.join(VERSIONS)}")
        if version != "custom" and attacks_to_run:
            raise UsageError(f"attacks_to_run={attacks_to_run!r} is only used with "
                             f"version='custom' (version {version!r} fixes its attacks)")
        if version == "custom":
            if not attacks_to_run:
                raise UsageError("version='custom' needs attacks_to_run, a list from "
                                 f"{', '.join(ATTACKS)}")
            bad = [a for a in attacks_to_run if a not in ATTACKS]
            if bad:
                raise UsageError(f"unknown attack(s) {bad} in attacks_to_run; valid: "
                                 f"{', '.join(ATTACKS)}")
            if len(set(attacks_to_run)) != len(attacks_to_run):
                raise UsageError(f"attacks_to_run={attacks_to_run!r} lists an attack twice")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size={batch_size!r} must be an integer >= 1")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UsageError(f"seed={seed!r} must be an integer")
        self.version = version
        self.attacks_to_run = list(VERSIONS[version] or attacks_to_run)
        self.seed = seed
        self.batch_size = batch_size
        self.verbose = verbose
        self.log = log
        self.state_path = None if state_path is None else shard_state_path(state_path, shard)
        self.device = device

        common = dict(norm=norm, eps=self.eps, seed=seed, device=device)
        restarts = 5 if version in ("plus", "custom") else 1
        eot = 20 if version == "rand" else 1
        self.attacks = {
            "apgd-ce": APGD(model, loss="ce", n_iter=100, n_restarts=restarts, eot_iter=eot,
                            rho=.75, **common),
            "apgd-dlr": APGD(model, loss="dlr", n_iter=100, n_restarts=restarts, eot_iter=eot,
                             rho=.75, **common),
            "apgd-t": APGDT(model, n_iter=100, n_restarts=1, n_target_classes=9, rho=.75,
                            **common),
            "fab": FAB(model, n_iter=100, n_restarts=restarts, **common),
            "fab-t": FABT(model, n_iter=100, n_restarts=1, n_target_classes=9, **common),
            "square": Square(model, n_queries=5000, n_restarts=1, p_init=.8, **common),
        }
        self.x_adv = None
        self.robust_mask = None

    # ------------------------------------------------------------------ logging

    def _log(self, msg):
        if self.verbose:
            print(msg, flush=True)
        if callable(self.log):
            self.log(msg)
        elif self.log is not None:
            with open(self.log, "a") as f:
                f.write(msg + "\n")

    # ------------------------------------------------------------------ state

    def _fingerprint(self, x, y):
        settings = {a: {k: getattr(self.attacks[a], k) for k in _SETTINGS
                        if hasattr(self.attacks[a], k)} for a in self.attacks_to_run}
        fp = {"x": _digest(x), "y": _digest(y), "eps": repr(self.eps), "norm": self.norm,
              "version": self.version, "attacks": repr(self.attacks_to_run),
              "seed": self.seed, "batch_size": self.batch_size,
              "attack settings": _digest(repr(sorted(settings.items())))}
        if self.shard is not None and self.shard.world_size > 1:
            fp["shard"] = f"{self.shard.rank} of {self.shard.world_size}"
        if isinstance(self.model, torch.nn.Module):
            fp["model"] = _digest(*[kv for k, v in self.model.state_dict().items()
                                    for kv in (k, v)])
        return fp

    def _load_state(self, fp):
        if self.state_path is None or not self.state_path.exists():
            return None
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UsageError(f"state_path {self.state_path} is not a readable AutoAttack "
                             f"state ({e}); delete it or pass another path") from e
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise UsageError(f"state_path {self.state_path} is not an AutoAttack state "
                             f"file of format {_STATE_FORMAT!r}")
        missing = [k for k in ("fingerprint", "robust", "adv_idx", "adv", "done", "current",
                               "per_attack", "seconds", "clean_acc") if k not in state]
        if missing or not isinstance(state["fingerprint"], dict):
            raise UsageError(f"state_path {self.state_path} is damaged (lacks "
                             f"{', '.join(missing) or 'its fingerprint'}); delete it to "
                             "start AutoAttack over")
        differ = [k for k in sorted(set(fp) | set(state["fingerprint"]))
                  if fp.get(k) != state["fingerprint"].get(k)]
        if differ:
            raise UsageError(f"state_path {self.state_path} belongs to a different evaluation "
                             f"(differs in: {', '.join(differ)}); delete it or pass another "
                             "state_path to start over")
        return state

    def _save_state(self, state, robust, x_adv, fooled_mask):
        if self.state_path is None:
            return
        idx = fooled_mask.nonzero().flatten().cpu()
        state["robust"] = robust.cpu().clone()
        state["adv_idx"] = idx
        state["adv"] = x_adv[idx.to(x_adv.device)].cpu().clone()
        _save_atomic(state, self.state_path)

    # ------------------------------------------------------------------ running

    def _checks(self, x, y, device):
        xb, yb = x[:self.batch_size].to(device), y[:self.batch_size].to(device)
        forward = lambda t: logits_of(self.model, t)  # noqa: E731
        checks.check_eval_mode(self.model)
        if self.version != "rand":
            checks.check_randomized(forward, xb, yb)
        n_classes = checks.check_range_output(forward, xb)
        checks.check_dynamic(forward, xb)
        if n_classes < 3 and "apgd-dlr" in self.attacks_to_run:
            raise UsageError(f"apgd-dlr needs at least 3 classes, the model has {n_classes}")
        if n_classes < 4 and "apgd-t" in self.attacks_to_run:
            raise UsageError(f"apgd-t needs at least 4 classes, the model has {n_classes}; use "
                             "version='custom' without 'apgd-t'")
        for name in ("apgd-t", "fab-t"):
            if name in self.attacks_to_run:
                checks.fit_n_target_classes(self.attacks[name].n_target_classes, n_classes,
                                            name.upper())
        return n_classes

    @torch.no_grad()
    def _predict(self, x, device):
        return torch.cat([logits_of(self.model, x[i:i + self.batch_size].to(device))
                          .argmax(1).to(x.device) for i in range(0, len(x), self.batch_size)])

    def run(self, x, y):
        """Robust accuracy of the model on (x, y); adversarial examples in `self.x_adv`."""
        x, y = check_inputs(x, y)
        y = y.to(x.device)
        n = x.shape[0]
        if n == 0:
            raise ValueError("x is empty: AutoAttack needs at least one point")
        device = torch.device(self.device) if self.device is not None \
            else _model_device(self.model, x.device)
        fp = self._fingerprint(x, y)
        state = self._load_state(fp)
        self._checks(x, y, device)
        t_start = time.time()

        x_adv = x.clone()
        fooled_by_attack = torch.zeros(n, dtype=torch.bool, device=x.device)
        if state is None:
            t0 = time.time()
            robust = self._predict(x, device) == y
            state = {"format": _STATE_FORMAT, "fingerprint": fp, "clean_acc":
                     _frac(robust), "done": [], "current": None,
                     "per_attack": {}, "seconds": {"clean": time.time() - t0}}
            self._save_state(state, robust, x_adv, fooled_by_attack)
        else:
            robust = state["robust"].to(x.device)
            idx = state["adv_idx"].to(x.device)
            x_adv[idx] = state["adv"].to(x.device)
            fooled_by_attack[idx] = True
            self._log(f"resuming from {self.state_path}: done {state['done'] or 'nothing'}, "
                      f"robust accuracy so far {_frac(robust):.2%}")
        self._log(f"AutoAttack {self.version} ({self.norm}, eps={self.eps:.5f}) on {n} points: "
                  f"{', '.join(self.attacks_to_run)}; clean accuracy {state['clean_acc']:.2%}")

        for name in self.attacks_to_run:
            if name in state["done"]:
                continue
            t0 = time.time()
            cur = state["current"]
            if cur is not None and cur["attack"] == name:
                todo, first_batch = cur["idx"].to(x.device), cur["batches_done"]
                cur.setdefault("fooled", torch.zeros(0, dtype=torch.long))  # older states
            else:
                todo, first_batch = robust.nonzero().flatten(), 0
                state["current"] = {"attack": name, "idx": todo.cpu(), "batches_done": 0,
                                    "fooled": torch.zeros(0, dtype=torch.long)}
            attack = self.attacks[name]
            n_batches = math.ceil(len(todo) / self.batch_size)
            rank, world = (self.shard.rank, self.shard.world_size) if self.shard else (0, 1)
            for b in range(first_batch, n_batches):
                if b % world != rank:           # another process's batch
                    continue
                idx = todo[b * self.batch_size:(b + 1) * self.batch_size]
                xb, yb = x[idx].to(device), y[idx].to(device)
                adv = attack.perturb(xb, yb)
                with torch.no_grad():
                    fooled = (logits_of(self.model, adv).argmax(1) != yb).to(x.device)
                robust[idx[fooled]] = False
                x_adv[idx[fooled]] = adv[fooled].to(x.device)
                fooled_by_attack[idx[fooled]] = True
                state["current"]["fooled"] = torch.cat([state["current"]["fooled"],
                                                        idx[fooled].cpu()])
                state["current"]["batches_done"] = b + 1
                state["seconds"][name] = state["seconds"].get(name, 0.) + time.time() - t0
                t0 = time.time()
                self._save_state(state, robust, x_adv, fooled_by_attack)
                self._log(f"{name} - batch {b + 1}/{n_batches} - {int(fooled.sum())} of "
                          f"{len(idx)} points fooled")
            if world > 1:                       # every process: the points the others broke
                mine = state["current"]["fooled"]
                parts = self.shard.gather((mine, x_adv[mine.to(x.device)].cpu()))
                for r, (others, imgs) in enumerate(parts):
                    if r == rank or others.numel() == 0:
                        continue
                    others = others.to(x.device)
                    robust[others] = False
                    x_adv[others] = imgs.to(x.device)
                    fooled_by_attack[others] = True
            state["seconds"][name] = state["seconds"].get(name, 0.) + time.time() - t0
            state["per_attack"][name] = _frac(robust)
            state["done"].append(name)
            state["current"] = None
            self._save_state(state, robust, x_adv, fooled_by_attack)
            self._log(f"robust accuracy after {name}: {state['per_attack'][name]:.2%} "
                      f"({state['seconds'][name]:.1f} s)")

        checks.check_square_sr(dict([("clean", state["clean_acc"])]
                                    + list(state["per_attack"].items())))
        pert = lp_norm(x_adv - x, self.norm)
        self._log(f"max {self.norm} perturbation {pert.max().item():.5f}; robust accuracy "
                  f"{_frac(robust):.2%}")
        self.x_adv, self.robust_mask = x_adv, robust
        seconds = dict(state["seconds"])
        seconds["total"] = sum(seconds.values())
        seconds["this_call"] = time.time() - t_start
        return {"clean_acc": state["clean_acc"], "robust_acc": _frac(robust),
                "per_attack": dict(state["per_attack"]), "n": n, "seconds": seconds,
                "version": self.version, "eps": self.eps, "norm": self.norm,
                "attacks": list(self.attacks_to_run), "seed": self.seed,
                "max_perturbation": pert.max().item()}
