"""Which failures are a user's mistake (aaer.errors.UsageError: exit 2, one line) and which
are bugs (any other exception: a traceback).

A sample of each kind of mistake goes through the real code path and must raise exactly
the UsageError class named (MissingFile for a missing file or folder, also a
FileNotFoundError; DownloadFailed, also a ConnectionError); a broken contract between
aaer's own functions must not be a UsageError. Last, the source itself: every plain
ValueError/TypeError/FileNotFoundError/RuntimeError raised in the modules below is one
of the internal invariants listed here, so a new check of user input cannot slip in as a
bug by accident.
"""
import ast
import os
import socket

import numpy as np
import pytest
import torch

from aaer.checks import choice, number
from aaer.errors import DownloadFailed, MissingFile, UsageError
from tests.helpers.files import save_image, write_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raised(fn, *args, **kw) -> BaseException:
    with pytest.raises(Exception) as e:
        fn(*args, **kw)
    return e.value


# -- a user's mistakes ---------------------------------------------------------------

@pytest.mark.parametrize("value,says", [
    (float("nan"), "invalid --epsilon nan: not a finite number (must be in (0, 255])"),
    (300.0, "invalid --epsilon 300.0: must be in (0, 255]"),
    ("8", "invalid --epsilon '8': not a number (must be in (0, 255])"),
    (True, "invalid --epsilon True: not a number (must be in (0, 255])")])
def test_a_bad_epsilon_is_a_usage_error_naming_the_value(value, says):
    e = raised(number, "--epsilon", value, low=0, high=255, low_open=True)
    assert type(e) is UsageError and str(e) == says


def test_a_bad_choice_is_a_usage_error():
    e = raised(choice, "--norm", "l1", ("linf", "l2"))
    assert type(e) is UsageError and str(e) == "invalid --norm 'l1'; valid: linf, l2"


def test_unknown_names_are_usage_errors():
    from aaer.attacks.protocols import get_protocol
    from aaer.data.datasets import canonical_name
    from aaer.methods import create_method
    from aaer.models import create_model
    for fn, args, says in ((canonical_name, ("cifar11",), "unknown data set 'cifar11'"),
                           (create_model, ("resnet9000",), "unknown model name 'resnet9000'"),
                           (create_method, ("aaer2", 8 / 255), "unknown method 'aaer2'"),
                           (get_protocol, ("lineage", "l1"), "invalid --norm 'l1'"),
                           (get_protocol, ("fast",), "unknown protocol 'fast'")):
        e = raised(fn, *args)
        assert type(e) is UsageError and str(e).startswith(says), (fn, str(e))


def test_a_bad_method_setting_is_a_usage_error():
    from aaer.methods import create_method
    e = raised(create_method, "n-aaer", 8 / 255, lamda3=-0.5)
    assert type(e) is UsageError and str(e) == "invalid lamda3 -0.5: must be >= 0"
    e = raised(create_method, "zerograd", 0.5, norm="l2")
    assert type(e) is UsageError and "has no L2 form" in str(e)


def test_a_missing_data_directory_is_a_missing_file(tmp_path):
    from aaer.data import load_dataset
    where = tmp_path / "nowhere"
    for name in ("cifar10", "mnist", "svhn", "imagefolder"):
        e = raised(load_dataset, name, str(where), cache_dir=str(tmp_path / "cache"))
        assert type(e) is MissingFile and isinstance(e, FileNotFoundError), name
        assert str(where) in str(e)


