"""The AutoAttack components: closed-form optima on linear models, budgets, schedules."""

import warnings

import pytest
import torch

from aaer.attacks.apgd import APGD, APGDT, checkpoints, dlr_loss, dlr_targeted_loss
from aaer.attacks.checks import AutoAttackWarning
from aaer.attacks.fab import FAB, FABT, project_hyperplane_box
from aaer.attacks.square import Square


class Linear(torch.nn.Module):
    def __init__(self, W, b):
        super().__init__()
        self.W = torch.nn.Parameter(W, requires_grad=False)
        self.b = torch.nn.Parameter(b, requires_grad=False)

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b


LINEAR_EPS = {"Linf": 0.03, "L2": 0.3}


def linear_problem(norm="Linf", n=60):
    """Linear 10-class model where class y in {0,1} competes only with 1-y.

    w_1 = w_0 + v; classes 2..9 copy w_0 with bias -60, so they never rank above the
    top two and leave the DLR denominators' gradients parallel to v. Points have margins
    m = 0.02..0.5 and sit far enough inside [0,1] that the optimum is not clipped:
    Linf x - eps*sign(w_y - w_k), worst margin m - eps*|v|_1, distance m/|v|_1;
    L2 x - eps*(w_y - w_k)/|v|_2, worst margin m - eps*|v|_2, distance m/|v|_2.
    """
    g = torch.Generator().manual_seed(0)
    d = 3 * 8 * 8
    a, v = 0.05 * torch.randn(d, generator=g), 0.05 * torch.randn(d, generator=g)
    W = a.repeat(10, 1)
    W[1] += v
    b = torch.full((10,), -60.)
    b[:2] = 0.
    model = Linear(W, b).eval()
    y = torch.arange(n) % 2
    s = torch.where(y[:, None] == 0, -v, v)                    # w_y - w_{1-y}
    x = 0.2 + 0.6 * torch.rand(n, d, generator=g)
    shift = (torch.linspace(0.02, 0.5, n) - (x * s).sum(1)) / v.abs().sum()
    x = (x + shift[:, None] * s.sign()).reshape(n, 3, 8, 8)
    eps = LINEAR_EPS[norm]
    dual = v.abs().sum() if norm == "Linf" else v.norm()
    step = eps * s.sign() if norm == "Linf" else eps * s / v.norm()
    x_opt = x.flatten(1) - step
    assert 0 < x_opt.min() and x_opt.max() < 1
    m = (x.flatten(1) * s).sum(1)
    return model, x, y, eps, m - eps * dual, m / dual


def min_margin(model, x, y):
    z = model(x)
    z_y = z.gather(1, y[:, None])[:, 0]
    z[torch.arange(len(y)), y] = -float("inf")
    return z_y - z.amax(1)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("make", [
    lambda m, norm, e: APGD(m, norm=norm, eps=e, loss="ce"),
    lambda m, norm, e: APGD(m, norm=norm, eps=e, loss="dlr"),
    # the optimum is the one towards the runner-up class, APGD-T's first target
    lambda m, norm, e: APGDT(m, norm=norm, eps=e, n_target_classes=1),
], ids=["apgd-ce", "apgd-dlr", "apgd-t"])
def test_apgd_reaches_closed_form_worst_case_of_linear_model(make, norm):
    model, x, y, eps, worst, _ = linear_problem(norm)
    foolable = worst < 0
    assert 10 < foolable.sum() < len(y) - 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AutoAttackWarning)  # copied classes: zero gradients
        x_adv = make(model, norm, eps).perturb(x, y)
    got = min_margin(model, x_adv, y)
    assert torch.allclose(got[foolable], worst[foolable], atol=1e-4)
    assert torch.equal(x_adv[~foolable], x[~foolable])


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_t_finds_the_minimal_distance_of_linear_model(norm):
    model, x, y, eps, _, dist = linear_problem(norm)
    x_adv = FABT(model, norm=norm, eps=eps, n_target_classes=1).perturb(x, y)
    fooled = min_margin(model, x_adv, y) < 0
    assert torch.equal(fooled, dist <= eps) and fooled.sum() >= 10
    d = (x_adv - x).flatten(1)
    ratio = (d.abs().amax(1) if norm == "Linf" else d.norm(dim=1))[fooled] / dist[fooled]
    assert ratio.min() >= 1 - 1e-5 and ratio.max() <= 1.01


