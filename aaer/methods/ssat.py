"""SSAT (Kim, Lee, Lee, AAAI 2021): single-step AT that checks points along the attack.

Catastrophic overfitting comes with "decision boundary distortion": x + v is classified
correctly while x + k v with k < 1 is not, so the full single-step example no longer
is the worst point of its own segment. SSAT trains each example at the first point of
the segment from x to its adversarial example that the model gets wrong:

    x0 = clip01(x + U(-eps, eps))                 eval mode: z0 = f(x0), g = grad_x0 CE
    delta = clip_eps(x0 + alpha eps sign(g) - x),  x_adv = clip01(x + delta),  p = x_adv - x
    misclassified at x0 (argmax z0 != y)   ->  trained on x itself
    else: the first k in 1 .. c-1 with argmax f(x + k (p / c)) != y (eval mode, no grad)
          ->  x + k (p / c);  none  ->  x_adv
    loss = mean CE(f(x_train), y)                 train mode: the step's only BatchNorm update

Written spec: docs/methods/ssat.md. Everything above is the official code
(Harry24k/catastrophic-overfitting @ 049809b, ``defenses/trainers/co_adv_trainer.py``:
``COAdvTrainer._do_iter`` and ``CustomFFGSM``); the paper's algorithm box could not be
read. What the code does that a reader of the paper might not expect: correctness is
judged at the noisy start x0 (the code's ``logit_clean``), with eval-mode logits; the
segment starts at the clean x and includes the start noise; misclassified examples are
trained clean. The attack runs in eval mode because torchattacks 2.12 (the README's pin)
calls ``model.eval()`` in ``Attack.__call__``; ``CustomFFGSM`` writes
``x - alpha sign(grad(-CE))`` because torchattacks' ``_targeted`` is -1, which is an ASCENT
step on CE, and that is the step here. The official code evaluates only the undecided
examples' checkpoints (``inf_batch`` chunks); here every example's c-1 checkpoints are
evaluated, one no-grad batch per k, so that nothing waits for the host: in eval mode the
predictions are per example, so the training points are the same.

Recipe: alpha 10/255 at eps 8/255 (aaer: 1.25 eps) and c = 3 checkpoints, CIFAR-10 only
(``published``). The README's "Cyclic" run is 30 epochs of CyclicLR 0 -> 0.3 -> 0 peaking
at 1/2, per iteration, batch 128, SGD momentum 0.9 (cycled 0.8-0.9) and weight decay
5e-4: aaer's defaults except the peak, hence ``train_overrides = {"lr_max": 0.3}``. Its
"Stepwise" run (200 epochs, lr 0.01 / 10 at epochs 60, 120, 160) cannot be expressed
(aaer's multistep milestones are 50 % / 75 %) and is not imitated.

Cost per step: attack 1 forward + 1 input backward, c - 1 no-grad checkpoint forwards,
training 1 forward + 1 backward: Cost(2 + (c - 1), 2); no double backprop.

``--on-co rollback`` shrinks alpha (x 0.75): SSAT has no regulariser weight, and its own
remedy is to shorten the segments that are distorted; a smaller alpha shortens every
segment. c is an integer count and is not scaled.

L2: refused. The published attack is a sign step with a box projection and alpha has no
L2 counterpart in the paper or code.

The FastAT Benchmark's SSAT (fzjcdt/FastAT_Benchmark ``fast_at/ssat.py``) runs the attack
forward in train mode (BatchNorm updated by the noisy batch, the correct mask from
train-mode logits) and uses label-smoothed CE (aaer: ``--label-smoothing 0.4``); aaer
follows the official code.
Statistics: the share of examples trained clean, the share stopped at a checkpoint
k < c, and the mean L-inf size of x_train - x (the official log's "Eps" column).
AAE statistics are not logged: z0 (eval mode, at x0) and the training forward (train
mode, at another point) are not the pair an AAE is defined on.
"""
from __future__ import annotations

import torch

from aaer.errors import UsageError
from aaer.methods.base import (Cost, Method, StepContext, StepOutput,
                               forward_with_input_grad, published_entry, uniform_noise)
