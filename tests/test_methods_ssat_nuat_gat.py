"""SSAT, NuAT and GAT: the property that defines each, on models where the answer is known
in closed form, each test naming the plausible wrong implementation it rules out."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from aaer.errors import UsageError
from aaer.methods import GAT, SSAT, NuAT, StepContext, create_method
from aaer.methods.gat import softmax_distance
from aaer.methods.nuat import nuclear_norm
from aaer.methods.base import uniform_noise
from aaer.methods.ssat import checkpoint_points
from tests.helpers.tiny import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255


class Recorder:
    """Records (train mode?, input) of every forward of a module."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_pre_hook(
            lambda m, args: self.calls.append((m.training, args[0].detach().clone())))

    def inputs(self, training):
        return [x for t, x in self.calls if t == training]

    @property
    def modes(self):
        return [t for t, _ in self.calls]


# -- SSAT ---------------------------------------------------------------------------------

class SegmentModel(torch.nn.Module):
    """Two classes; the true class is 0. Each example is recognised by its nearest clean
    image x_r (the rows are far apart compared with eps); u = mean(v - x_r) / eps is the
    position along the segment from x_r. Class 1 wins where

        s1 = -A_r + u + 100 (b1_r relu(0.03 - |u - c1_r|) + b2_r relu(0.03 - |u - c2_r|))
             + 5 g_r relu(1 - ||v - x_r||^2 / 0.005)

    is positive: a narrow bump (|u - c| < ~0.013) around c1 and/or c2, misclassified
    everywhere (A = -5), or only next to the clean image itself (g). Near the attack's
    start (|u| small, ||v - x_r||^2 ~ d eps^2 / 3) s1 = -A + u, whose input gradient is
    positive in every pixel, so the attack's step is +alpha eps everywhere."""

    def __init__(self, x, A, b1, b2, g, c1, c2):
        super().__init__()
        self.x, self.A, self.b1, self.b2, self.g, self.c1, self.c2 = x, A, b1, b2, g, c1, c2

    def forward(self, v):
        r = torch.cdist(v.flatten(1), self.x.flatten(1)).argmin(dim=1)
        d = v - self.x[r]
        u = d.flatten(1).mean(1) / EPS
        s1 = (-self.A[r] + u
              + 100 * (self.b1[r] * torch.relu(0.03 - (u - self.c1[r]).abs())
                       + self.b2[r] * torch.relu(0.03 - (u - self.c2[r]).abs()))
              + 5 * self.g[r] * torch.relu(1 - d.pow(2).flatten(1).sum(1) / 0.005))
        return torch.stack([torch.zeros_like(s1), s1], dim=1)


def test_ssat_trains_each_example_at_its_first_misclassified_checkpoint():
    """Published setting (alpha 1.25, c = 3): checkpoints at x + p/3 and x + 2p/3 with
    p = x_adv - x = clip_eps(eta + 1.25 eps) (the start noise included). Rows: wrong only
    at p/3 -> x + p/3; only at 2p/3 -> x + 2p/3; at both -> x + p/3; nowhere -> x_adv;
    wrong at the start x0 -> the clean x; wrong at the clean x but not at x0 -> x_adv.
    Exact equality of the training input rules out: the largest misclassified k and the
    checkpoint of largest loss (both give 2p/3 on the third row), a segment from x0
    instead of x, a p without the start noise (checkpoints at eps/3, 2 eps/3 miss the
    bumps), and a correct-mask judged at the clean x instead of x0 (the last row would
    train on x)."""
    levels = torch.tensor([0.2, 0.32, 0.44, 0.56, 0.68, 0.8])
    x = levels.view(-1, 1, 1, 1).expand(6, 3, 8, 8).contiguous()
    y = torch.zeros(6, dtype=torch.long)
    # the attack's start and end: the step's first draw is the start noise, and the
    # gradient is positive in every pixel
    torch.manual_seed(0)
    x0 = (x + uniform_noise(x, EPS)).clamp(0, 1)
    x_adv = (x + (x0 + 1.25 * EPS * torch.ones_like(x) - x).clamp(-EPS, EPS)).clamp(0, 1)
    p = x_adv - x
    end = p.flatten(1).mean(1) / EPS                 # u at x_adv, ~0.86 (not 1)
    assert (end < 0.9).all()
    model = SegmentModel(x, A=torch.tensor([2., 2., 2., 2., -5., 2.]),
                         b1=torch.tensor([1., 0., 1., 0., 0., 0.]),
                         b2=torch.tensor([0., 1., 1., 0., 0., 0.]),
                         g=torch.tensor([0., 0., 0., 0., 0., 1.]), c1=end / 3, c2=2 * end / 3)
    rec = Recorder(model)
    torch.manual_seed(0)
    SSAT(EPS).step(model, x, y, StepContext())
    assert torch.equal(rec.inputs(False)[0], x0)
    assert (x0 - x).flatten(1).mean(1).abs().max() < 0.2 * EPS
    (x_train,) = rec.inputs(True)
    expected = [x + 1 * (p / 3), x + 2 * (p / 3), x + 1 * (p / 3), x_adv, x, x_adv]
    for row, want in enumerate(expected):
        assert torch.equal(x_train[row], want[row]), row