def test_square_fools_linear_model_points_well_inside_eps():
    model, x, y, eps, _, dist = linear_problem()
    x_adv = Square(model, eps=eps, n_queries=1000).perturb(x, y)
    fooled = min_margin(model, x_adv, y) < 0
    assert fooled[dist < 0.4 * eps].all() and (dist < 0.4 * eps).sum() >= 8
    assert not fooled[dist > eps].any()


def small_cnn(seed=0, n_classes=10):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, n_classes)).eval()


def saturated_images(n=24, seed=0):
    """Random images with a quarter of the pixels at 0 or 1, so the box constraint binds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    edge = torch.rand(x.shape, generator=g)
    x[edge < 0.125] = 0.
    x[edge > 0.875] = 1.
    return x


BUDGET_ATTACKS = {
    "apgd-ce": lambda m, norm, eps: APGD(m, norm=norm, eps=eps, n_iter=20, n_restarts=2),
    "apgd-dlr": lambda m, norm, eps: APGD(m, norm=norm, eps=eps, loss="dlr", n_iter=20),
    "apgd-t": lambda m, norm, eps: APGDT(m, norm=norm, eps=eps, n_iter=10, n_target_classes=3),
    "fab": lambda m, norm, eps: FAB(m, norm=norm, eps=eps, n_iter=20, n_restarts=2),
    "fab-t": lambda m, norm, eps: FABT(m, norm=norm, eps=eps, n_iter=20, n_target_classes=3),
    "square": lambda m, norm, eps: Square(m, norm=norm, eps=eps, n_queries=150),
}


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
@pytest.mark.parametrize("name", list(BUDGET_ATTACKS))
def test_every_attack_stays_in_the_eps_ball_and_the_box(name, norm, eps):
    model = small_cnn()
    x = saturated_images()
    y = model(x).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AutoAttackWarning)
        x_adv = BUDGET_ATTACKS[name](model, norm, eps).perturb(x, y)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert size.max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    fooled = model(x_adv).argmax(1) != y
    assert fooled.any(), "the budget check needs some successful perturbations"
    # points not fooled come back untouched
    assert torch.equal(x_adv[~fooled], x[~fooled])


def test_apgd_checkpoints_follow_the_paper_schedule():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times N = 100
    assert [i + 1 for i, _ in checkpoints(100)] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert [k for _, k in checkpoints(100)] == [22, 19, 16, 13, 10, 7, 6, 6]


def test_dlr_losses_on_hand_computed_logits():
    z = torch.tensor([[3., 1., 0., -1.], [0., 2., 5., 1.]])
    y = torch.tensor([0, 1])
    # row 0: y on top, second 1, third 0 -> -(3-1)/(3-0); row 1: -(2-5)/(5-1)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-2 / 3, 3 / 4]), atol=1e-6)
    t = torch.tensor([3, 0])
    # row 0: -(3-(-1))/(3-(0-1)/2); row 1: -(2-0)/(5-(1+0)/2)
    assert torch.allclose(dlr_targeted_loss(z, y, t), torch.tensor([-4 / 3.5, -2 / 4.5]),
                          atol=1e-6)


def test_square_p_schedule_of_autoattack():
    sq = Square(torch.nn.Identity(), n_queries=5000)
    p = {i: sq._p(i) for i in (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001,
                               4000, 4001, 4999)}
    assert p[0] == p[10] == 0.8 and p[11] == p[50] == 0.4 and p[51] == p[200] == 0.2
    assert p[201] == 0.1 and p[501] == 0.05 and p[1001] == 0.025 and p[2001] == 0.0125
    assert p[4001] == p[4999] == 0.8 / 128


def _bisect(f, lo, hi, target, iters=200):
    """The smallest x in [lo, hi] with f(x) >= target, f nondecreasing (float64 bisection)."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if f(mid) >= target else (mid, hi)
    return hi