from aaer.methods.noise import check_count, check_positive

Tensor = torch.Tensor

# official README / train.py: CIFAR-10, eps 8/255, alpha 10/255, c 3
PUBLISHED = {("cifar10", 8): {"alpha": 1.25, "c": 3}}


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def checkpoint_points(model, x: Tensor, x_adv: Tensor, y: Tensor, correct: Tensor, c: int):
    """Where each example trains: x where ``correct`` is False; else the first checkpoint
    x + k (p / c), k = 1 .. c-1, p = x_adv - x, that ``model`` (in its current mode)
    misclassifies; else x_adv.

    Returns (x_train, k_star): k_star is that k (c for x_adv, 0 for x). The checkpoints
    are formed as the official code forms them, x + k * (p / c), so that a training point
    is exactly the point that was checked.
    """
    p = x_adv - x
    x_train, k_star = x_adv, torch.full_like(y, c)
    undecided = correct
    for k in range(1, c):
        x_k = x + k * (p / c)
        wrong = model(x_k).argmax(dim=1) != y
        first = undecided & wrong
        x_train = torch.where(_rows(first, x), x_k, x_train)
        k_star = torch.where(first, torch.full_like(k_star, k), k_star)
        undecided = undecided & ~wrong
    x_train = torch.where(_rows(correct, x), x_train, x)
    return x_train, torch.where(correct, k_star, torch.zeros_like(k_star))


class SSAT(Method):
    name = "ssat"
    description = ("RS-FGSM in eval mode, trained at the first misclassified of c points "
                   "on the segment from x to x_adv (clean x if wrong at the start)")
    source = "Kim, Lee, Lee, AAAI 2021 (Harry24k/catastrophic-overfitting)"
    train_overrides = {"lr_max": 0.3}
    strengthen_by = {"step": "alpha"}
    log_columns = (("Eps", "ssat_linf", "%.4f"),)

    def __init__(self, eps, alpha=1.25, c=3, norm="linf"):
        super().__init__(eps, norm)
        if norm != "linf":
            raise UsageError(f"ssat has no L2 version: its attack is a sign step projected "
                             f"to the L-inf box and its published alpha (10/255) has no L2 "
                             f"counterpart; use --norm linf (got {norm!r})")
        self.alpha = check_positive("alpha (SSAT step as a multiple of eps)", alpha)
        self.c = check_count("c (SSAT checkpoints on the segment)", c, minimum=1)

    @classmethod
    def published(cls, dataset, epsilon, norm="linf"):
        return None if norm != "linf" else published_entry(PUBLISHED, dataset, epsilon)

    def hparams(self):
        return {"eps": self.eps, "alpha": self.alpha, "c": self.c, "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=2 + (self.c - 1), backward=2)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        eps = self.eps
        model.eval()
        try:
            x0 = (x + uniform_noise(x, eps)).clamp(0.0, 1.0)
            z0, _, g = forward_with_input_grad(model, x0, y, self.smoothing)
            delta = (x0 + self.alpha * eps * g.sign() - x).clamp(-eps, eps)
            x_adv = (x + delta).clamp(0.0, 1.0)
            correct = z0.argmax(dim=1) == y
            x_train, k_star = checkpoint_points(model, x, x_adv, y, correct, self.c)
        finally:
            model.train()
        z1 = model(x_train)
        loss = self.ce(z1.float(), y)
        with torch.no_grad():
            stats = {
                "ssat_clean_sum": (~correct).float().sum(),
                "ssat_early_sum": (correct & (k_star < self.c)).float().sum(),
                "ssat_linf_sum": (x_train - x).abs().flatten(1).amax(dim=1).float().sum(),
            }
        return StepOutput(loss=loss, logits=z1.detach(), stats=stats)

    def summarize(self, sums, n):
        if not n:
            return {}
        return {"ssat_clean": sums.get("ssat_clean_sum", 0.0) / n,
                "ssat_early": sums.get("ssat_early_sum", 0.0) / n,
                "ssat_linf": sums.get("ssat_linf_sum", 0.0) / n}