def test_ssat_checkpoint_selection_on_a_one_pixel_model():
    """checkpoint_points alone, 1 pixel, c = 4: the model is wrong on v in (0.3, 0.6);
    with x = 0 and x_adv = 1 the checkpoints are 1/4, 2/4, 3/4: the first wrong is 2/4.
    Fails for 'largest k' (also 2/4 here, hence the second row: wrong on (0.2, 0.8) ->
    1/4, not 3/4) and for 'nearest to x_adv'."""

    class Window(torch.nn.Module):
        def __init__(self, lo, hi):
            super().__init__()
            self.lo, self.hi = lo, hi

        def forward(self, v):
            v = v.flatten(1)[:, 0]
            inside = ((v > self.lo[: len(v)]) & (v < self.hi[: len(v)])).float()
            return torch.stack([1 - inside, inside], dim=1)

    x = torch.zeros(3, 1, 1, 1)
    x_adv = torch.ones(3, 1, 1, 1)
    y = torch.zeros(3, dtype=torch.long)
    model = Window(torch.tensor([0.3, 0.2, 0.9]), torch.tensor([0.6, 0.8, 0.95]))
    correct = torch.tensor([True, True, True])
    x_train, k = checkpoint_points(model, x, x_adv, y, correct, 4)
    assert k.tolist() == [2, 1, 4]
    assert x_train.flatten().tolist() == [0.5, 0.25, 1.0]
    x_train, k = checkpoint_points(model, x, x_adv, y, torch.tensor([False, True, True]), 4)
    assert k.tolist() == [0, 1, 4] and x_train.flatten().tolist() == [0.0, 0.25, 1.0]


def test_ssat_attack_and_checkpoints_run_in_eval_mode_and_train_once():
    """With BatchNorm: the attack forward and the c - 1 checkpoint forwards are eval-mode
    (they leave the running statistics alone), the training forward is the step's only
    train-mode one, and the statistics after the step are those of ONE train-mode forward
    of x_train. Fails for a train-mode attack (the FastAT Benchmark's), for checkpoints
    inferred in train mode, and for a step that leaves the model in eval mode."""
    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    ref = copy.deepcopy(model)
    rec = Recorder(model)
    SSAT(EPS, c=4).step(model, x, y, StepContext())
    assert rec.modes == [False, False, False, False, True] and model.training
    ref.train()
    ref(rec.inputs(True)[0])
    for a, b in zip(model.buffers(), ref.buffers()):
        assert torch.equal(a, b)
    assert SSAT(EPS, c=4).cost().forward == 5


# -- NuAT: the nuclear norm ------------------------------------------------------------------

