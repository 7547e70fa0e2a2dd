"""The variants of one method are its constructor with other defaults (methods.base.
with_defaults), and GradAlign and ELLE share one constructor (methods.regularised): the
defaults are the papers' values, the keywords the parent's, and the checks the same."""
import inspect

import pytest

from aaer.methods import METHODS, create_method
from aaer.methods.aaer import AAER, N_LAMBDAS, RS_LAMBDAS, SEED_DEFAULTS
from aaer.methods.base import with_defaults
from aaer.methods.fgsm import SingleStepAttack

EPS = 8 / 255
SINGLE = ["alpha", "delta_init", "clamp", "warmup_epochs", "norm"]
AAER_KW = ["alpha", "delta_init", "clamp", "warmup_epochs", "lamda1", "lamda2", "lamda3",
           "mode", "norm"]


@pytest.mark.parametrize("name,keywords,defaults", [
    ("fgsm", SINGLE, dict(alpha=1.0, delta_init="zero", clamp=1)),
    ("rs-fgsm", SINGLE, dict(alpha=1.25, delta_init="random", clamp=1)),
    ("n-fgsm", SINGLE, dict(alpha=1.0, delta_init="random", clamp=0)),
    ("rs-aaer", AAER_KW, dict(alpha=1.25, delta_init="random", clamp=1, lamda1=1.0,
                              lamda2=RS_LAMBDAS[("cifar10", 8)][0],
                              lamda3=RS_LAMBDAS[("cifar10", 8)][1], mode="reference")),
    ("n-aaer", AAER_KW, dict(alpha=1.0, delta_init="random", clamp=0, lamda1=1.0,
                             lamda2=N_LAMBDAS[("cifar10", 8)][0],
                             lamda3=N_LAMBDAS[("cifar10", 8)][1], mode="reference")),
])
def test_variants_take_the_parents_keywords_with_the_papers_defaults(name, keywords,
                                                                     defaults):
    cls = METHODS[name]
    assert cls.keywords() == keywords
    hp = cls(EPS).hparams()
    assert hp == {"eps": EPS, "warmup_epochs": 0.0, "norm": "linf", **defaults}
    params = inspect.signature(cls.__init__).parameters
    assert {k: params[k].default for k in defaults} == defaults


def test_a_variants_constructor_binds_like_its_parents():
    fgsm = METHODS["fgsm"](EPS, 0.5, "random")          # positionally, in the parent's order
    assert (fgsm.alpha, fgsm.delta_init, fgsm.clamp) == (0.5, "random", 1)
    n = METHODS["n-aaer"](EPS, lamda3=2.0, norm="l2")
    assert (n.lamda2, n.lamda3, n.norm, n.clamp) == (1.5, 2.0, "l2", 0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lamda'"):
        METHODS["fgsm"](EPS, lamda=1.0)
    with pytest.raises(ValueError, match="alpha.*-1"):   # the parent's checks run
        METHODS["rs-aaer"](EPS, alpha=-1.0)


def test_with_defaults_refuses_a_keyword_the_constructor_lacks():
    with pytest.raises(TypeError, match="takes no lamda9"):
        with_defaults(AAER.__init__, lamda9=1.0)


def test_the_seed_scripts_defaults_are_aaers_own():
    params = inspect.signature(AAER.__init__).parameters
    assert {k: params[k].default for k in SEED_DEFAULTS} == SEED_DEFAULTS
    assert AAER.published("cifar10", 8) is None
    assert inspect.signature(SingleStepAttack.__init__).parameters["alpha"].default == 1.25


@pytest.mark.parametrize("name,weight,eps8,eps16", [
    ("gradalign", "GradAlign weight", 0.2, 2.0), ("elle", "ELLE weight", 1000.0, 5000.0)])
def test_gradalign_and_elle_share_one_constructor(name, weight, eps8, eps16):
    cls = METHODS[name]
    assert cls.keywords() == ["lamda", "noise", "alpha", "warmup_epochs", "norm"]
    assert cls(EPS).lamda == pytest.approx(eps8)
    assert cls(16 / 255).lamda == pytest.approx(eps16)
    assert cls(0.5, norm="l2").lamda == pytest.approx(eps8)     # L2: the eps-8/255 value
    m = cls(EPS, lamda=3.0, noise="n")
    assert m.hparams() == {"eps": EPS, "lamda": 3.0, "noise": "n", "alpha": 1.0,
                           "warmup_epochs": 0.0, "norm": "linf"}
    assert (m.delta_init, m.clamp) == ("random", 0)
    with pytest.raises(ValueError, match=rf"invalid lamda \({weight}\) -1.0: must be >= 0"):
        create_method(name, EPS, lamda=-1.0)
