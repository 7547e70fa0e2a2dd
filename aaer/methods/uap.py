"""FGSM-UAP, FGSM-CUAP, FGSM-FUAP (Pan, Li, Yao, AAAI 2024): FGSM started from universal
adversarial perturbations. Written spec: docs/methods/fgsm-uap.md, fgsm-cuap.md,
fgsm-fuap.md (from github.com/fzjcdt/fgsm_uap @ 48be879).

What and why. A random start (RS-FGSM, N-FGSM) gives the single step a start with no
information; these methods start the step from a universal adversarial perturbation (UAP)
that the run itself keeps learning, so the start is already adversarial for most images and
the one step lands further out, and a consistency term ties the prediction at the start to
the prediction at the adversarial point, the part that keeps catastrophic overfitting away:

    x0   = clip01(x + clip_eps(b + U[k] - x))          b = x (UAP, CUAP), x + noise (FUAP)
    g    = grad_x0 CE_ls(f(x0), y)                      f(x0)'s graph is kept
    x1   = clip01(x + clip_eps(x0 + alpha eps sign(g) - x))
    loss = CE_ls(f(x1), y) + lamda mean_{i,k} (f(x1)_ik - f(x0)_ik)^2   (gradient through both)

and, after the step, for every bank entry j used by the batch (n_j > 0 examples):

    gh   = g / ||g||_1                     ONE L1 norm over the whole B x C x H x W batch
    M[j] = mean_{i: k_i = j} gh_i + mu M[j]
    U[j] = clip_{e_u}(U[j] + e_u sign(M[j]))       e_u = uap_scale * eps (10/255 at 8/255)

Entries no example used keep U and M (their momentum does not decay). U starts at e_u times
random signs and moves in steps of e_u clipped to e_u, so every entry stays in
{-e_u, 0, e_u}; e_u > eps, so the start is U's sign pattern clipped to the eps-ball.
CE_ls is PyTorch's label-smoothed cross-entropy (ls 0.4: 1 - ls + ls/K on the true class).

The bank index k per example:

    fgsm-uap    one entry for every example                 official FGSM_One_UAP
    fgsm-cuap   the label: one entry per class              official FGSM_Class_UAP
    fgsm-fuap   argmax_j of the hidden units s of a selector on the model's penultimate
                features h at x + U(-eps, eps)                official FGSM_UAP

NAMES (a trap): the official repository's class ``FGSM_UAP`` (fat/fgsm_uap.py), the one its
main_*.py scripts run and the paper presents as "FGSM-UAP", is the FEATURE-selected bank,
aaer's ``fgsm-fuap``. aaer keeps the FastAT Benchmark's names (fgsm-uap = one UAP,
fgsm-cuap = per class, fgsm-fuap = feature-selected), which users compare against.

FGSM-FUAP's selector (official fat/fgsm_uap.py ``FeatureLayer``): s = A h + a (n_u hidden
units, one per bank entry), o = B relu(s) + b (K class outputs), PyTorch's default Linear
initialisation; k_i = argmax_j s_ij (the PRE-ReLU hidden units, taken before the selector's
update); the selector takes one Adam step (lr 1e-3, PyTorch's defaults otherwise) per batch
on CE_ls(o, y). The features come from a no-grad forward of the model in TRAIN mode at
x + U(-eps, eps), which updates BatchNorm statistics as the official partial forward does;
aaer takes them as the input of the model's last nn.Linear (``base.penultimate``) and reads
the selector's width from it. The random start stays in x0 for this variant only.

Where aaer differs from the official code (written down, none changes the numbers):
- the attack gradient is that of the SUM of per-example losses (the official: the mean);
  the sign step and g / ||g||_1 are scale-free, and the sum does not underflow in fp16;
- the per-entry means are matrix products with a one-hot matrix, on the device (the
  official loops over ``set(idx.tolist())``, a host sync per step);
- a batch whose gradient is exactly 0 leaves M decayed and U unchanged (the official
  divides 0 by 0 and fills the bank with NaN for good);
- the bank (and the selector) are drawn at the first step, from torch's global generator,
  instead of before training;
- the selector's Adam is transcribed (``adam_step``: the same arithmetic as torch.optim.Adam
  without foreach) so that its step counter stays a host integer: torch's Adam reads its
  step tensor with .item() on every step.
Under data parallelism (``ctx.batch_sum``) the update is the one of the GLOBAL batch: the
per-entry sums, counts and the L1 norm are summed over the processes before the update, the
selector's gradients are averaged over the global batch before its Adam step, and the
initial random draws are shared (``base.shared_rand``), so every process keeps the same bank
and selector. One process: none of this runs.

Recipe (fgsm-uap.md, "Hyper-parameters"): eps 8/255, e_u 10/255 (uap_scale 1.25), lamda
10, mu 0.3 (hard-coded in every official update; ``momentum_decay`` here), ls 0.4, FUAP
bank of 50 / 200 / 300 entries on CIFAR-10 / CIFAR-100 / Tiny-ImageNet. The authors train
110 epochs of SGD lr 0.1 with steps x0.1 at epochs 100 and 105 and keep an EMA of the whole
state dict with tau 0.9995 (the logged value), which is what they evaluate. The step never
reads the average, so the recipe does not turn it on: which model is evaluated is the
protocol's choice, the same for every method of a comparison (``--weight-average 0.9995``
reproduces the authors'; the FastAT protocol turns it on for all). The schedule itself is not
expressible with aaer's schedules (multistep milestones at 50 % / 75 %) and is left to the
run's settings; the test-set model selection of the official scripts is not reproduced.

Cost: forwards f(x0), f(x1) (+ the feature forward for FUAP); backwards: the input gradient
at x0 and the training backward through both graphs (the consistency term): 2/3 forwards,
3 backwards, no double backprop.

--on-co rollback: ``strengthen_by = {"regularizer": "lamda", "step": "alpha"}``. The
consistency weight is the method's regulariser against CO (the authors' ablations turn it
off to show CO), so a rollback doubles it first; a smaller step (alpha x 0.75) is the second
choice. The rewind restores the bank, the momenta and the selector (method state).

L2: not defined. The bank moves by sign steps inside the e_u cube and the attack is a sign
step projected to the L-inf ball; neither the paper nor the code has an L2 setting, so
``norm="l2"`` is refused.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aaer.checks import number
from aaer.errors import UsageError
from aaer.methods.base import (Cost, Method, StepContext, StepOutput, aae_statistics,
                               classifier, one_hot_rows, penultimate, shared_rand,
                               uniform_noise)
from aaer.methods.noise import check_count, check_nonnegative, check_positive

# published recipes: (data set, eps in 1/255) -> where they are written
UAP_SOURCES = {
    "fgsm-uap": {
        ("cifar10", 8): "fzjcdt/fgsm_uap test_cifar10/fgsm_one_uap_test.py, "
                        "fat/fgsm_one_uap.py",
        ("cifar100", 8): "FastAT Benchmark configs/cifar100/fgsm_uap.yaml (no official "
                         "CIFAR-100 recipe)",
        ("tinyimagenet", 8): "FastAT Benchmark configs/tiny-imagenet/fgsm_uap.yaml (no "
                             "official Tiny-ImageNet recipe)",
    },
    "fgsm-cuap": {
        ("cifar10", 8): "fzjcdt/fgsm_uap test_cifar10/fgsm_class_uap_test.py, "
                        "fat/fgsm_class_uap.py",
        ("cifar100", 8): "FastAT Benchmark configs/cifar100/fgsm_cuap.yaml (no official "
                         "CIFAR-100 recipe)",
        ("tinyimagenet", 8): "FastAT Benchmark configs/tiny-imagenet/fgsm_cuap.yaml (no "
                             "official Tiny-ImageNet recipe)",
    },
    "fgsm-fuap": {
        ("cifar10", 8): "fzjcdt/fgsm_uap test_cifar10/fgsm_uap_test.py, fat/fgsm_uap.py",
        ("cifar100", 8): "fzjcdt/fgsm_uap test_cifar100/fgsm_uap_test.py",
        ("tinyimagenet", 8): "fzjcdt/fgsm_uap test_tiny_imagenet/fgsm_uap_test.py (the "
                             "benchmark's config swaps uap_num 200 and class_num 300)",
    },
}
# every published run: e_u = 10/255 at eps 8/255, lamda 10, mu 0.3, ls 0.4
UAP_COMMON = {"lamda": 10.0, "uap_scale": 1.25, "momentum_decay": 0.3, "label_smoothing": 0.4}
FUAP_BANK = {"cifar10": 50, "cifar100": 200, "tinyimagenet": 300}


def published_uap(name: str, dataset: str, eps255: float, norm: str = "linf"):
    """(values, source) of the published recipe of ``name`` for a data set and eps: the
    entry of the same data set (CIFAR-10 for the others) at the nearest published eps (only
    8/255 is published), the source saying when it is not an exact match."""
    if norm != "linf":
        return None
    table = UAP_SOURCES[name]
    ds = dataset if any(d == dataset for d, _ in table) else "cifar10"
    radii = sorted(e for d, e in table if d == ds)
    nearest = min(radii, key=lambda e: abs(math.log(e) - math.log(max(eps255, 1e-6))))
    values = dict(UAP_COMMON)
    if name == "fgsm-fuap":
        values["uap_num"] = FUAP_BANK[ds]
    if ds == dataset and abs(nearest - eps255) < 1e-9:
        return values, f"published {dataset} eps {nearest:g} ({table[(ds, nearest)]})"
    return values, (f"nearest published: {ds} eps {nearest:g} (none for {dataset} eps "
                    f"{eps255:.4g}; e_u kept at 1.25 eps, the published 10/8 ratio)")


def adam_step(params: list, grads: list, state: dict, lr: float, betas=(0.9, 0.999),
              eps: float = 1e-8) -> None:
    """One step of Adam (Kingma & Ba) with PyTorch's arithmetic (torch.optim.Adam, no
    weight decay, no amsgrad, the single-tensor path), in place. ``state``: {"step": host
    int, "exp_avg": [...], "exp_avg_sq": [...]} (moments created at 0 on the first step)."""
    b1, b2 = betas
    if not state.get("exp_avg"):
        state["exp_avg"] = [torch.zeros_like(p) for p in params]
        state["exp_avg_sq"] = [torch.zeros_like(p) for p in params]
    state["step"] = t = int(state.get("step", 0)) + 1
    bias1, bias2 = 1 - b1 ** t, 1 - b2 ** t
    with torch.no_grad():
        for p, g, m, v in zip(params, grads, state["exp_avg"], state["exp_avg_sq"]):
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bias2 ** 0.5).add_(eps)
            p.addcdiv_(m, denom, value=-(lr / bias1))


class UAPAttack(Method):
    """The step the three share; a subclass says how many bank entries there are
    (``bank_size``) and which one each example uses (``choose``)."""

    single_step = True
    log_columns = (("Ab NUM", "aae_count", "%d"),)
    strengthen_by = {"regularizer": "lamda", "step": "alpha"}
    # its own label_smoothing (0.4, PyTorch's form, in ``ce``): --label-smoothing is refused
    own_label_smoothing = "label_smoothing"
    # the authors' EMA (tau 0.9995, evaluated); the step does not read it

    def __init__(self, eps, lamda=10.0, uap_scale=1.25, momentum_decay=0.3,
                 label_smoothing=0.4, alpha=1.0, norm="linf"):
        super().__init__(eps, norm)
        if norm != "linf":
            raise UsageError(f"--method {self.name} has no {norm} version: its bank moves by "
                             "sign steps in the L-inf cube and its attack is an L-inf sign "
                             "step, and neither the paper nor the official code defines "
                             "another norm; valid: --norm linf")
        self.lamda = check_nonnegative("lamda (consistency weight)", lamda)
        self.uap_scale = check_positive("uap_scale (UAP radius e_u as a multiple of eps)",
                                        uap_scale)
        self.momentum_decay = number("momentum_decay (mu)", momentum_decay, low=0, high=1,
                                     high_open=True)
        self.label_smoothing = number("label_smoothing", label_smoothing, low=0, high=1,
                                      high_open=True)
        self.alpha = check_positive("alpha (step as a multiple of eps)", alpha)
        self.uap = None          # the bank U [n, C, H, W]
        self.momentum = None     # its momentum M [n, C, H, W]

    @classmethod
    def published(cls, dataset, epsilon, norm="linf"):
        return published_uap(cls.name, dataset, epsilon, norm)

    @property
    def uap_eps(self) -> float:
        """e_u, the bank's radius in pixel units (10/255 at eps 8/255)."""
        return self.uap_scale * self.eps

    def hparams(self):
        return {"eps": self.eps, "lamda": self.lamda, "uap_scale": self.uap_scale,
                "momentum_decay": self.momentum_decay,
                "label_smoothing": self.label_smoothing, "alpha": self.alpha,
                "norm": self.norm}

    def cost(self) -> Cost:
        return Cost(forward=2, backward=3)

    # -- what the variants define ----------------------------------------------------------
    def bank_size(self, model) -> int:
        raise NotImplementedError

    def choose(self, model, x, y, ctx: StepContext):
        """(keys, base, stats): the bank entry of each example (a [B] long tensor), the
        point the entry is added to (x itself, or a noisy x) and the variant's batch sums."""
        raise NotImplementedError

    # -- the step ---------------------------------------------------------------------------
    def create_state(self, model, x, ctx: StepContext) -> None:
        """The bank at the first step: e_u times random signs, momentum 0."""
        n = self.bank_size(model)
        u = shared_rand((n, *x.shape[1:]), x, ctx.batch_sum)
        self.uap = self.uap_eps * torch.sign(2 * u - 1)
        self.momentum = torch.zeros_like(self.uap)

    def _state_on(self, model, x, ctx) -> None:
        if self.uap is None:
            self.create_state(model, x, ctx)
            return
        if tuple(self.uap.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"{self.name}: the UAP bank holds images of shape "
                             f"{tuple(self.uap.shape[1:])}, the batch has "
                             f"{tuple(x.shape[1:])}")
        self.uap = self.uap.to(x.device)
        self.momentum = self.momentum.to(x.device)

    def ce(self, z, y, reduction="mean"):
        """CE smoothed by the method's own ``label_smoothing`` (in place of Method.ce's run
        setting, which it refuses)."""
        return F.cross_entropy(z.float(), y, label_smoothing=self.label_smoothing,
                               reduction=reduction)

    def step(self, model, x, y, ctx: StepContext) -> StepOutput:
        self._state_on(model, x, ctx)
        eps = self.eps
        keys, base, extra = self.choose(model, x, y, ctx)
        x0 = (x + (base + self.uap[keys] - x).clamp(-eps, eps)).clamp(0.0, 1.0)
        x0 = x0.detach().requires_grad_(True)
        z0 = model(x0)
        # the sum: the same sign and the same g / ||g||_1 as the mean, no fp16 underflow
        (g,) = torch.autograd.grad(self.ce(z0, y, "sum"), x0, retain_graph=True)
        x0 = x0.detach()
        x1 = (x + (x0 + self.alpha * eps * g.sign() - x).clamp(-eps, eps)).clamp(0.0, 1.0)
        z1 = model(x1)
        consistency = (z1.float() - z0.float()).pow(2).mean()
        loss = self.ce(z1, y) + self.lamda * consistency
        self.update_bank(g.detach(), keys, ctx)
        with torch.no_grad():
            l0 = F.cross_entropy(z0.detach().float(), y, reduction="none")
            l1 = F.cross_entropy(z1.detach().float(), y, reduction="none")
        stats = aae_statistics(z0.detach(), z1.detach(), l0, l1, y, self.aae_num_classes)
        stats["uap_consistency_sum"] = consistency.detach() * y.shape[0]
        stats.update(extra)
        return StepOutput(loss=loss, logits=z1.detach(), stats=stats)

    @torch.no_grad()
    def update_bank(self, g, keys, ctx: StepContext) -> None:
        """M[j] = mean_{i: k_i = j} g_i / ||g||_1 + mu M[j], U[j] = clip(U[j] + e_u sign(M[j]))
        for the entries the batch used (under DDP: the global batch)."""
        n = self.uap.shape[0]
        g = g.float().flatten(1)
        onehot = one_hot_rows(keys, n, g.dtype)
        sums, counts, norm = onehot.t() @ g, onehot.sum(0), g.abs().sum()
        if ctx.batch_sum is not None:
            sums, counts, norm = ctx.batch_sum(sums), ctx.batch_sum(counts), ctx.batch_sum(norm)
        used = (counts > 0).view(-1, *([1] * (self.uap.dim() - 1)))
        mean = sums / (counts.clamp(min=1.0).view(-1, 1)
                       * norm.clamp(min=torch.finfo(g.dtype).tiny))
        momentum = mean.view_as(self.momentum) + self.momentum_decay * self.momentum
        self.momentum = torch.where(used, momentum, self.momentum)
        e_u = self.uap_eps
        stepped = (self.uap + e_u * torch.sign(self.momentum)).clamp(-e_u, e_u)
        self.uap = torch.where(used, stepped, self.uap)

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        out["uap_consistency"] = sums.get("uap_consistency_sum", 0.0) / n if n else 0.0
        return out

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self):
        if self.uap is None:
            return {}
        return {"uap": self.uap.detach().cpu().clone(),
                "momentum": self.momentum.detach().cpu().clone()}

    def load_state_dict(self, state):
        if not state:                # saved before the first step: drawn again then
            self.uap = self.momentum = None
            return
        missing = {"uap", "momentum"} - set(state)
        if missing:
            raise ValueError(f"{self.name} state lacks {sorted(missing)} (has "
                             f"{sorted(state)})")
        if state["uap"].shape != state["momentum"].shape:
            raise ValueError(f"{self.name} state: uap {tuple(state['uap'].shape)} and "
                             f"momentum {tuple(state['momentum'].shape)} differ in shape")
        self.uap = state["uap"].clone()
        self.momentum = state["momentum"].clone()


