"""The CR attack (aaer.attacks.cr) on linear models, whose L-inf worst case is closed-form:
a point is breakable at radius r iff min_{j != y} (z_y - z_j - r * ||w_y - w_j||_1) < 0."""
import dataclasses
import math

import pytest
import torch

from aaer.attacks.cr import CRAttack, default_n_targets
from aaer.evaluation import PROTOCOLS, evaluate, format_table, get_protocol
from tests.helpers.tiny import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255


def linear(W, b):
    lin = torch.nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval(), lin


def worst_margin(lin, x, y, radius):
    """min over wrong j of the margin at the worst point of the radius-ball (box unbound)."""
    with torch.no_grad():
        z = lin(x.flatten(1))
        w = lin.weight
        m = z.gather(1, y[:, None]) - z - radius * (w[y][:, None, :] - w[None]).abs().sum(2)
        m[torch.arange(len(y)), y] = math.inf
    return m.min(1).values


def three_class(n=120, d=192, seed=0):
    """Class 1 sits close to class 0 (a high logit, a small L1 gap): cross-entropy steps
    chase it while class 2, further off, is the one that breaks some points."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(3, d, generator=g, dtype=torch.float64) * 0.1
    W[1] = W[0] + 0.3 * (W[1] - W[0])
    model, lin = linear(W, -0.5 * W.sum(1))
    x = 0.3 + 0.4 * torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, lin, x, y


def two_class_at(worst, eps=EPS, d=192, seed=0):
    """Two classes, y = 0, and points placed so that their worst-case margin at radius
    eps is exactly ``worst`` (moved along sign(w_0 - w_1); interior of the box)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(2, d, generator=g, dtype=torch.float64) * 0.1
    dw = W[0] - W[1]
    model, lin = linear(W, torch.stack([-0.5 * dw.sum(), torch.zeros((), dtype=W.dtype)]))
    x = 0.3 + 0.4 * torch.rand(len(worst), d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = lin(x)
    target = torch.tensor(worst, dtype=torch.float64) + eps * dw.abs().sum()
    x = x + (target - (z[:, 0] - z[:, 1]))[:, None] * dw.sign() / dw.abs().sum()
    assert 0.1 < float(x.min()) and float(x.max()) < 0.9   # 1.5 eps never meets the box
    x = x.view(-1, 3, 8, 8)
    return model, lin, x, torch.zeros(len(worst), dtype=torch.long)


class Recorder(torch.nn.Module):
    """Logs every input the attack queries, and whether it asked for a gradient."""

    def __init__(self, model):
        super().__init__()
        self.model, self.queries = model, []

    def forward(self, x):
        self.queries.append((x.detach().clone(), x.requires_grad))
        return self.model(x)


def test_breaks_exactly_the_points_breakable_in_the_eps_ball():
    """Rules out (a) taking a verdict at a relaxed iterate (points breakable only in the
    1.5*eps ball would fall), (b) a missing or untargeted second phase (the cross-entropy
    target search alone leaves breakable points standing here)."""
    model, lin, x, y = three_class()
    breakable = worst_margin(lin, x, y, 2 / 255) < 0
    in_band = ~breakable & (worst_margin(lin, x, y, 1.5 * 2 / 255) < 0)
    assert 20 < int((~breakable).sum()) < 100 and int(in_band.sum()) >= 10
    cr = CRAttack(model, eps=2 / 255, seed=0)
    x_adv = cr.perturb(x, y)
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    assert torch.equal(robust, ~breakable)
    assert cr.n_targets == 2 == default_n_targets(3)       # ceil(ln 3)
    # the first phase alone: PGD on the cross-entropy misses some breakable points
    cr.forwards = torch.zeros(len(y), dtype=torch.long)
    cr.backwards = torch.zeros_like(cr.forwards)
    searched, _ = cr._target_search(x, y, torch.Generator(), 0)
    with torch.no_grad():
        missed = (model(searched).argmax(1) == y) & breakable
    assert int(missed.sum()) >= 5


def test_pass_counts_pin_cycles_give_up_rule_and_restarts():
    """Per point, passes as the benchmark counts them, for worst-case margins m*:
    m* < 0 is broken by the first phase (<= 10 backward passes); m* = 0.01 and 0.04 are
    near misses (< 0.05) kept through all 5 cycles (s never below 0.05) and all 5 rounds:
    10 + 5 * 150 backward passes; m* = 0.3 is given up at the end of the second cycle's
    constrained third (0.3 > s = 1/4: iteration 49), m* = 0.2 at the third's (iteration 79),
    m* = 0.6 and 2 at the first's (iteration 19), none of them retried. Rules out a wrong
    cycle length, a missing give-up rule or floor on s, restarts of every robust point."""
    worst = [-0.3, -0.01, 0.01, 0.04, 0.3, 0.2, 0.6, 2.0]
    model, _, x, y = two_class_at(worst)
    cr = CRAttack(model, eps=EPS, seed=0)
    x_adv = cr.perturb(x, y)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).tolist()
    assert robust == [False, False] + [True] * 6
    assert cr.n_targets == 1 and cr.scales() == [0.5, 0.25, 0.125, 0.0625, 0.05]
    back = cr.backwards.tolist()
    assert back[0] <= 10 and back[1] <= 10
    assert back[2:] == [760, 760, 60, 90, 30, 30]
    # forwards: the start, 10 steps, then per round a ranking pass, a margin pass per
    # target and per iteration one pass plus one check in each cycle's relaxed third + 1
    assert cr.forwards[2] == 1 + 10 + 5 * (1 + 1 + 150 + 5 * 11)


