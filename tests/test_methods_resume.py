"""Every registered method resumes exactly: a run stopped by SIGTERM inside its second
epoch and resumed ends with the weights, method state and per-example memory of the
uninterrupted run, bit for bit (CPU, one thread)."""
import pytest

from aaer.methods import METHODS
from aaer.runs import read_checkpoint
from aaer.training import TrainConfig, train
from tests.helpers.tiny import same_state, stopped_and_resumed, tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

# methods whose defaults cost many passes per step: fewer for the test
LIGHTER = {"pgd": {"steps": 2}, "free": {"replays": 2}}


def _cfg(out, name):
    return TrainConfig(out_dir=str(out), model="small-cnn", method=name,
                       method_hparams=LIGHTER.get(name, {}), epsilon=8.0, epochs=2,
                       batch_size=8, lr_max=0.05, device="cpu", eval_protocol=None,
                       progress=False, seed=1)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_resumes_bitwise_mid_epoch(name, tmp_path):
    ds = tiny_dataset(n_train=32, n_test=8, size=8, classes=4, learnable=True)
    train(_cfg(tmp_path / "ref", name), ds)
    # stopped inside its last epoch (epochs_for may shorten the run: Free-AT)
    b = stopped_and_resumed(_cfg(tmp_path / "cut", name), ds)
    a = read_checkpoint(str(tmp_path / "ref" / "checkpoint.pt"))
    for part in ("model", "method", "memory", "averaged"):
        assert same_state(a.get(part), b.get(part)), part
