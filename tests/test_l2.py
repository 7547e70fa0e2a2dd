"""The L2 threat model (SPEC §10): closed-form answers on linear models, the ball and the
box, the noise distribution, AAER's L2 step against a line-by-line transcription, the
settings, and several processes evaluating one model exactly as one process does.
"""
import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aaer.attacks.pgd import fgsm, pgd
from aaer.methods import METHODS, StepContext, create_method
from aaer.methods.base import ball_noise, project, unit_step
from aaer.training import TrainConfig
from tests.helpers.tiny import TinyNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def linear(num_classes=3, d=12, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, num_classes)).double()
    return m.eval()


def norms(t):
    return t.flatten(1).norm(dim=1)


# -- the step, the ball, the box ---------------------------------------------------------

def test_l2_fgsm_is_the_normalised_gradient_of_a_linear_model():
    """CE of a linear model: grad_x = W^T (softmax(z) - onehot(y)); the L2 FGSM step is eps
    times that direction (inside the box)."""
    model = linear()
    W = model[1].weight.detach()
    x = 0.4 + 0.2 * torch.rand(6, 1, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 0.05
    g = (torch.softmax(model(x), 1) - F.one_hot(y, 3).double()) @ W
    want = eps * g / g.norm(dim=1, keepdim=True)
    got = (fgsm(model, x, y, eps, "l2") - x).flatten(1)
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(norms(got), torch.full((6,), eps, dtype=torch.float64))


def test_l2_pgd_reaches_the_closed_form_worst_case_of_a_linear_model():
    """Two classes: the loss only grows as the margin m(x) = (w_y - w_o).x + (b_y - b_o)
    falls, so the worst perturbation of L2 length eps is -eps u, u = (w_y - w_o)/||.||,
    and the worst margin is m(x) - eps ||w_y - w_o|| (inside the box)."""
    model = linear(num_classes=2, d=12, seed=3)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    x = 0.45 + 0.1 * torch.rand(8, 1, 3, 4, dtype=torch.float64)
    y = (model(x).argmax(1))                           # correctly classified by definition
    eps = 0.04
    gen = torch.Generator().manual_seed(0)
    adv = pgd(model, x, y, eps, alpha=eps / 4, steps=50, restarts=2, generator=gen,
              norm="l2")
    w = W[y] - W[1 - y]
    margin = lambda t: (w * t.flatten(1)).sum(1) + b[y] - b[1 - y]
    want = margin(x) - eps * w.norm(dim=1)
    assert torch.allclose(margin(adv), want, atol=1e-9)
    assert torch.allclose(norms(adv - x), torch.full((8,), eps, dtype=torch.float64),
                          atol=1e-9)


@pytest.mark.parametrize("name, limit", [("rs-fgsm", 1.0), ("rs-aaer", 1.0), ("fgsm", 1.0),
                                         ("n-fgsm", 3.0), ("n-aaer", 3.0)])
def test_single_step_perturbations_stay_in_the_ball_and_the_box(name, limit):
    """RS variants are projected onto the L2 ball of eps; the N variant is not projected,
    so |delta| <= 2 eps + eps; the box [0, 1] always holds."""
    torch.manual_seed(0)
    method = create_method(name, 0.5, norm="l2")
    model = TinyNet(width=4)
    x = torch.rand(16, 3, 8, 8)
    x[:4] = 0.0                                          # on the box's corner
    y = torch.randint(0, 10, (16,))
    _, _, z1, _, _ = method.attack(model, x, y, StepContext())
    captured = {}

    def forward(t):
        captured["x_adv"] = t.detach()
        return model(t)
    method.attack(forward, x, y, StepContext())
    d = captured["x_adv"] - x
    assert captured["x_adv"].min() >= 0 and captured["x_adv"].max() <= 1
    assert float(norms(d).max()) <= limit * 0.5 + 1e-5


def test_l2_projection_and_unit_step():
    g = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 0.0]]]])
    assert torch.allclose(unit_step(g, "l2").flatten(1), torch.tensor([[0.6, 0.8], [0, 0]]))
    d = torch.tensor([[[[3.0, 4.0]]], [[[0.3, 0.4]]]])
    p = project(d, 1.0, "l2").flatten(1)
    assert torch.allclose(p, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))   # only the long one


def test_l2_ball_noise_has_the_documented_distribution():
    """Uniform in the L2 ball of radius R in d dimensions: E||eta|| = R d/(d+1),
    E||eta||^2 = R^2 d/(d+2), mean 0 and covariance E||eta||^2 / d I (isotropic)."""
    torch.manual_seed(0)
    n, d, R = 200_000, 6, 2.0
    eta = ball_noise(torch.zeros(n, 1, 2, 3), R, "l2").flatten(1).double()
    r = eta.norm(dim=1)
    assert float(r.max()) <= R
    se = float(r.std()) / math.sqrt(n)
    assert abs(float(r.mean()) - R * d / (d + 1)) < 5 * se
    assert abs(float((r ** 2).mean()) - R ** 2 * d / (d + 2)) < 5 * float((r ** 2).std()) / \
        math.sqrt(n)
    assert float(eta.mean(0).abs().max()) < 5 * R / math.sqrt(n)
    cov = eta.T @ eta / n
    target = R ** 2 / (d + 2)
    assert torch.allclose(cov, target * torch.eye(d, dtype=torch.float64), atol=0.01)
    # the fraction inside radius R/2 is (1/2)^d
    assert abs(float((r < R / 2).double().mean()) - 0.5 ** d) < 5 * math.sqrt(0.5 ** d / n)


