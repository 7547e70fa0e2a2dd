"""A user's mistake and a bug end differently: a UsageError is one line and exit 2; any
other exception keeps its traceback, says it is a bug in aaer (or that the system refused)
and exits 1. And TrainConfig.eps is the radius in pixel units for either norm."""
import pytest

from aaer.cli import failure_line, main
from aaer.training import TrainConfig


def test_a_usage_error_is_one_line_and_exit_2(capsys):
    assert main(["train", "--epsilon", "nan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid --epsilon nan" in err and "Traceback" not in err


def test_a_bug_keeps_its_traceback_says_so_and_exits_1(monkeypatch, capsys):
    """A ValueError from inside aaer is a bug, not a bad flag (the old CLI turned every
    ValueError into exit 2 without a traceback)."""
    import aaer.cli as cli

    def broken(ns, seed_script=False):
        raise ValueError("an invariant broke")
    monkeypatch.setattr(cli, "cmd_train", broken)
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: an invariant broke" in err
    assert err.strip().splitlines()[-1] == ("aaer: internal error: this is a bug in aaer, not "
                                            "a mistake in your settings; please report it "
                                            "with the traceback above")


def test_the_system_refusing_is_not_called_a_bug():
    line = failure_line(OSError(28, "No space left on device"))
    assert line.startswith("error: the system refused") and "bug" not in line


@pytest.mark.parametrize("norm,epsilon,eps", [("linf", 8.0, 8 / 255), ("l2", 0.5, 0.5)])
def test_trainconfig_eps_is_in_pixel_units_for_either_norm(norm, epsilon, eps):
    """TrainConfig.eps divided by 255 whatever the norm: an L2 radius of 0.5 became 0.002."""
    assert TrainConfig(epsilon=epsilon, norm=norm).eps == pytest.approx(eps)
