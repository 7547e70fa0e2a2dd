"""Free-AT (Shafahi et al., NeurIPS 2019): minibatch replay with a carried perturbation.

Each minibatch is replayed m times. Every replay is ONE forward at clip_[0,1](x + delta)
and ONE backward that gives both the weight gradient (the optimiser step) and the
gradient with respect to delta, which is then used for the ascent step

    delta <- clip(delta + step * sign(grad_delta CE), -eps, eps),   step = alpha * eps = eps.

delta is not reset between replays nor between minibatches (first rows of one buffer, as
in the authors' code); it starts at 0.

How this fits the loop (train.py calls ``step`` ``replays`` = m times per minibatch, each
followed by ``loss.backward()`` and an optimiser step): ``step`` makes the delta of this
replay a leaf tensor that requires grad and keeps it. The loop's ``loss.backward()`` fills
its ``.grad`` together with the weight gradients; the next ``step`` call (the next replay,
or the first replay of the next minibatch) first applies the ascent step with that
gradient, then does its forward. So the delta update uses the gradient at the weights
before the optimiser step, exactly as in the authors' code, at no extra pass.

Epochs: with m replays every minibatch is used m times, so the authors divide the number
of epochs by m to keep the total work equal: ``epochs_for`` gives ceil(epochs / m)
(30 -> 4 at m = 8), as the authors' code does; aaer.config.resolve applies it.

Resume: ``state_dict`` holds the carried perturbation (after the pending ascent step), so
a resumed run continues with it; a missing state starts it again from 0.
"""
from __future__ import annotations

import math

import torch

from aaer.methods.base import Cost, Method, StepContext, StepOutput, project, unit_step
from aaer.methods.noise import check_count, check_positive


class FreeAT(Method):
    name = "free"
    description = "Free-AT: each minibatch replayed m=8 times, perturbation carried over"
    source = "Shafahi et al., NeurIPS 2019"
    presets = {"eps8": {"replays": 8}, "eps16": {"replays": 8}}
    strengthen_by = {"step": "alpha"}
    replays = 8

    def __init__(self, eps, replays=8, alpha=1.0, norm="linf"):
        super().__init__(eps, norm)
        self.replays = check_count("replays (m, minibatch replays)", replays, minimum=1)
        self.alpha = check_positive("alpha (ascent step as a multiple of eps)", alpha)
        self.delta = None          # the carried perturbation buffer [N, C, H, W]
        self._leaf = None          # this replay's delta, whose .grad the loop's backward fills

    def hparams(self):
        return {"eps": self.eps, "replays": self.replays, "alpha": self.alpha,
                "norm": self.norm}

    @property
    def epochs_rule(self) -> str:
        return f"free: epochs / {self.replays} replays, rounded up, as its authors train"

    def epochs_for(self, epochs: int) -> int:
        """Every minibatch is used m times, so ceil(epochs / m) epochs keep the total work
        (30 -> 4 at m = 8)."""
        return max(1, math.ceil(epochs / self.replays))

    def cost(self) -> Cost:
        """Per call of step (one replay); a minibatch costs ``replays`` times this."""
        return Cost(forward=1, backward=1)

    def apply_pending(self) -> None:
        """The ascent step with the gradient the last backward left on the last delta."""
        leaf, self._leaf = self._leaf, None
        if leaf is None or leaf.grad is None:
            return
        b = leaf.shape[0]
        with torch.no_grad():
            self.delta[:b] = project(leaf.detach() + self.alpha * self.eps *
                                     unit_step(leaf.grad, self.norm), self.eps, self.norm)

    def _buffer_for(self, x):
        d = self.delta
        if d is None or d.shape[1:] != x.shape[1:]:
            d = torch.zeros_like(x)
        else:
            d = d.to(device=x.device, dtype=x.dtype)
            if d.shape[0] < x.shape[0]:     # a larger batch: new rows start at 0
                d = torch.cat([d, d.new_zeros((x.shape[0] - d.shape[0], *d.shape[1:]))])
        self.delta = d
        return d[:x.shape[0]]

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        self.apply_pending()
        delta = self._buffer_for(x).clone().requires_grad_(True)
        z = model((x + delta).clamp(0.0, 1.0))
        loss = self.ce(z.float(), y)
        self._leaf = delta
        return StepOutput(loss=loss, logits=z.detach(), stats={})

    def state_dict(self):
        self.apply_pending()
        return {} if self.delta is None else {"delta": self.delta.detach().cpu()}

    def load_state_dict(self, state):
        self._leaf = None
        self.delta = state.get("delta") if state else None
