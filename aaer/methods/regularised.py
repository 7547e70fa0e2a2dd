"""What GradAlign and ELLE share: an FGSM-family attack plus lamda times a regulariser.

Both take the attack's start (``noise``, aaer.methods.noise), its step ``alpha``, a warm-up
and a norm, and a weight ``lamda`` that defaults to the value their authors published for
the radius (``published_lamda``); under L2, where nothing is published, the eps-8/255
value (L2 0.5 and L-inf 8/255 are the standard CIFAR pair).
"""
from __future__ import annotations

from aaer.methods.fgsm import SingleStepAttack
from aaer.methods.noise import check_nonnegative, noise_settings


class RegularisedFGSM(SingleStepAttack):
    """Base of GradAlign and ELLE: the constructor, its checks and hparams."""

    weight_name = ""        # "GradAlign weight": how an error message names lamda

    @staticmethod
    def published_lamda(eps255: float) -> float:
        """The authors' lamda at eps = eps255/255."""
        raise NotImplementedError

    def __init__(self, eps, lamda=None, noise="zero", alpha=1.0, warmup_epochs=0.0,
                 norm="linf"):
        delta_init, clamp = noise_settings(noise)
        super().__init__(eps, alpha, delta_init, clamp, warmup_epochs, norm)
        self.noise = noise
        eps255 = 8.0 if norm == "l2" else self.eps * 255
        self.lamda = self.published_lamda(eps255) if lamda is None else \
            check_nonnegative(f"lamda ({self.weight_name})", lamda)

    def hparams(self):
        return {"eps": self.eps, "lamda": self.lamda, "noise": self.noise,
                "alpha": self.alpha, "warmup_epochs": self.warmup_epochs, "norm": self.norm}
