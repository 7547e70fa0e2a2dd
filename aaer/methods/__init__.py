"""Training methods, registered by name. Adding a method = one file + one line here."""
from __future__ import annotations

from aaer.errors import UsageError
from aaer.methods.aaer import AAER, NAAER, RSAAER, aaer_regularizer
from aaer.methods.base import Cost, Method, StepContext, StepOutput
from aaer.methods.cs import FGSMMEPCS, FGSMRSCS
from aaer.methods.elle import ELLE, ELLEA
from aaer.methods.fgsm import FGSM, NFGSM, RSFGSM, SingleStepAttack
from aaer.methods.free import FreeAT
from aaer.methods.gat import GAT
from aaer.methods.gradalign import GradAlign
from aaer.methods.lap import NLAP, RLAP, VLAP
from aaer.methods.liet import LIET
from aaer.methods.multigrad import MultiGrad
from aaer.methods.nuat import NuAT
from aaer.methods.pco import FGSMPCO
from aaer.methods.pgd_at import PGDAT
from aaer.methods.pgi import FGSMPGI
from aaer.methods.ssat import SSAT
from aaer.methods.uap import FGSMCUAP, FGSMFUAP, FGSMUAP
from aaer.methods.zerograd import ZeroGrad

METHODS: dict[str, type[Method]] = {
    "fgsm": FGSM,
    "rs-fgsm": RSFGSM,
    "n-fgsm": NFGSM,
    "rs-aaer": RSAAER,
    "n-aaer": NAAER,
    "gradalign": GradAlign,
    "zerograd": ZeroGrad,
    "multigrad": MultiGrad,
    "pgd": PGDAT,
    "free": FreeAT,
    "elle": ELLE,
    "elle-a": ELLEA,
    "ssat": SSAT,
    "nuat": NuAT,
    "gat": GAT,
    "fgsm-pgi": FGSMPGI,
    "fgsm-mep-cs": FGSMMEPCS,
    "fgsm-rs-cs": FGSMRSCS,
    "fgsm-pco": FGSMPCO,
    "fgsm-uap": FGSMUAP,
    "fgsm-cuap": FGSMCUAP,
    "fgsm-fuap": FGSMFUAP,
    "liet": LIET,
    "v-lap": VLAP,
    "r-lap": RLAP,
    "n-lap": NLAP,
}


def list_methods() -> list[str]:
    return list(METHODS)


def create_method(name: str, eps: float, **hparams) -> Method:
    """Build a registered method; hparams left as None take the method's defaults."""
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    cls = METHODS[name]
    kwargs = {k: v for k, v in hparams.items() if v is not None}
    accepted = set(cls.keywords())
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UsageError(f"method {name!r} does not take {', '.join(unknown)}; "
                         f"it takes: {', '.join(sorted(accepted)) or 'nothing'}")
    return cls(eps, **kwargs)


__all__ = ["METHODS", "Method", "StepContext", "StepOutput", "Cost", "create_method",
           "list_methods", "aaer_regularizer", "AAER", "RSAAER", "NAAER", "FGSM",
           "RSFGSM", "NFGSM", "SingleStepAttack"]
__all__ += ["GradAlign", "ZeroGrad", "MultiGrad", "PGDAT", "FreeAT", "ELLE", "ELLEA"]
__all__ += ["SSAT", "NuAT", "GAT", "FGSMPGI", "FGSMMEPCS", "FGSMRSCS", "FGSMPCO"]
__all__ += ["FGSMUAP", "FGSMCUAP", "FGSMFUAP", "LIET", "VLAP", "RLAP", "NLAP"]