def test_relaxed_iterates_reach_eps_times_one_plus_s_and_verdicts_stay_in_the_ball():
    """The queries of a near miss: in the first third of each cycle (and the first query
    after it) the iterate reaches exactly eps * (1 + s), s = 1/2, 1/4, 1/8, 1/16, 0.05;
    every other query and every check is in the eps-ball. Rules out no relaxation, a fixed
    or wrongly decayed one, and checks taken at relaxed iterates."""
    model, _, x, y = two_class_at([0.01])
    rec = Recorder(model).eval()
    CRAttack(rec, eps=EPS, seed=0).perturb(x, y)
    dev = [(float((q - x).abs().max()), grad) for q, grad in rec.queries]
    checks = [d for d, grad in dev if not grad]
    steps = [d for d, grad in dev if grad]
    assert len(steps) == 10 + 5 * 150
    assert max(checks) <= EPS * (1 + 1e-12)
    assert max(steps[:10]) <= EPS * (1 + 1e-12)                 # the target search
    for r in range(5):
        rnd = steps[10 + 150 * r: 10 + 150 * (r + 1)]
        for c, s in enumerate([0.5, 0.25, 0.125, 0.0625, 0.05]):
            cyc = rnd[30 * c: 30 * (c + 1)]
            assert max(cyc[:11]) == pytest.approx(EPS * (1 + s), rel=1e-12), (r, c)
            assert max(cyc[11:]) <= EPS * (1 + 1e-12), (r, c)


def test_result_lies_in_the_eps_ball_and_the_box():
    """Rules out returning a relaxed iterate or skipping the [0,1] clip (pixels at 0 and 1
    where the box binds, a curved model the attack breaks only in part)."""
    torch.manual_seed(0)
    model = TinyNet(freq=5.0, n_classes=4).eval()
    x = torch.rand(48, 3, 16, 16)
    x[:6] = 0.0
    x[6:12] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 1.5 / 255
    x_adv = CRAttack(model, eps=eps, n_iter=60, n_restarts=2, seed=0).perturb(x, y)
    with torch.no_grad():
        robust = float((model(x_adv).argmax(1) == y).float().mean())
    assert 0.1 < robust < 0.9
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_deterministic_given_the_seed_and_leaves_the_global_rng_alone():
    """Same seed and batch number: identical points; another seed or batch number: other
    noise. Rules out drawing from (or reseeding, as the benchmark does) torch's global RNG."""
    torch.manual_seed(0)
    model = TinyNet(freq=5.0, n_classes=4).eval()
    x = torch.rand(24, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    state = torch.get_rng_state()

    def run(seed=0, batch_index=0):
        return CRAttack(model, eps=1.5 / 255, n_iter=30, n_restarts=2,
                        seed=seed).perturb(x, y, batch_index=batch_index)

    a = run()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, run())
    assert not torch.equal(a, run(seed=1))
    assert not torch.equal(a, run(batch_index=1))


def test_bad_settings_and_l2_are_refused():
    """L2 is refused with the reason (the benchmark defines CR for L-inf only), so are bad
    settings; too many targets are cut to C - 1 with a warning."""
    model, _, x, y = two_class_at([0.3])
    with pytest.raises(ValueError, match="L2.*L-inf only.*cr_attack.py"):
        CRAttack(model, norm="L2", eps=0.5)
    with pytest.raises(ValueError, match="decay_steps=2 must be >= 3"):
        CRAttack(model, decay_steps=2)
    with pytest.raises(ValueError, match="seed=-1"):
        CRAttack(model, seed=-1)
    with pytest.raises(ValueError, match="n_iter=0"):
        CRAttack(model, n_iter=0)
    with pytest.raises(ValueError, match=r"pixels in \[0,1\]"):
        CRAttack(model).perturb(x + 1, y)
    with pytest.warns(UserWarning, match="CR: 3 target classes.*only 2"):
        cr = CRAttack(model, n_target_classes=3, n_iter=30, n_restarts=1)
        cr.perturb(x, y)
    assert cr.n_targets == 1
    with pytest.raises(ValueError, match="'cr' cannot run under --norm l2.*L-inf only"):
        get_protocol("fastat", norm="l2")
    with pytest.raises(ValueError, match="'cr' cannot run under --norm l2"):
        get_protocol("lineage", norm="l2", attacks=["clean", "cr"])
    assert get_protocol("lineage", norm="l2", attacks=["clean", "pgd"]).norm == "l2"


