"""aaer: fast single-step adversarial training without catastrophic overfitting.

AAER (Abnormal Adversarial Examples Regularization, NeurIPS 2023), the baselines it is
compared against, and an evaluation suite, behind one training loop and one CLI.

    import aaer
    model = aaer.load_model("runs/r1")                       # or your own nn.Module
    report = aaer.evaluate(model, dataset="cifar10", epsilon=8, protocol="autoattack")
    results = aaer.train(aaer.TrainConfig(method="rs-aaer", epsilon=16, out_dir="runs/r2"))

The names below are loaded on first use, so that `import aaer` (and every `aaer --help`)
stays free of torch.
"""

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "train": ("aaer.training", "train"),            # train a run, return its results
    "resume": ("aaer.training", "resume"),          # continue an interrupted run
    "TrainConfig": ("aaer.training", "TrainConfig"),
    "evaluate": ("aaer.assess", "evaluate"),        # a model or a path under a protocol
    "load_model": ("aaer.assess", "load_model"),    # a run dir, model.pt, .pth, export
    "resolve": ("aaer.config", "resolve"),          # a request -> the run it trains
    "RunConfig": ("aaer.config", "RunConfig"),
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'aaer' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