def test_nuclear_norm_closed_form():
    """Rows (1, 0), (1, 0), (0, 1): singular values sqrt(2) and 1, so the term
    ||A||_* / B is (1 + sqrt 2) / 3 = 0.8047. The Frobenius norm (0.5774) and the sum of
    per-example L2 norms (1.0), divided by B, both fail."""
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    term = NuAT(EPS).distance(a, torch.zeros_like(a))
    assert term.item() == pytest.approx((1 + math.sqrt(2)) / 3, abs=1e-6)
    assert abs(a.norm() / 3 - term) > 0.2 and abs(a.norm(dim=1).sum() / 3 - term) > 0.1


@pytest.mark.parametrize("shape", [(7, 4), (3, 5), (6, 6)])
def test_nuclear_norm_value_and_gradient_equal_the_svd(shape):
    """Against torch.linalg.matrix_norm(A, 'nuc') (SVD) in float64: more rows than
    classes, fewer (ImageNet-100: batch 64 < 100 classes), square. Fails for a gradient
    that is not the polar factor U V^T (e.g. M treated as A / ||A||_F)."""
    torch.manual_seed(1)
    a = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    mine, ref = nuclear_norm(a), torch.linalg.matrix_norm(b, "nuc")
    assert mine.item() == pytest.approx(ref.item(), rel=1e-12)
    mine.backward()
    ref.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_nuclear_norm_of_a_rank_deficient_matrix():
    """Repeated rows (rank 2 in a 5 x 4 matrix): the value is the SVD's and the gradient
    the minimal polar factor U_r V_r^T (zero singular values contribute nothing)."""
    torch.manual_seed(2)
    base = torch.randn(2, 4, dtype=torch.float64)
    a = base[[0, 1, 0, 1, 0]].clone().requires_grad_(True)
    u, s, vh = torch.linalg.svd(a.detach(), full_matrices=False)
    value = nuclear_norm(a)
    assert value.item() == pytest.approx(s.sum().item(), rel=1e-12)
    value.backward()
    assert torch.allclose(a.grad, u[:, :2] @ vh[:2], atol=1e-10)


def _ddp_worker(rank, path, a, out):
    import torch.distributed as dist
    from aaer.engine.distributed import batch_sum
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    try:
        part = a.chunk(2)[rank].clone().requires_grad_(True)
        value = nuclear_norm(part, batch_sum)
        value.backward()
        torch.save({"value": value.detach(), "grad": part.grad}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_nuclear_norm_under_data_parallelism_is_the_global_batchs(tmp_path):
    """Two gloo processes holding half the rows each: both get the whole matrix's norm
    (not the norm of their half, nor the sum of the halves' norms), and each one's
    gradient is its rows of the one-process gradient times the world size (the engine's
    batch_sum backward; DDP's gradient average divides it again)."""
    import torch.multiprocessing as mp
    torch.manual_seed(3)
    a = torch.randn(8, 5, dtype=torch.float64)
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "init"), a, str(tmp_path / "res")),
                       nprocs=2, start_method="fork")
    whole = a.clone().requires_grad_(True)
    ref = torch.linalg.matrix_norm(whole, "nuc")
    ref.backward()
    halves = sum(torch.linalg.matrix_norm(h, "nuc") for h in a.chunk(2))
    assert halves > ref + 0.1
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'res'}.{rank}", weights_only=True)
        assert got["value"].item() == pytest.approx(ref.item(), rel=1e-12)
        assert torch.allclose(got["grad"] / 2, whole.grad.chunk(2)[rank], atol=1e-10)


# -- GAT: the guide term ----------------------------------------------------------------------

def test_gat_guide_term_closed_form():
    """zc = 0 (uniform softmax) and z = 50 e_y (one-hot to float precision), K = 10: the
    term is (1 - 1/K)^2 + (K - 1)/K^2 = (K - 1)/K = 0.9. MSELoss (which also divides by
    K: 0.09) and a KL divergence (log K = 2.303) both fail."""
    K, B = 10, 4
    zc = torch.zeros(B, K)
    z = 50 * F.one_hot(torch.arange(B), K).float()
    term = softmax_distance(zc, z)
    assert term.item() == pytest.approx(0.9, abs=1e-6)
    assert abs(F.mse_loss(F.softmax(zc, 1), F.softmax(z, 1)) - term) > 0.5
    kl = F.kl_div(F.log_softmax(zc, 1), F.softmax(z, 1), reduction="batchmean")
    assert abs(kl - term) > 1.0


