"""Evaluation protocols: named bundles of attack settings, as AutoAttack names its versions.

A protocol says which attacks run (clean, FGSM, PGD-k-r, CR, AutoAttack), with which
steps, restarts, step size and restart rule, on how many test points.
``aaer.evaluation`` runs them; every result names the protocol it came from.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from aaer.errors import UsageError
from aaer.threat import check_norm


@dataclass(frozen=True)
class Protocol:
    name: str
    pgd_steps: int = 50
    pgd_restarts: int = 10
    pgd_step255: float | None = None      # step as --epsilon writes it (1/255 for L-inf,
    #                                       pixel units for L2); None = eps/4
    n_eval: int | None = None             # first N test points; None = full test set
    attacks: tuple = ("clean", "fgsm", "pgd")
    selection: str = "worst"              # how restarts combine: see aaer.attacks.pgd
    description: str = ""
    aa_version: str = "standard"          # AutoAttack version (when "autoattack" is run)
    aa_attacks: tuple | None = None       # version "custom": the attacks, in order
    norm: str = "linf"                    # the threat model every attack of it uses
    cr_iters: int = 150                   # CR (aaer.attacks.cr): iterations per target
    cr_decay_steps: int = 30              # its cycle length (relaxed / constrained / noise)
    cr_restarts: int = 5                  # its rounds (rounds 2.. retry near misses only)
    cr_targets: int | None = None         # its target classes; None = ceil(ln C)

    def pgd_alpha(self, eps: float) -> float:
        """The PGD step in pixel units (eps: the radius in pixel units)."""
        if self.pgd_step255 is None:
            return eps / 4
        return self.pgd_step255 / 255.0 if self.norm == "linf" else self.pgd_step255

    def as_dict(self):
        d = asdict(self)
        d["attacks"] = list(self.attacks)
        d["aa_attacks"] = None if self.aa_attacks is None else list(self.aa_attacks)
        return d


ATTACKS = ("clean", "fgsm", "pgd", "autoattack", "cr")
# attacks defined for L-inf only, with the reason
LINF_ONLY = {"cr": "the FastAT Benchmark defines CR for L-inf only (fzjcdt/FastAT_Benchmark "
             "attacks/attacks/cr_attack.py)"}
AA_VERSIONS = ("standard", "rand", "plus", "custom")


PROTOCOLS = {
    "lineage": Protocol("lineage", description="the AAER/fast-AT reference evaluation: clean, "
                        "FGSM, PGD-50-10 step eps/4, full test set"),
    "lineage-exact": Protocol("lineage-exact", selection="max-loss", description="as lineage, "
                              "with the reference's max-loss restart rule and no skipping of "
                              "broken points (slower; for digit-for-digit comparison)"),
    "wong": Protocol("wong", pgd_step255=2.0, description="PGD-50-10 with a fixed step 2/255, "
                     "full test set"),
    "gradalign-1k": Protocol("gradalign-1k", n_eval=1000, description="PGD-50-10 step eps/4 "
                             "on the first 1000 test points"),
    "aaer": Protocol("aaer", attacks=("clean", "fgsm", "pgd", "autoattack"),
                     description="clean, FGSM, PGD-50-10 step eps/4 and AutoAttack standard "
                     "(L-inf at eps), full test set"),
    "fastat": Protocol("fastat", attacks=("clean", "pgd", "cr", "autoattack"), pgd_steps=50,
                       pgd_restarts=1, pgd_step255=2.0,
                       description="the FastAT Benchmark's final evaluation "
                       "(fzjcdt/FastAT_Benchmark fast_at/at_base.py, utils/attack_tester.py): "
                       "clean, PGD-50 step 2/255 from one random start, CR (150 iterations, "
                       "5 rounds, ceil(ln C) targets) and AutoAttack standard (L-inf at eps), "
                       "full test set"),
    "autoattack": Protocol("autoattack", attacks=("clean", "autoattack"),
                           description="clean and AutoAttack standard only (RobustBench's "
                           "benchmark), full test set"),
    "quick": Protocol("quick", pgd_steps=10, pgd_restarts=1, n_eval=1000,
                      description="PGD-10-1 step eps/4 on the first 1000 points (a fast check, "
                      "not a publishable number)"),
}


def get_protocol(name: str, norm: str = "linf", **overrides) -> Protocol:
    """Protocol ``name`` in the ``norm`` threat model, with ``overrides`` (a protocol with
    overrides is named '<name>+custom'; the norm is recorded apart from the name)."""
    if name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    check_norm(norm, "--norm")
    p = replace(PROTOCOLS[name], norm=norm)
    if norm != "linf":
        for a in overrides.get("attacks") or p.attacks:
            if a in LINF_ONLY:
                raise UsageError(f"attack {a!r} cannot run under --norm {norm}: "
                                 f"{LINF_ONLY[a]}; leave it out (--attacks "
                                 f"{','.join(b for b in p.attacks if b not in LINF_ONLY)})")
    if norm == "l2" and p.pgd_step255 is not None and overrides.get("pgd_step255") is None:
        raise UsageError(f"protocol {name!r} fixes an L-inf PGD step ({p.pgd_step255:g}/255); "
                         "under --norm l2 use a protocol with step eps/4 (lineage, aaer, "
                         "quick, ...) or give --pgd-step")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for k in ("attacks", "aa_attacks"):
        if k in overrides:
            overrides[k] = tuple(overrides[k])
    bad = [a for a in overrides.get("attacks", ()) if a not in ATTACKS]
    if bad:
        raise UsageError(f"unknown attack(s) {bad}; valid: {', '.join(ATTACKS)}")
    if overrides.get("aa_attacks") is not None:
        overrides.setdefault("aa_version", "custom")
    version = overrides.get("aa_version", p.aa_version)
    if version not in AA_VERSIONS:
        raise UsageError(f"unknown AutoAttack version {version!r}; valid: standard, rand, "
                         "plus, custom")
    if version == "custom" and not overrides.get("aa_attacks", p.aa_attacks):
        raise UsageError("AutoAttack version 'custom' needs its attacks (--aa-attacks, e.g. "
                         "apgd-ce,apgd-t)")
    if version != "custom" and overrides.get("aa_attacks") is not None:
        raise UsageError(f"--aa-attacks is only used with --aa-version custom (version "
                         f"{version!r} fixes its attacks)")
    overrides = {k: v for k, v in overrides.items() if getattr(p, k) != v}
    if overrides:
        p = replace(p, name=f"{p.name}+custom", **overrides)
    return p