# -- AAER's L2 step against a transcription -------------------------------------------------

def reference_l2_step(model, x, y, eps, alpha_mult, clamp, l1w, l2w, l3w, seed):
    """SPEC §2 with SPEC §10's L2 attack, written per example as a reference would."""
    alpha = alpha_mult * eps
    B, dim = x.shape[0], x[0].numel()
    torch.manual_seed(seed)
    radius = eps if clamp else 2 * eps
    g = torch.randn_like(x)
    u = torch.rand(B, dtype=x.dtype)
    delta = torch.stack([g[i] / g[i].norm() * radius * u[i] ** (1.0 / dim) for i in range(B)])
    delta = torch.max(torch.min(delta, 1 - x), 0 - x)
    delta.requires_grad = True
    output = model(x + delta)
    output_org = output.detach()
    loss = F.cross_entropy(output, y, reduction="none")
    loss_before = loss.detach()
    loss.mean().backward()
    grad = delta.grad.detach()
    delta = delta.detach() + alpha * torch.stack([grad[i] / grad[i].norm() for i in range(B)])
    if clamp:
        delta = torch.stack([delta[i] * min(1.0, eps / float(delta[i].norm()))
                             for i in range(B)])
    delta = torch.max(torch.min(delta, 1 - x), 0 - x)
    model.zero_grad()
    output = model(torch.clamp(x + delta, 0, 1))
    loss = F.cross_entropy(output, y, reduction="none")
    loss_after = loss.detach()
    loss = loss.mean()
    abnormal, normal = loss_before > loss_after, loss_before <= loss_after
    a, nrm = int(abnormal.sum()), int(normal.sum())
    if a and nrm:
        dv = output_org[abnormal] - output[abnormal]
        av = (dv * dv).sum(1).mean(0)
        ce = (abnormal * (loss_before - loss_after)).sum() / a
        dv = output_org[normal] - output[normal]
        nv = (dv * dv).sum(1).mean(0)
        loss = loss + (l1w * a / B) * (l2w * ce + l3w * max(av - nv.item(), 0))
    return loss, a