# -- GAT and NuAT: the step --------------------------------------------------------------------

class Linear(torch.nn.Module):
    """f(v) = W v + b: no BatchNorm, so every forward's output is known."""

    def __init__(self, d=48, K=5):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.W = torch.nn.Parameter(torch.randn(K, d, generator=g))
        self.b = torch.nn.Parameter(torch.randn(K, generator=g))

    def forward(self, v):
        return v.flatten(1) @ self.W.T + self.b


def oracle_distance(name, zc, z):
    """The official code's terms, written out: GAT's mean of squared softmax distances;
    NuAT's SVD nuclear norm over B."""
    if name == "gat":
        return ((F.softmax(zc, 1) - F.softmax(z, 1)) ** 2.0).sum(1).mean(0)
    return torch.linalg.matrix_norm(zc - z, "nuc") / zc.shape[0]


def oracle_x_adv(model, x, x0, y, lam, name, with_term, ce_of_probabilities=False):
    """x_adv of the official attack from the start x0, with the term or without it (or,
    the FastAT Benchmark's bug, with CE of the softmax probabilities)."""
    zc = model(x).detach()
    v = x0.clone().requires_grad_(True)
    z0 = model(v)
    ce = F.cross_entropy(F.softmax(z0, 1) if ce_of_probabilities else z0, y)
    cost = ce + lam * oracle_distance(name, zc, z0) if with_term else ce
    (g,) = torch.autograd.grad(cost, v)
    x1 = (x0 + EPS * g.sign()).clamp(0, 1)
    return (x + (x1 - x).clamp(-EPS, EPS)).clamp(0, 1)


def _batch():
    g = torch.Generator().manual_seed(6)
    return torch.rand(8, 3, 4, 4, generator=g), torch.randint(0, 5, (8,), generator=g)


@pytest.mark.parametrize("name", ["gat", "nuat"])
def test_attack_uses_the_term_on_odd_batches_only(name):
    """Batch 0 of an epoch attacks mean CE alone, batch 1 CE + lambda D (the official
    ``alt = counter % 2``). Fails for a term always on or always off; for GAT also for the
    FastAT Benchmark's even-batch CE on probabilities."""
    method = create_method(name, EPS)
    lam = method.weight(9, 10)
    assert lam > 0
    x, y = _batch()
    for iteration, with_term in ((0, False), (1, True), (2, False), (3, True)):
        model = Linear()
        rec = Recorder(model)
        torch.manual_seed(iteration)
        method.step(model, x, y, StepContext(epoch=9, iteration=iteration, total_epochs=10))
        (x0,) = rec.inputs(False)
        x_adv = rec.inputs(True)[1]
        want = oracle_x_adv(model, x, x0, y, lam, name, with_term)
        other = oracle_x_adv(model, x, x0, y, lam, name, not with_term)
        assert torch.equal(x_adv, want) and not torch.equal(x_adv, other), iteration
        if name == "gat" and not with_term:
            bug = oracle_x_adv(model, x, x0, y, lam, name, False, ce_of_probabilities=True)
            assert not torch.equal(x_adv, bug)


def test_gat_mnist_attacks_with_the_term_on_every_batch():
    """attack_term='all' (GAT's MNIST code): batch 0 already uses the guide term."""
    method = GAT(EPS, attack_term="all")
    model = Linear()
    rec = Recorder(model)
    x, y = _batch()
    torch.manual_seed(0)
    method.step(model, x, y, StepContext(epoch=0, iteration=0, total_epochs=10))
    want = oracle_x_adv(model, x, rec.inputs(False)[0], y, 10.0, "gat", True)
    assert torch.equal(rec.inputs(True)[1], want)