def ten_class(n=48, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(3 * 8 * 8, 10)
    with torch.no_grad():
        lin.weight.mul_(3.0)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    x = 0.1 + 0.8 * torch.rand(n, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    return model, lin, x, y


def test_evaluate_reports_cr_with_its_settings():
    """The report's cr entry: accuracy (the closed form's here), n, seed, protocol and the
    attack's settings and passes per point; the fastat bundle is the benchmark's. Rules out
    an entry that drops the settings a reader needs to compare numbers."""
    model, lin, x, y = ten_class()
    eps = 2 / 255
    rep = evaluate(model, x, y, eps, get_protocol("quick", attacks=["clean", "cr"]), seed=3)
    cr = rep["results"]["cr"]
    robust = int((worst_margin(lin, x, y, eps) > 0).sum())
    assert 10 < robust < 40
    assert round(cr["acc"] * 48) == robust
    assert (cr["n"], cr["seed"], cr["protocol"], cr["norm"], cr["eps"]) == \
        (48, 3, "quick+custom", "linf", eps)
    assert (cr["iterations"], cr["decay_steps"], cr["restarts"], cr["targets"]) == \
        (150, 30, 5, 3)
    assert cr["alpha"] == eps and cr["relaxation"] == [0.5, 0.25, 0.125, 0.0625, 0.05]
    assert cr["backwards_per_point"] > 10 and cr["forwards_per_point"] > cr["backwards_per_point"]
    assert rep["verdicts"]["cr"].count("1") == robust
    assert "cr " in format_table(rep) and "restarts=5" in format_table(rep)
    fastat = PROTOCOLS["fastat"]
    assert fastat.attacks == ("clean", "pgd", "cr", "autoattack")
    assert (fastat.pgd_steps, fastat.pgd_restarts, fastat.pgd_alpha(EPS)) == (50, 1, 2 / 255)
    assert fastat.n_eval is None and fastat.aa_version == "standard"
    assert "FastAT_Benchmark" in fastat.description


class OddBatches:
    """Process 1 of 2: owns batches 1, 3, ...; gathers only its own part."""

    rank, world_size = 1, 2

    @staticmethod
    def gather(obj):
        return [obj]

    @staticmethod
    def owns(k):
        return k % 2 == 1


def test_a_shard_sees_the_noise_a_single_process_sees():
    """CR's noise is seeded per batch number, so the process that evaluates batch 1 alone
    reaches the verdicts a single process reaches on it. Rules out a stream shared across
    batches (which would need skipping, as PGD's does)."""
    torch.manual_seed(0)
    model = TinyNet(freq=5.0, n_classes=4).eval()
    x = torch.rand(48, 3, 16, 16)
    with torch.no_grad():
        y = model(x).argmax(1)
    proto = get_protocol("quick", attacks=["cr"])
    proto = dataclasses.replace(proto, cr_iters=30, cr_restarts=2)
    one = evaluate(model, x, y, 1.5 / 255, proto, batch_size=16)["verdicts"]["cr"]
    odd = evaluate(model, x, y, 1.5 / 255, proto, batch_size=16,
                   shard=OddBatches())["verdicts"]["cr"]
    assert odd == one[16:32] and "0" in one and "1" in one


def test_cli_eval_runs_cr(tmp_path, capsys, monkeypatch):
    """`aaer eval --attacks clean,cr` writes the cr entry; under --norm l2 it exits 2 with
    the reason."""
    import json

    from aaer.cli import main
    from tests.helpers.files import linear_checkpoint_dir
    linear_checkpoint_dir(tmp_path, n_test=24)
    args = ["eval", "--checkpoint", str(tmp_path), "--protocol", "quick", "--n-eval", "24",
            "--attacks", "clean,cr", "--device", "cpu", "--seed", "1"]
    assert main(args) == 0
    assert "cr " in capsys.readouterr().out
    rep = json.loads((tmp_path / "eval_quick+custom.json").read_text())
    cr = rep["results"]["cr"]
    assert (cr["n"], cr["seed"], cr["targets"], cr["restarts"]) == (24, 1, 3, 5)
    assert cr["acc"] <= 1.0 and rep["verdicts"]["cr"].count("1") == round(cr["acc"] * 24)
    assert main(args + ["--norm", "l2", "--epsilon", "0.5"]) == 2
    assert "'cr' cannot run under --norm l2" in capsys.readouterr().err