@pytest.mark.parametrize("name, alpha, clamp", [("rs-aaer", 1.25, 1), ("n-aaer", 1.0, 0)])
def test_l2_aaer_step_matches_the_transcription(name, alpha, clamp):
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(1)
    model = TinyNet(width=8, freq=40.0).double()
    x = torch.rand(32, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (32,))
    ref = copy.deepcopy(model)
    ref_loss, m = reference_l2_step(ref, x, y, 2.0, alpha, clamp, 1.0, 2.5, 30.0, seed=7)
    ref_loss.backward()
    assert 0 < m < 32
    method = create_method(name, 2.0, alpha=alpha, clamp=clamp, lamda1=1.0, lamda2=2.5,
                           lamda3=30.0, norm="l2")
    torch.manual_seed(7)
    out = method.step(model, x, y, StepContext())
    model.zero_grad()
    out.loss.backward()
    assert float(out.stats["aae_count"]) == m
    # the library forms the loss and the regulariser in float32 (as for L-inf: SPEC §2)
    assert float(out.loss) == pytest.approx(float(ref_loss), rel=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert float((p.grad - q.grad).abs().max()) <= 1e-5 * float(q.grad.abs().max())


# -- which methods carry over, and the settings --------------------------------------------

L2_METHODS = ("fgsm", "rs-fgsm", "n-fgsm", "rs-aaer", "n-aaer", "gradalign", "elle", "elle-a",
              "pgd", "free")
# the methods without an L2 form, and what their refusal says (SSAT, NuAT, GAT: sign steps
# from L-inf starts with no published L2 setting)
L2_REFUSED = {"zerograd": "signs of the input gradient", "multigrad": "signs of the input "
              "gradient", "fgsm-pgi": "L-inf only", "fgsm-mep-cs": "L-inf only",
              "fgsm-rs-cs": "L-inf only", "fgsm-pco": "L-inf only",
              "ssat": "ssat has no L2 version", "nuat": "nuat has no L2 version",
              "gat": "gat has no L2 version",
              # L-inf only in paper and code
              "fgsm-uap": "--method fgsm-uap has no l2 version",
              "fgsm-cuap": "--method fgsm-cuap has no l2 version",
              "fgsm-fuap": "--method fgsm-fuap has no l2 version",
              "liet": "--method liet has no l2 version",
              "v-lap": "LAP has no L2 version", "r-lap": "LAP has no L2 version",
              "n-lap": "LAP has no L2 version"}


def test_which_methods_take_l2():
    assert set(METHODS) == set(L2_METHODS) | set(L2_REFUSED)
    for name in L2_METHODS:
        r = TrainConfig(method=name, norm="l2", epsilon=0.5).resolve()
        assert r.method.norm == "l2" and r.eps == 0.5
    for name, why in L2_REFUSED.items():
        with pytest.raises(ValueError, match=why):
            TrainConfig(method=name, norm="l2", epsilon=0.5).resolve()


def test_l2_radius_convention_and_provenance():
    r = TrainConfig(method="rs-aaer", norm="l2", epsilon=0.5).resolve()
    assert r.sources["method.norm"] == "explicit" and r.method.epsilon == 0.5
    assert (r.method.lamda2, r.method.lamda3) == (2.5, 1.5)
    assert r.sources["method.lamda2"].startswith("no published value for L2")
    assert TrainConfig(method="rs-aaer").resolve().method.norm == "linf"
    with pytest.raises(ValueError, match=r"--epsilon 128.0 with --norm l2.*0\.502"):
        TrainConfig(method="rs-aaer", norm="l2", epsilon=128).resolve()
    with pytest.raises(ValueError, match="fixes an L-inf PGD step"):
        from aaer.attacks.protocols import get_protocol
        get_protocol("wong", norm="l2")


def test_l2_train_and_eval_end_to_end(tmp_path, capsys):
    from aaer.cli import main
    from tests.helpers.files import write_cifar10
    write_cifar10(str(tmp_path / "data"), np.random.default_rng(0), per_batch=8, n_test=8)
    run = tmp_path / "run"
    assert main(["train", "--norm", "l2", "--method", "rs-aaer", "--epsilon", "0.5",
                 "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--model",
                 "small-cnn", "--epochs", "1", "--batch-size", "8", "--eval-protocol",
                 "quick", "--probe-n", "4", "--no-progress", "--out-dir", str(run)]) == 0
    res = json.loads((run / "results.json").read_text())
    ev = res["evaluation"]
    assert ev["norm"] == "l2" and ev["eps"] == 0.5
    assert ev["results"]["pgd"]["norm"] == "l2" and ev["results"]["pgd"]["alpha"] == 0.125
    assert res["monitor"]["probe"]["norm"] == "l2"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["settings"]["method"]["norm"] == "l2"
    assert main(["eval", "--checkpoint", str(run), "--protocol", "quick"]) == 0
    out = capsys.readouterr().out
    assert "eps 0.5 (L2)" in out
    assert json.loads((run / "eval_quick.json").read_text())["norm"] == "l2"


# -- several processes evaluate one model -------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("norm, eps", [("linf", "0.5"), ("l2", "0.06")])
def test_two_processes_evaluate_exactly_as_one(tmp_path, norm, eps):
    """PGD-50-10 and AutoAttack standard on 2 gloo processes: the same results and the
    same per-point verdicts as one process; both processes exit by themselves."""
    import pickle

    from aaer.data.datasets import NORMALIZATION
    from aaer.models import build
    from tests.helpers.files import py2_pickle, write_cifar10
    _, _, test_x, _, _ = write_cifar10(str(tmp_path / "data"), np.random.default_rng(0),
                                       per_batch=8, n_test=24)
    torch.manual_seed(0)
    model = build("linear", 10, 3, 32, *NORMALIZATION["cifar10"]).eval()
    torch.save(model.net.state_dict(), tmp_path / "model.pt")
    # labels: the model's own predictions for 16 points (some robust at this eps), 8 wrong
    with torch.no_grad():
        pred = model(torch.from_numpy(test_x).float() / 255).argmax(1)
    labels = [int(p) if i % 3 else (int(p) + 1) % 10 for i, p in enumerate(pred)]
    batch = tmp_path / "data" / "cifar-10-batches-py" / "test_batch"
    content = pickle.loads(batch.read_bytes(), encoding="bytes")
    content[b"labels"] = labels
    batch.write_bytes(py2_pickle(content))
    flags = ["eval", "--checkpoint", str(tmp_path / "model.pt"), "--dataset", "cifar10",
             "--data-dir", str(tmp_path / "data"), "--model", "linear", "--protocol",
             "aaer", "--norm", norm, "--epsilon", eps, "--batch-size", "8", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "aaer", *flags, "--out",
                          str(tmp_path / "one.json")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "aaer", *flags, "--out",
                          str(tmp_path / "two.json")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert b["processes"] == 2 and "processes" not in a
    assert a["verdicts"] == b["verdicts"]
    for attack in ("clean", "fgsm", "pgd", "autoattack"):
        ra, rb = a["results"][attack], b["results"][attack]
        assert ra["acc"] == rb["acc"], attack
        assert ra.get("loss") == rb.get("loss"), attack
    assert a["results"]["autoattack"]["per_attack"] == b["results"]["autoattack"]["per_attack"]
    # something to shard: several batches, some points robust to PGD, some broken by it
    pgd_bits = a["verdicts"]["pgd"]
    assert "1" in pgd_bits and "0" in pgd_bits and a["n"] == 24
    assert not list(tmp_path.glob("autoattack_state_*"))       # every shard's state deleted
