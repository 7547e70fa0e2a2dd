"""PGD and FGSM with the lineage's semantics (SPEC §5), on models with known worst cases."""
import pytest
import torch
import torch.nn.functional as F

from aaer.attacks import fgsm, pgd, pgd_restart
from aaer.evaluation import evaluate
from tests.helpers.tiny import TinyNet

EPS = 8 / 255


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_two_class(seed=0, d=3 * 8 * 8):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(d, 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).double().eval()
    # points in the interior of the box, so [0,1] never binds at radius eps
    x = (0.1 + 0.8 * torch.rand(200, 3, 8, 8)).double()
    with torch.no_grad():
        y = model(x).argmax(1)
        flip = torch.rand(200) < 0.2          # some points start misclassified
        y[flip] = 1 - y[flip]
    return model, lin, x, y


def closed_form_robust(lin, x, y, eps):
    """Two classes: robust iff margin z_y - z_k > eps * ||w_y - w_k||_1."""
    w = lin.weight.detach()
    with torch.no_grad():
        z = lin(x.flatten(1))
    k = 1 - y
    margin = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, k[:, None]).squeeze(1)
    dw = (w[y] - w[k]).abs().sum(1)
    return margin > eps * dw, torch.sign(w[k] - w[y])


def test_pgd_finds_the_closed_form_worst_case_of_a_linear_model():
    model, lin, x, y = linear_two_class()
    robust, direction = closed_form_robust(lin, x, y, EPS)
    assert 20 < int(robust.sum()) < 180        # a non-trivial mix
    x_adv = pgd(model, x, y, EPS, EPS / 4, steps=50, restarts=10,
                generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        still = model(x_adv).argmax(1) == y
    assert torch.equal(still, robust)
    # robust points end at the worst-case vertex x + eps * sign(w_k - w_y)
    delta = (x_adv - x).flatten(1)
    assert torch.allclose(delta[robust], EPS * direction[robust], atol=1e-12)


def test_perturbations_stay_in_ball_and_box():
    torch.manual_seed(0)
    model = TinyNet(freq=20.0).eval()
    x = torch.rand(64, 3, 16, 16)
    x[:8] = 0.0
    x[8:16] = 1.0
    y = torch.randint(0, 10, (64,))
    for x_adv in (pgd(model, x, y, EPS, EPS / 4, 20, 3), fgsm(model, x, y, EPS)):
        assert float((x_adv - x).abs().max()) <= EPS + 1e-6
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_misclassified_points_are_not_moved():
    model, lin, x, y = linear_two_class(seed=1)
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert int(wrong.sum()) > 10
    d = pgd_restart(model, x, y, EPS, EPS / 4, 50, torch.zeros_like(x))
    assert float(d[wrong].abs().max()) == 0.0
    assert float(d[~wrong].abs().max()) > 0.0


def test_restarts_keep_the_max_loss_perturbation():
    torch.manual_seed(0)
    model = TinyNet(freq=30.0).double().eval()
    x = torch.rand(40, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (40,))
    x_adv = pgd(model, x, y, EPS, EPS / 4, 5, 4, selection="max-loss",
                generator=torch.Generator().manual_seed(3))
    # replay the four restarts by hand with the same noise
    gen = torch.Generator().manual_seed(3)
    deltas, losses = [], []
    for _ in range(4):
        start = (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype) - 1) * EPS
        d = pgd_restart(model, x, y, EPS, EPS / 4, 5, start)
        deltas.append(d)
        with torch.no_grad():
            losses.append(F.cross_entropy(model(x + d), y, reduction="none"))
    losses = torch.stack(losses)                          # [restarts, N]
    # ties go to the later restart (the reference's >=)
    best = (losses.shape[0] - 1) - losses.flip(0).argmax(0)
    expect = torch.stack(deltas)[best, torch.arange(40)]
    assert torch.allclose(x_adv - x, expect, atol=1e-12)
    assert len(set(best.tolist())) > 1                   # different restarts won


def test_skip_broken_gives_the_same_robust_accuracy_as_the_plain_loop():
    torch.manual_seed(0)
    model = TinyNet(freq=15.0).eval()
    x = torch.rand(96, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)                           # all correct at the start
    accs = []
    for skip in (False, True):
        x_adv = pgd(model, x, y, 3 / 255, 0.75 / 255, 10, 5, skip_broken=skip,
                    generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            accs.append(int((model(x_adv).argmax(1) == y).sum()))
    assert 5 < accs[0] < 91                              # the attack breaks some, not all
    assert accs[0] == accs[1]
    # the lineage's max-loss rule is never stronger: here it re-selects a few
    # higher-loss restarts that no longer misclassify
    x_adv = pgd(model, x, y, 3 / 255, 0.75 / 255, 10, 5, selection="max-loss",
                generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lineage = int((model(x_adv).argmax(1) == y).sum())
    assert lineage >= accs[0]


def test_fgsm_is_a_zero_start_eps_step():
    model, lin, x, y = linear_two_class(seed=2)
    x_adv = fgsm(model, x, y, EPS)
    _, direction = closed_form_robust(lin, x, y, EPS)
    assert torch.allclose((x_adv - x).flatten(1), EPS * direction, atol=1e-12)


def test_evaluate_reports_protocol_and_parameters():
    model, lin, x, y = linear_two_class()
    rep = evaluate(model.float(), x.float(), y, EPS, "quick", batch_size=64)
    robust, _ = closed_form_robust(lin.float(), x.float(), y, EPS)
    assert rep["n"] == 200 and rep["protocol"]["name"] == "quick"
    pgd_r = rep["results"]["pgd"]
    assert pgd_r["steps"] == 10 and pgd_r["restarts"] == 1 and pgd_r["alpha"] == EPS / 4
    assert pgd_r["protocol"] == "quick" and pgd_r["n"] == 200 and pgd_r["seed"] == 0
    assert rep["results"]["clean"]["acc"] == float((model(x.float()).argmax(1) == y).float().mean())
    assert abs(pgd_r["acc"] - float(robust.float().mean())) <= 1 / 200


def naive_restart(model, x, y, eps, alpha, steps, delta):
    """SPEC §5 transcribed: every step on the whole batch, only correct points move."""
    delta = (torch.clamp(x + delta, 0, 1) - x).detach()
    for _ in range(steps):
        xa = (x + delta).requires_grad_(True)
        z = model(xa)
        F.cross_entropy(z, y).backward()
        live = (z.argmax(1) == y).view(-1, 1, 1, 1)
        if not bool(live.any()):
            break
        step = (delta + alpha * xa.grad.sign()).clamp(-eps, eps)
        step = torch.clamp(x + step, 0, 1) - x
        delta = torch.where(live, step, delta).detach()
    return delta


def test_compacted_restart_equals_the_naive_transcription():
    torch.manual_seed(0)
    model = TinyNet(freq=15.0).double().eval()
    x = torch.rand(80, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:10] = (y[:10] + 1) % 10                          # some wrong from the start
    start = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(5),
                            dtype=x.dtype) - 1) * (4 / 255)
    d_fast = pgd_restart(model, x, y, 4 / 255, 1 / 255, 12, start)
    d_ref = naive_restart(model, x, y, 4 / 255, 1 / 255, 12, start)
    with torch.no_grad():
        broken = int((model(x + d_ref).argmax(1) != y).sum())
    assert 20 < broken < 80                             # points break at different steps
    assert torch.equal(d_fast, d_ref)
