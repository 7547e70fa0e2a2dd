"""--normalize: the model's input normalisation is the data set's, or none (mean 0, std 1:
the network sees the raw pixels, as the FastAT Benchmark's models do), in training, in
config.json and when a run's model is loaded again (aaer eval, aaer.assess.load_model)."""
import json

import pytest
import torch

from aaer.assess import load_model
from aaer.cli import main
from aaer.errors import UsageError
from aaer.models import input_stats
from aaer.train import build_trainer, train
from tests.helpers.tiny import tiny_config, tiny_dataset


def test_input_stats():
    assert input_stats((0.5, 0.4), (0.2, 0.1)) == ((0.5, 0.4), (0.2, 0.1))
    assert input_stats((0.5, 0.4, 0.3), (0.2, 0.1, 0.3), "none") == ((0.0,) * 3, (1.0,) * 3)
    with pytest.raises(UsageError, match="--normalize 'raw'; valid: dataset, none"):
        input_stats((0.5,), (0.2,), "raw")


def test_normalize_none_trains_and_reloads_on_raw_pixels(tmp_path):
    ds = tiny_dataset(n_train=16, n_test=8, size=16)
    x = torch.rand(4, 3, 16, 16)
    t = build_trainer(tiny_config(tmp_path / "b", normalize="none", epochs=1), ds)
    assert t.model.mean.flatten().tolist() == [0.0] * 3 and t.model.std.flatten().tolist() == [1.0] * 3
    t.model.eval()
    with torch.no_grad():                      # (x - 0) / 1 is x, bit for bit
        assert torch.equal(t.model(x), t.model.net(x))
    out = tmp_path / "run"
    train(tiny_config(out, normalize="none", epochs=1), ds)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["mean"] == [0.0] * 3 and cfg["data"]["std"] == [1.0] * 3
    assert cfg["settings"]["model"]["normalize"] == "none"
    m = load_model(str(out), dataset=ds)
    assert m.mean.flatten().tolist() == [0.0] * 3 and m.std.flatten().tolist() == [1.0] * 3
    # the default keeps the data set's statistics
    out2 = tmp_path / "run2"
    train(tiny_config(out2, epochs=1), ds)
    assert json.loads((out2 / "config.json").read_text())["data"]["mean"] == [0.5] * 3
    assert load_model(str(out2), dataset=ds).std.flatten().tolist() == [0.25] * 3


def test_bad_normalize_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--normalize", "raw", "--out-dir", "x"])
    assert e.value.code == 2
    assert "--normalize: invalid choice: 'raw' (choose from 'dataset', 'none')" in \
        capsys.readouterr().err