@pytest.mark.parametrize("name", ["gat", "nuat"])
def test_loss_is_clean_ce_plus_lambda_times_the_term_with_gradient_through_both(name):
    """loss = CE(f(x)) + lambda D(f(x), f(x_adv)) and its weight gradient, against the
    formula written out on the recorded x_adv. Fails for CE on the adversarial logits
    (a TRADES-like misreading) and for clean logits held constant inside D."""
    method = create_method(name, EPS)
    model = Linear()
    rec = Recorder(model)
    x, y = _batch()
    torch.manual_seed(0)
    ctx = StepContext(epoch=9, iteration=1, total_epochs=10)
    out = method.step(model, x, y, ctx)
    x_adv = rec.inputs(True)[1]
    lam = method.weight(9, 10)
    ref_model = copy.deepcopy(model)
    ref = F.cross_entropy(ref_model(x), y) + lam * oracle_distance(name, ref_model(x),
                                                                   ref_model(x_adv))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    wrong = F.cross_entropy(ref_model(x_adv), y) + lam * oracle_distance(
        name, ref_model(x), ref_model(x_adv))
    assert abs(wrong.item() - ref.item()) > 1e-2
    out.loss.backward()
    ref.backward()
    assert torch.allclose(model.W.grad, ref_model.W.grad, rtol=1e-4, atol=1e-5)
    detached = F.cross_entropy(ref_model(x), y) + lam * oracle_distance(
        name, ref_model(x).detach(), ref_model(x_adv))
    gd = torch.autograd.grad(detached, ref_model.W)[0]
    assert not torch.allclose(gd, ref_model.W.grad, rtol=1e-2)


@pytest.mark.parametrize("name,anchor", [("gat", "train"), ("gat", "eval"),
                                         ("nuat", "train")])
def test_modes_and_batchnorm_updates(name, anchor):
    """The attack forward is eval-mode; the clean anchor is train-mode (CIFAR-10) or
    eval-mode (GAT's ImageNet-100); then x_adv and x train-mode, in that order. The BN
    statistics after the step are exactly those of those train-mode forwards. Fails for a
    train-mode attack (the FastAT Benchmark's NuAT) and for reusing the anchor's graph
    for the clean logits of the loss (one clean update fewer)."""
    torch.manual_seed(0)
    model = TinyNet()
    kw = {"anchor_mode": anchor} if name == "gat" else {}
    method = create_method(name, EPS, **kw)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    ref = copy.deepcopy(model)
    rec = Recorder(model)
    method.step(model, x, y, StepContext(epoch=1, iteration=1, total_epochs=4))
    assert rec.modes == [anchor == "train", False, True, True] and model.training
    assert torch.equal(rec.calls[0][1], x) and torch.equal(rec.calls[3][1], x)
    ref.train()
    with torch.no_grad():
        for train_input in rec.inputs(True):
            ref(train_input)
    for a, b in zip(model.buffers(), ref.buffers()):
        assert torch.equal(a, b)


# -- schedules and recipes ----------------------------------------------------------------

def test_nuat_lambda_ramps_from_zero():
    """lambda_e = nuc_max min(e / (ramp E), 1): the official NuAT (4.5 over E - 10 = 90 of
    100 epochs) and NuAT-WA (4.0 e / E). Fails for a ramp to E (2.025 at 45) or none."""
    nuat = NuAT(EPS)
    assert [nuat.weight(e, 100) for e in (0, 45, 90, 99)] == \
        pytest.approx([0.0, 2.25, 4.5, 4.5])
    wa = NuAT(EPS, nuc_max=4.0, ramp=1.0)
    assert [wa.weight(e, 100) for e in (0, 45, 90, 99)] == pytest.approx([0, 1.8, 3.6, 3.96])
    assert NuAT(EPS, ramp=0.0).weight(0, 100) == 4.5