def test_a_damaged_image_file_is_a_usage_error_naming_it(tmp_path):
    from aaer.data import load_dataset
    root = tmp_path / "flowers"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("daisy", "rose"):
            save_image(str(root / split / c / "0.png"), rng.integers(0, 256, (8, 8, 3),
                                                                     dtype=np.uint8))
    (root / "train" / "rose" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    e = raised(load_dataset, "imagefolder", str(root), cache_dir=str(tmp_path / "cache"))
    assert type(e) is UsageError
    assert str(e).startswith(f"{root / 'train' / 'rose' / '1.png'} is not a readable image")


def test_a_damaged_cifar_batch_is_a_usage_error_naming_it(tmp_path):
    from aaer.data import load_dataset
    write_cifar10(str(tmp_path), np.random.default_rng(0))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    e = raised(load_dataset, "cifar10", str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert type(e) is UsageError and str(e).startswith(f"{batch} is not a readable CIFAR pickle")


def test_a_checkpoint_of_another_architecture_is_a_usage_error():
    from aaer.models import create_model, load_state_dict_into
    net = create_model("small-cnn", 10, 3, 32)
    other = create_model("small-cnn-32", 10, 3, 32).state_dict()
    e = raised(load_state_dict_into, net, other)
    assert type(e) is UsageError
    assert str(e).startswith("state dict does not fit SmallCNN") and "shape mismatches" in str(e)
    assert "it fits create_model('small-cnn-32', num_classes=10" in str(e)
    e = raised(load_state_dict_into, net, {"model": other, "epoch": 3})
    assert type(e) is UsageError and "pass state['model']" in str(e)


def test_a_damaged_autoattack_state_file_is_a_usage_error(tmp_path):
    from aaer.attacks.autoattack import AutoAttack
    state = tmp_path / "aa_state.pt"
    state.write_bytes(b"not a torch file")
    net = create_tiny_linear()
    aa = AutoAttack(net, eps=8 / 255, state_path=str(state), batch_size=4)
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    e = raised(aa.run, x, y)
    assert type(e) is UsageError and str(e).startswith(f"state_path {state} is not a readable")


def test_an_unreachable_download_is_download_failed(tmp_path):
    from aaer.data.download import download_file
    with socket.socket() as s:                       # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = raised(download_file, f"http://127.0.0.1:{port}/x.tar.gz", str(tmp_path / "x.tar.gz"),
               "0" * 32, timeout=5)
    assert type(e) is DownloadFailed and isinstance(e, ConnectionError)
    assert os.listdir(tmp_path) == []


def test_suite_and_export_mistakes_are_usage_errors(tmp_path):
    from aaer.experiments.reproduce import build_runs
    from aaer.export import export_run
    e = raised(build_runs, str(tmp_path / "grid.json"), 1)
    assert type(e) is MissingFile and "suite file" in str(e)
    (tmp_path / "grid.json").write_text('{"methods": ["rs-aaer"], "eps": [8], "lr": 1}')
    e = raised(build_runs, str(tmp_path / "grid.json"), 1)
    assert type(e) is UsageError and "unknown keys ['lr']" in str(e)
    e = raised(export_run, str(tmp_path), str(tmp_path / "w.pt"))
    assert type(e) is UsageError and "must end with .safetensors" in str(e)
    e = raised(export_run, str(tmp_path / "no-run"), str(tmp_path / "w.safetensors"))
    assert type(e) is MissingFile and "no such run directory" in str(e)


def create_tiny_linear():
    """A 3-class linear model on 1x4x4 images, in eval mode."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()


# -- bugs: contracts between aaer's own functions -----------------------------------------

def test_broken_internal_contracts_are_not_usage_errors():
    from aaer.attacks.apgd import check_inputs
    from aaer.data.loader import BatchLoader
    from aaer.methods.aaer import AAER
    from aaer.methods.base import with_defaults
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    bugs = [
        (BatchLoader, (x, torch.zeros(3, dtype=torch.long), 2), {"shuffle": False}, ValueError),
        (BatchLoader, (x[0], torch.zeros(4, dtype=torch.long), 2), {"shuffle": False},
         ValueError),
        (with_defaults, (AAER.__init__,), {"lamda4": 1.0}, TypeError),
        (check_inputs, (torch.full((2, 3), 2.0), torch.tensor([0, 1])), {}, ValueError),
    ]
    for fn, args, kw, kind in bugs:
        e = raised(fn, *args, **kw)
        assert isinstance(e, kind) and not isinstance(e, UsageError), (fn, e)


# -- the source: every other raise is a listed internal invariant --------------------------

CHECKED = ["aaer/checks.py", "aaer/io.py", "aaer/errors.py", "aaer/threat.py", "aaer/data",
           "aaer/models", "aaer/methods", "aaer/attacks", "aaer/evaluation.py",
           "aaer/reporting", "aaer/experiments", "aaer/export.py"]
PLAIN = {"ValueError", "TypeError", "FileNotFoundError", "KeyError", "RuntimeError",
         "OSError", "ConnectionError", "IndexError"}
# (file, start of the message): raised only when aaer's own code breaks a contract
INTERNAL = {
    ("aaer/data/loader.py", "x must be images [N, C, H, W]"),       # tensors from aaer.data
    ("aaer/data/loader.py", "y must be labels [N]"),
    ("aaer/data/loader.py", "cannot batch an empty data set"),
    ("aaer/data/loader.py", "need 0 <= rank < world_size"),        # from torchrun's env
    ("aaer/data/streaming.py", "FileImages takes slices"),
    ("aaer/data/streaming.py", "need one label per image"),
    ("aaer/models/normalize.py", "net must be a torch.nn.Module"),
    ("aaer/models/loading.py", "net must be a torch.nn.Module"),
    ("aaer/models/registry.py", "model name must be a non-empty string"),   # register_model
    ("aaer/models/registry.py", "model name "),                    # ... registered twice
    ("aaer/methods/base.py", "with_defaults: "),                   # a variant's definition
    ("aaer/attacks/apgd.py", "x must be a float tensor"),          # check_inputs: tensors
    ("aaer/attacks/apgd.py", "y must be an integer tensor"),
    ("aaer/attacks/apgd.py", "x must have a batch dimension"),
    ("aaer/attacks/apgd.py", "x must be pixels in [0,1]"),
    ("aaer/attacks/autoattack.py", "x is empty"),
    ("aaer/attacks/square.py", "Square needs image batches"),
    ("aaer/experiments/executors.py", "aaer train for "),          # a failed run: exit 1
    ("aaer/experiments/executors.py", "packed runs failed: "),     # a packed job's runs failed
    # method state read back from a checkpoint or rewind point: build_trainer turns a
    # mismatch into DamagedFile naming checkpoint.pt; inside the method it is a contract
    ("aaer/methods/base.py", "per-example state has slots "),
    ("aaer/methods/base.py", "per-example state "),
    ("aaer/methods/cs.py", ""),                                   # ... lacks u, beta, ...
    ("aaer/methods/liet.py", "liet state lacks 'li'"),
    ("aaer/methods/uap.py", ""),                                  # ... state lacks / differ
    ("aaer/methods/uap.py", "fgsm-fuap state "),
    # a method's own code: a parameter it names, the loop's loans, a bank's image shape
    ("aaer/methods/base.py", "no parameter named "),
    ("aaer/methods/lap.py", ""),                                  # the context lends no optimiser
    ("aaer/methods/liet.py", "liet: the label information holds images of shape "),
    ("aaer/methods/prior.py", "factor label smoothing needs at least 2 classes"),
}


def _files():
    for entry in CHECKED:
        full = os.path.join(ROOT, entry)
        if os.path.isfile(full):
            yield entry
        for here, _, names in os.walk(full):
            for n in sorted(names):
                if n.endswith(".py"):
                    yield os.path.relpath(os.path.join(here, n), ROOT)


def _message_start(call: ast.Call) -> str:
    if not call.args:
        return ""
    a = call.args[0]
    if isinstance(a, ast.Constant) and isinstance(a.value, str):
        return a.value
    if isinstance(a, ast.JoinedStr):
        out = ""
        for part in a.values:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                break
            out += part.value
        return out
    return ""


def plain_raises(path: str, source: str) -> list[tuple[str, str]]:
    """(file, message start) of every `raise <plain builtin error>(...)` in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                isinstance(node.exc.func, ast.Name) and node.exc.func.id in PLAIN:
            out.append((path, _message_start(node.exc)))
    return out


def test_every_plain_error_in_these_modules_is_a_listed_internal_invariant():
    found = [r for f in _files() for r in plain_raises(f, open(os.path.join(ROOT, f)).read())]
    unlisted = [f"{f}: {m!r}" for f, m in found
                if not any(f == lf and m.startswith(lm) for lf, lm in INTERNAL)]
    assert not unlisted, ("a user's mistake raises aaer.errors.UsageError; an internal "
                          "invariant is listed in INTERNAL:\n" + "\n".join(unlisted))
    stale = [e for e in INTERNAL if not any(f == e[0] and m.startswith(e[1]) for f, m in found)]
    assert not stale, f"listed but no longer raised: {stale}"
    assert len(found) == 32      # three entries above cover two or three sites each


def test_the_raise_finder_finds_a_plain_value_error():
    src = 'def f(x):\n    if x:\n        raise ValueError(f"bad {x}")\n    raise UsageError("u")\n'
    assert plain_raises("m.py", src) == [("m.py", "bad ")]
