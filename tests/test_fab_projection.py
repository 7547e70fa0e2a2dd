"""FAB's hyperplane-box projection: exact rational optima, and the official code's conventions.

The projection solves min ||d|| s.t. w.(t+d) = b, 0 <= t+d <= 1. Where the box cannot reach
the plane it returns the box corner closest to it. aaer computes it as the official
fab_projections.py (fra31/auto-attack a392200) does; the tests that pin the official
conventions name the implementation each one rules out.
"""

from fractions import Fraction

import pytest
import torch

from aaer.attacks.fab import project_hyperplane_box


def _saturating_root(breaks, weights, tau):
    """Exact smallest lam >= 0 with sum_i weights_i min(lam, breaks_i) = tau, or None when
    even lam = max(breaks) falls short (the sum only grows, piecewise linearly)."""
    if sum(wt * r for wt, r in zip(weights, breaks)) < tau:
        return None
    lo, done = Fraction(0), Fraction(0)             # done = the sum at lam = lo
    for r in sorted(set(breaks)):
        slope = sum(wt for wt, ri in zip(weights, breaks) if ri > lo)
        if slope and done + slope * (r - lo) >= tau:
            return lo + (tau - done) / slope
        done += slope * (r - lo)
        lo = r
    return lo


def exact_projection(t, w, b, norm):
    """(d, kind) in exact rationals. Lowering the gap c = w.t - b towards 0 moves x_i to the
    box face against sign(c) w_i, by at most room_i. Linf: with |d_i| <= lam the gap closes
    by at most sum |w_i| min(lam, room_i), attained only by d_i = -s_i min(lam, room_i), so
    the least such lam is the optimum and the optimiser is unique on w_i != 0. L2 (KKT):
    d_i = -s_i |w_i| min(mu, room_i / |w_i|), the gap closing by sum w_i^2 min(mu, .)."""
    c = sum(wi * ti for wi, ti in zip(w, t)) - b
    s = [(1 if c >= 0 else -1) * ((wi > 0) - (wi < 0)) for wi in w]   # +1: move down
    room = [ti if si > 0 else 1 - ti for si, ti in zip(s, t)]
    if c == 0:
        return [Fraction(0)] * len(t), "on the plane"
    if norm == "Linf":
        breaks, weights = room, [abs(wi) for wi in w]
        lam = _saturating_root(breaks, weights, abs(c))
        step = [min(lam, r) if lam is not None else r for r in room]
    else:
        nz = [wi != 0 for wi in w]
        breaks = [r / abs(wi) if z else Fraction(0) for r, wi, z in zip(room, w, nz)]
        mu = _saturating_root(breaks, [wi * wi for wi in w], abs(c))
        step = [abs(wi) * (min(mu, r) if mu is not None else r) for wi, r in zip(w, breaks)]
        lam = mu
    d = [-si * st if wi != 0 else Fraction(0) for si, st, wi in zip(s, step, w)]
    if lam is None:
        kind = "out of reach: corner"
    elif all(lam < r for r, wi in zip(breaks, w) if wi != 0):
        kind = "no coordinate at the box"
    elif lam == max(r for r, wi in zip(breaks, w) if wi != 0):
        kind = "plane touches the corner"
    else:
        kind = "some coordinates at the box"
    return d, kind