def _minimal_norm_oracle(t, w, b, norm):
    """Exact minimal-norm step d with w.d = c = b - w.t and -t <= d <= 1 - t, by a 1-D
    search on one scalar, independent of the code under test; None if the box cannot reach
    the plane. L2 (KKT): d = clip(mu w, -t, 1 - t) for the mu with w.d = c. Linf: the least
    s whose box [-s, s] n [-t, 1 - t] contains a d with w.d = c."""
    c = b - w @ t
    lo, hi = -t, 1 - t
    sign = 1.0 if c >= 0 else -1.0          # search toward the plane: maximise sign * w.d
    reach = lambda d: sign * float(w @ d)
    if norm == "L2":
        d_of = lambda mu: torch.clamp(sign * mu * w, lo, hi)
        top = 1e6
    else:
        d_of = lambda s: torch.where(sign * w > 0, torch.minimum(hi, torch.full_like(hi, s)),
                                     torch.maximum(lo, torch.full_like(lo, -s)))
        top = 1.0
    if reach(d_of(top)) < abs(c) - 1e-12:
        return None
    x = _bisect(lambda v: reach(d_of(v)), 0.0, top, abs(c))
    d = d_of(x)
    return d.norm().item() if norm == "L2" else d.abs().max().item()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_hyperplane_box_projection_is_the_minimal_norm_solution(norm):
    g = torch.Generator().manual_seed(1)
    t = torch.rand(12, 5, generator=g, dtype=torch.float64)
    w = torch.randn(12, 5, generator=g, dtype=torch.float64)
    b = (w * t).sum(1) + torch.randn(12, generator=g, dtype=torch.float64)
    d = project_hyperplane_box(t, w, b, norm)
    kinds = set()
    for i in range(12):
        best = _minimal_norm_oracle(t[i], w[i], b[i].item(), norm)
        x = t[i] + d[i]
        assert x.min() >= -1e-12 and x.max() <= 1 + 1e-12
        if best is None:     # unreachable plane: the box corner closest to it
            kinds.add("corner")
            corner = torch.where((w[i] > 0) == ((b[i] - w[i] @ t[i]) > 0), 1., 0.).double()
            assert torch.allclose(x, corner)
            continue
        kinds.add("plane")
        assert abs((w[i] @ x).item() - b[i].item()) < 1e-9
        got = d[i].norm().item() if norm == "L2" else d[i].abs().max().item()
        assert got == pytest.approx(best, abs=1e-9)
        if norm == "L2":     # optimality: d / w is one multiplier wherever d is not at the box
            inside = (x > 1e-9) & (x < 1 - 1e-9) & (w[i].abs() > 1e-8)
            ratios = (d[i] / w[i])[inside]
            assert torch.allclose(ratios, ratios[0].expand_as(ratios), atol=1e-9)
    assert kinds == {"plane", "corner"}       # both branches of the oracle were tested


def test_same_seed_same_result_and_caller_rng_untouched():
    model = small_cnn()
    x = saturated_images()
    y = model(x).argmax(1)
    runs = {}
    for seed in (0, 0, 1):
        torch.manual_seed(123)
        out = APGD(model, eps=4 / 255, n_iter=10, seed=seed).perturb(x, y)
        runs.setdefault(seed, []).append((out, torch.rand(3)))
    (a, ra), (b, rb) = runs[0]
    c, rc = runs[1][0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)      # the random start depends on the seed
    torch.manual_seed(123)
    assert torch.equal(ra, torch.rand(3)) and torch.equal(ra, rb) and torch.equal(ra, rc)


def test_too_few_classes_reduces_targets_with_a_warning():
    model = small_cnn(n_classes=5)
    x = saturated_images(8)
    y = model(x).argmax(1)
    with pytest.warns(AutoAttackWarning, match="only 5 classes; using 4"):
        APGDT(model, eps=4 / 255, n_iter=2).perturb(x, y)
    with pytest.warns(AutoAttackWarning, match="only 5 classes; using 4"):
        FABT(model, eps=4 / 255, n_iter=2).perturb(x, y)
    with pytest.raises(ValueError, match="at least 4 classes"):
        APGDT(small_cnn(n_classes=3), eps=4 / 255, n_iter=2).perturb(x, y % 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(norm="L1"), "norm='L1'.*Linf, L2"),
    (dict(eps=-0.1), "eps=-0.1"),
    (dict(eps=float("nan")), "eps=nan"),
    (dict(n_iter=0), "n_iter=0"),
    (dict(loss="cw"), "loss='cw'"),
])
def test_apgd_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        APGD(torch.nn.Identity(), **kwargs)


def test_attacks_reject_inputs_outside_the_pixel_range():
    model = small_cnn()
    x = saturated_images(4)
    with pytest.raises(ValueError, match=r"pixels in \[0,1\]"):
        APGD(model).perturb(x * 255, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        Square(model).perturb(x, torch.zeros(3, dtype=torch.long))
