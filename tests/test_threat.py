"""aaer.threat, the one home of the threat model's facts: the norms, --epsilon in pixel
units, and the checks of a norm's name and of an L2 radius."""
import pytest

from aaer.errors import UsageError
from aaer.threat import AA_NORMS, L2_EPS_MAX, NORMS, check_l2_radius, check_norm, pixel_eps


def test_the_norms_and_autoattacks_names_for_them():
    assert NORMS == ("linf", "l2")
    assert AA_NORMS == {"linf": "Linf", "l2": "L2"} and tuple(AA_NORMS) == NORMS


def test_pixel_eps_divides_linf_by_255_and_keeps_l2():
    assert pixel_eps(8, "linf") == 8 / 255 and pixel_eps(16.0, None) == 16 / 255
    assert pixel_eps(0.5, "l2") == 0.5 and pixel_eps(2, "l2") == 2.0


def test_check_norm_names_the_setting_and_the_valid_norms():
    assert [check_norm(n) for n in NORMS] == list(NORMS)
    with pytest.raises(UsageError) as e:
        check_norm("Linf", "--norm")
    assert str(e.value) == "invalid --norm 'Linf'; valid: linf, l2"


def test_check_l2_radius_refuses_an_linf_style_number_under_l2_only():
    check_l2_radius(L2_EPS_MAX, "l2")
    check_l2_radius(128.0, "linf")
    with pytest.raises(UsageError) as e:
        check_l2_radius(128.0, "l2")
    assert str(e.value) == ("invalid --epsilon 128.0 with --norm l2: the L2 radius is in pixel "
                            "units, e.g. 0.5 (128/255 = 0.502), at most 16; 128/255 would be "
                            "--epsilon 0.502")