class FGSMUAP(UAPAttack):
    name = "fgsm-uap"
    description = ("FGSM from one universal perturbation learnt during training + "
                   "consistency term (official FGSM_One_UAP; not the repo's FGSM_UAP)")
    source = "Pan, Li, Yao, AAAI 2024 (fzjcdt/fgsm_uap fat/fgsm_one_uap.py)"

    def bank_size(self, model) -> int:
        return 1

    def choose(self, model, x, y, ctx):
        return torch.zeros_like(y), x, {}


class FGSMCUAP(UAPAttack):
    name = "fgsm-cuap"
    description = ("FGSM from a per-class universal perturbation learnt during training + "
                   "consistency term (official FGSM_Class_UAP)")
    source = "Pan, Li, Yao, AAAI 2024 (fzjcdt/fgsm_uap fat/fgsm_class_uap.py)"

    def bank_size(self, model) -> int:
        return classifier(model).out_features

    def choose(self, model, x, y, ctx):
        return y, x, {}


SELECTOR_KEYS = ("hidden.weight", "hidden.bias", "head.weight", "head.bias")


class FGSMFUAP(UAPAttack):
    name = "fgsm-fuap"
    description = ("FGSM from a bank of universal perturbations, one chosen per example by a "
                   "selector on its features (the official repo's FGSM_UAP)")
    source = "Pan, Li, Yao, AAAI 2024 (fzjcdt/fgsm_uap fat/fgsm_uap.py)"
    log_columns = UAPAttack.log_columns + (("UAPs used", "fuap_entries_used", "%d"),)

    def __init__(self, eps, uap_num=50, lamda=10.0, uap_scale=1.25, momentum_decay=0.3,
                 label_smoothing=0.4, alpha=1.0, selector_lr=1e-3, norm="linf"):
        super().__init__(eps, lamda, uap_scale, momentum_decay, label_smoothing, alpha, norm)
        self.uap_num = check_count("uap_num (bank size)", uap_num)
        self.selector_lr = check_positive("selector_lr (the selector's Adam step)",
                                          selector_lr)
        self.selector = None      # {name: tensor} of SELECTOR_KEYS
        self.adam = None          # {"step": int, "exp_avg": [...], "exp_avg_sq": [...]}

    def hparams(self):
        return {**super().hparams(), "uap_num": self.uap_num, "selector_lr": self.selector_lr}

    def cost(self) -> Cost:
        # + the no-grad feature forward (train mode) at the noisy point
        return Cost(forward=3, backward=3)

    def bank_size(self, model) -> int:
        return self.uap_num

    def create_state(self, model, x, ctx) -> None:
        super().create_state(model, x, ctx)
        head = classifier(model)
        width, classes = head.in_features, head.out_features
        shapes = {"hidden.weight": (self.uap_num, width), "hidden.bias": (self.uap_num,),
                  "head.weight": (classes, self.uap_num), "head.bias": (classes,)}
        self.selector = {}
        for k in SELECTOR_KEYS:
            fan_in = width if k.startswith("hidden") else self.uap_num
            # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            u = shared_rand(shapes[k], x, ctx.batch_sum)
            self.selector[k] = (2 * u - 1) / math.sqrt(fan_in)
        self.adam = {"step": 0, "exp_avg": [], "exp_avg_sq": []}

    def _state_on(self, model, x, ctx) -> None:
        created = self.uap is None
        super()._state_on(model, x, ctx)
        if not created:
            self.selector = {k: v.to(x.device) for k, v in self.selector.items()}
            self.adam = {"step": self.adam["step"],
                         "exp_avg": [v.to(x.device) for v in self.adam["exp_avg"]],
                         "exp_avg_sq": [v.to(x.device) for v in self.adam["exp_avg_sq"]]}

    def select(self, h, y, ctx: StepContext):
        """Indices argmax_j s_ij (before the update), then one Adam step of the selector on
        CE_ls(o, y); float32, outside autocast."""
        params = [self.selector[k].detach().requires_grad_(True) for k in SELECTOR_KEYS]
        w1, b1, w2, b2 = params
        with torch.autocast(h.device.type, enabled=False), torch.enable_grad():
            s = F.linear(h.float(), w1, b1)
            o = F.linear(F.relu(s), w2, b2)
            keys = s.detach().argmax(dim=1)
            loss = F.cross_entropy(o, y, label_smoothing=self.label_smoothing)
            grads = list(torch.autograd.grad(loss, params))
        if ctx.batch_sum is not None:        # the gradient of the global batch's mean loss
            b = torch.full((), float(y.shape[0]), device=h.device)
            total = ctx.batch_sum(b)
            grads = [ctx.batch_sum(gr * b) / total for gr in grads]
        params = [p.detach() for p in params]
        adam_step(params, grads, self.adam, self.selector_lr)
        self.selector = dict(zip(SELECTOR_KEYS, params))
        return keys, loss.detach()

    def choose(self, model, x, y, ctx):
        xr = (x + uniform_noise(x, self.eps)).clamp(0.0, 1.0)
        with torch.no_grad():                # train mode: BatchNorm statistics move
            h, _ = penultimate(model, xr)
        keys, loss = self.select(h, y, ctx)
        return keys, xr, {"fuap_selector_loss_sum": loss * y.shape[0],
                          "fuap_uses": one_hot_rows(keys, self.uap_num, torch.float32).sum(0)}

    def summarize(self, sums, n):
        out = super().summarize(sums, n)
        uses = sums.get("fuap_uses", [])
        out["fuap_entries_used"] = int(sum(1 for u in uses if u > 0))
        out["fuap_selector_loss"] = sums.get("fuap_selector_loss_sum", 0.0) / n if n else 0.0
        return out

    def state_dict(self):
        state = super().state_dict()
        if state:
            state["selector"] = {k: v.detach().cpu().clone() for k, v in self.selector.items()}
            state["adam"] = {"step": int(self.adam["step"]),
                             "exp_avg": [v.detach().cpu().clone() for v in self.adam["exp_avg"]],
                             "exp_avg_sq": [v.detach().cpu().clone()
                                            for v in self.adam["exp_avg_sq"]]}
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if not state:
            self.selector = self.adam = None
            return
        missing = {"selector", "adam"} - set(state)
        if missing or set(state["selector"]) != set(SELECTOR_KEYS):
            raise ValueError(f"fgsm-fuap state lacks the selector or its Adam state (has "
                             f"{sorted(state)}; selector {sorted(state.get('selector', {}))})")
        if state["uap"].shape[0] != self.uap_num:
            raise ValueError(f"fgsm-fuap state has {state['uap'].shape[0]} UAPs, the method "
                             f"uap_num {self.uap_num}")
        self.selector = {k: state["selector"][k].clone() for k in SELECTOR_KEYS}
        adam = state["adam"]
        self.adam = {"step": int(adam["step"]),
                     "exp_avg": [v.clone() for v in adam["exp_avg"]],
                     "exp_avg_sq": [v.clone() for v in adam["exp_avg_sq"]]}