def _problem_rows(n=160, dim=6, seed=0):
    """8-bit pixels (many tied rooms, pixels at 0 and 1), integer weights with zeros and ties,
    and gaps from 0 to beyond the corner; float64 values taken exactly as rationals."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 256, (n, dim), generator=g).double() / 255
    t[:, 0] = torch.where(torch.arange(n) % 2 == 0, 0., 1.)
    w = torch.randint(-3, 4, (n, dim), generator=g).double()
    capacity = (w.abs() * 0.5).sum(1)
    gap = capacity * torch.rand(n, generator=g, dtype=torch.float64) * 2.5
    gap[::8] = 0
    b = (w * t).sum(1) - torch.where(torch.rand(n, generator=g) < .5, gap, -gap)
    return t, w, b


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_equals_the_exact_rational_optimum(norm):
    """Every branch (on the plane, nothing saturated, some at the box, exactly the corner,
    out of reach) against the exact optimum: rules out a wrong breakpoint bracket, a wrong
    direction or room, a missing clamp, and anything but the corner out of reach."""
    t, w, b = _problem_rows()
    d = project_hyperplane_box(t, w, b, norm)
    kinds = set()
    for i in range(len(t)):
        q = lambda v: [Fraction(float(x)) for x in v]
        want, kind = exact_projection(q(t[i]), q(w[i]), Fraction(float(b[i])), norm)
        kinds.add(kind)
        assert torch.allclose(d[i], torch.tensor([float(x) for x in want], dtype=torch.float64),
                              rtol=0, atol=1e-12), (i, kind)
        x = t[i] + d[i]      # L2's corner is (room / |w|) |w|: the box up to rounding
        assert x.min() >= -1e-15 and x.max() <= 1 + 1e-15
    assert kinds == {"on the plane", "no coordinate at the box", "some coordinates at the box",
                     "out of reach: corner"}


def test_linf_projection_has_no_floor_on_the_weights():
    """The L-inf problem is unchanged by scaling (w, b): a gradient of norm 1e-13 is projected
    as one of norm 1. Rules out dividing by max(sum |w|, 1e-12) (the earlier aaer code gave
    d = (-0.03, 0.03) here)."""
    t = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    for scale in (1., 1e-13):
        w = scale * torch.tensor([[1., -2.]], dtype=torch.float64)
        b = scale * torch.tensor([-0.8], dtype=torch.float64)   # gap 0.3 scale; lam 0.1
        d = project_hyperplane_box(t, w, b, "Linf")
        assert torch.allclose(d, torch.tensor([[-0.1, 0.1]], dtype=torch.float64),
                              rtol=0, atol=1e-12)


def test_l2_projection_has_no_floor_on_the_weights():
    """w = 1e-7 (1, 2) (every |w_i| >= 1e-8): d = -mu w with mu = gap / |w|^2 = 1e6, although
    |w|^2 = 5e-14. Rules out dividing by max(sum w^2, 1e-12) (earlier: 20x too short)."""
    t = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    w = 1e-7 * torch.tensor([[1., 2.]], dtype=torch.float64)
    b = torch.tensor([1e-7], dtype=torch.float64)             # gap w.t - b = 5e-8
    d = project_hyperplane_box(t, w, b, "L2")
    assert torch.allclose(d, torch.tensor([[-0.1, -0.2]], dtype=torch.float64),
                          rtol=0, atol=1e-12)


def test_l2_weight_exactly_1e8_saturates_but_never_moves():
    """The official code has a box break r = room/|w| for |w| >= 1e-8 but moves only
    |w| > 1e-8. t = (.5, .5), w = (1, 1e-8): gap 0.1 gives d = (-0.1, 0) with the second
    exactly 0; gap 0.6 is beyond what the first can close alone, so the corner (-0.5, 0).
    Rules out one threshold for both (earlier: d_2 = -1e-9, and the corner (-0.5, -0.5))."""
    t = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    w = torch.tensor([[1., 1e-8], [1., 1e-8]], dtype=torch.float64)
    b = (w * t).sum(1) - torch.tensor([0.1, 0.6], dtype=torch.float64)
    d = project_hyperplane_box(t, w, b, "L2")
    assert d[:, 1].eq(0).all()
    assert torch.allclose(d[:, 0], torch.tensor([-0.1, -0.5], dtype=torch.float64),
                          rtol=0, atol=1e-15)


def test_l2_weights_below_1e8_share_the_multiplier_but_stay():
    """Coordinates with |w| < 1e-8 never reach the box (break 1e12) and their w^2 counts in
    the multiplier's equation, but they are not moved. w = (1e-6, 5e-9 x4), gap 2.0002e-7:
    mu = gap / (1e-12 + 4 * 2.5e-17) = 2e5, so d_1 = -0.2 and the rest 0. Rules out leaving
    the small weights out of the equation (earlier: d_1 = -0.20002)."""
    t = torch.full((1, 5), 0.5, dtype=torch.float64)
    w = torch.tensor([[1e-6, 5e-9, 5e-9, 5e-9, 5e-9]], dtype=torch.float64)
    b = (w * t).sum(1) - 2.0002e-7
    d = project_hyperplane_box(t, w, b, "L2")
    assert d[0, 1:].eq(0).all()
    assert d[0, 0].item() == pytest.approx(-0.2, abs=1e-12)


def test_l2_free_weight_lost_to_rounding_gives_no_step():
    """The official code takes the free weight past a break as total - cumulative sum and,
    where that is 0, sets mu = 0: no step at all. w = (1e4, 1e4, 1.5e-8), t = .5, gap
    1e4 + 5e-9: the two large weights saturate (closing 1e4), the small one must close the
    rest, but 2e8 + 2.25e-16 - 2e8 = 0 in float64, so d = 0 (the exact projection would be
    (-0.5, -0.5, -1/3)). Reproduced on purpose so that FAB's iterates match the official
    ones; rules out summing the free weight directly (the earlier code gave a step)."""
    t = torch.full((1, 3), 0.5, dtype=torch.float64)
    w = torch.tensor([[1e4, 1e4, 1.5e-8]], dtype=torch.float64)
    b = (w * t).sum(1) - (1e4 + 5e-9)
    assert project_hyperplane_box(t, w, b, "L2").eq(0).all()


# float32 rows and the official projection's output, bit for bit (projection_linf /
# projection_l2 of fra31/auto-attack a392200 run on these inputs on x86-64). Tied rooms make
# the bracket and the order of the sums matter in the last bit, which FAB's 100 iterations
# amplify (the earlier aaer projection differed here by 3e-8 and 9e-8).
OFFICIAL_BITS = {
    "Linf": ([243, 197, 254, 79, 175], [2.26, -0.92, -0.23, 2.35, -1.11], 2.8100783824920654,
             [0.047058820724487305, -0.33050912618637085, -0.33050912618637085,
              0.33050912618637085, -0.33050912618637085]),
    "L2": ([43, 186, 127, 23, 187], [0.41, 0.60, -0.82, 0.52, 0.41], 1.3659608364105225,
           [0.24287359416484833, 0.270588219165802, -0.48574718832969666,
            0.3080348074436188, 0.24287359416484833]),
}


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_matches_the_official_bits_in_float32(norm):
    """Rules out any other order of the same arithmetic (a different sort, bracket search,
    or sum): FAB/FAB-T then drift from the official iterates."""
    pixels, w, b, official = OFFICIAL_BITS[norm]
    t = (torch.tensor([pixels], dtype=torch.float64) / 255).float()
    d = project_hyperplane_box(t, torch.tensor([w]), torch.tensor([b]), norm)
    assert torch.equal(d, torch.tensor([official]))