def test_gat_lambda_is_multiplied_late():
    """CIFAR-10: 10 up to epoch 85, 40 from 86 (E = 100); the switch is a fraction of the
    run (E = 50: from epoch 43); MNIST: 15, then 45 from epoch 26 of 50; ImageNet-100:
    20, then 140 from epoch 90 of 120."""
    gat = GAT(EPS)
    assert (gat.weight(85, 100), gat.weight(86, 100)) == (10.0, 40.0)
    assert (gat.weight(42, 50), gat.weight(43, 50)) == (10.0, 40.0)
    mnist, source = GAT.published("mnist", 76.5)
    assert source == "published mnist eps 76.5"
    m = GAT(0.3, **mnist)
    assert (m.weight(25, 50), m.weight(26, 50)) == (15.0, 45.0) and m.attack_term == "all"
    imnet = GAT(EPS, **GAT.published("imagenet100", 8)[0])
    assert (imnet.weight(89, 120), imnet.weight(90, 120)) == (20.0, 140.0)
    assert imnet.anchor_mode == "eval"


def test_published_recipes_and_their_sources():
    assert SSAT.published("cifar10", 8) == ({"alpha": 1.25, "c": 3}, "published cifar10 eps 8")
    values, source = SSAT.published("svhn", 8)
    assert source == "nearest published: cifar10 eps 8 (none for svhn eps 8)"
    assert NuAT.published("cifar10", 16)[1] == \
        "nearest published: cifar10 eps 8 (none for cifar10 eps 16)"
    values, source = GAT.published("fashion-mnist", 25.5)
    assert values["l2_reg"] == 15.0
    assert source == "nearest published: mnist eps 76.5 (none for fashion-mnist eps 25.5)"
    assert GAT.published("cifar100", 8)[0]["l2_reg"] == 10.0
    assert SSAT.train_overrides == {"lr_max": 0.3}
    assert NuAT.train_overrides == {} and GAT.train_overrides == {}
    from aaer.training import TrainConfig
    r = TrainConfig(method="gat", dataset="mnist", epsilon=76.5).resolve()
    assert r.method.options["mul_at"] == 0.52 and r.method.options["attack_term"] == "all"
    assert r.sources["method.options.l2_reg"] == "published mnist eps 76.5"
    r = TrainConfig(method="ssat").resolve()
    assert r.optim.lr_max == 0.3 and r.method.alpha == 1.25


@pytest.mark.parametrize("name", ["ssat", "nuat", "gat"])
def test_l2_is_refused_with_the_reason(name):
    with pytest.raises(UsageError, match="no L2 version.*--norm linf"):
        create_method(name, 0.5, norm="l2")


@pytest.mark.parametrize("name,kwargs,bad", [
    ("ssat", {"c": 0}, "0"), ("ssat", {"alpha": float("nan")}, "nan"),
    ("nuat", {"ramp": 1.5}, "1.5"), ("nuat", {"nuc_max": -1.0}, "-1.0"),
    ("nuat", {"attack_term": "even"}, "'even'"), ("gat", {"mul_at": 2.0}, "2.0"),
    ("gat", {"anchor_mode": "test"}, "'test'"), ("gat", {"noise_scale": float("inf")}, "inf"),
])
def test_bad_hyper_parameters_name_the_value(name, kwargs, bad):
    with pytest.raises(ValueError) as e:
        create_method(name, EPS, **kwargs)
    assert bad in str(e.value) and list(kwargs)[0] in str(e.value)


def test_rollback_strengthens_the_regulariser_or_the_step():
    nuat = NuAT(EPS)
    assert nuat.strengthen("auto", {"regularizer": 2.0})["param"] == "nuc_max"
    assert nuat.weight(99, 100) == 9.0
    gat = GAT(EPS)
    gat.strengthen("auto", {"regularizer": 2.0})
    assert gat.weight(99, 100) == 80.0
    ssat = SSAT(EPS)
    assert ssat.strengthen("auto", {"step": 0.75})["new"] == pytest.approx(0.9375)
    with pytest.raises(ValueError, match="no regulariser"):
        ssat.strengthen_target("regularizer")
