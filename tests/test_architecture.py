"""The package's layers: imports point one way (leaves <- config <- runs <- engine <-
evaluation <- monitor <- reporting <- the train door <- experiments <- cli), no import
cycle, counting imports inside functions, and the model registry imports no architecture.

The import graph is read from the source (ast), not from what happens to be imported at
run time: ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg`` itself.
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "aaer")

# module prefix -> layer; a module may import only modules of its own layer or below
LAYERS = [
    (0, ("aaer", "aaer.checks", "aaer.errors", "aaer.io", "aaer.threat")),
    (1, ("aaer.data", "aaer.models", "aaer.methods", "aaer.attacks")),
    (2, ("aaer.config",)),
    (3, ("aaer.runs",)),
    (4, ("aaer.engine",)),
    (5, ("aaer.evaluation",)),
    (6, ("aaer.monitor", "aaer.selection")),
    (7, ("aaer.reporting", "aaer.export")),
    (8, ("aaer.training", "aaer.assess")),
    (9, ("aaer.experiments",)),
    (10, ("aaer.cli", "aaer.__main__")),
]
LEAVES = ("aaer.data", "aaer.models", "aaer.methods", "aaer.attacks")


def modules() -> dict[str, str]:
    out = {}
    for here, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith(".py"):
                rel = os.path.relpath(os.path.join(here, n), os.path.dirname(ROOT))
                mod = rel[:-3].replace(os.sep, ".")
                out[mod[:-len(".__init__")] if mod.endswith(".__init__") else mod] = \
                    os.path.join(here, n)
    return out


MODULES = modules()


def imports_of(mod: str) -> set[str]:
    path = MODULES[mod]
    package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):             # every import, inside functions too
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module
            names = [f"{src}.{a.name}" if f"{src}.{a.name}" in MODULES else src
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n == "aaer" or n.startswith("aaer.")}
    return {n for n in out if n in MODULES} - {mod}


GRAPH = {m: imports_of(m) for m in MODULES}


def layer(mod: str) -> int:
    best = None
    for n, prefixes in LAYERS:
        for p in prefixes:
            if mod == p or mod.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (n, len(p))
    assert best is not None, f"{mod} is in no layer: add it to LAYERS"
    return best[0]


def test_every_module_has_a_layer():
    for m in MODULES:
        layer(m)


def test_imports_point_down_the_layers():
    up = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
          for m, deps in GRAPH.items() for d in deps if layer(d) > layer(m)]
    assert not up, "\n".join(up)


def test_leaves_import_only_themselves_and_the_foundation():
    bad = []
    for m, deps in GRAPH.items():
        leaf = next((p for p in LEAVES if m == p or m.startswith(p + ".")), None)
        if leaf is None:
            continue
        bad += [f"{m} imports {d}" for d in deps
                if layer(d) == 1 and not (d == leaf or d.startswith(leaf + "."))]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):                       # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    """The oracle itself: a made-up two-module cycle is reported."""
    monkeypatch.setitem(GRAPH, "aaer.io", GRAPH["aaer.io"] | {"aaer.checks"})
    monkeypatch.setitem(GRAPH, "aaer.checks", GRAPH["aaer.checks"] | {"aaer.io"})
    with pytest.raises(AssertionError, match="aaer.checks"):
        test_no_import_cycle()


def test_model_registry_imports_no_architecture():
    assert {m for m in GRAPH["aaer.models.registry"] if m.startswith("aaer.models")} == set()
    assert GRAPH["aaer.models.registry"] <= {"aaer.errors"}      # its UsageError, nothing else


def test_only_the_run_directory_names_its_files():
    """The run directory's file names are written in aaer/runs.py and nowhere else."""
    names = ('"results.json"', '"metrics.jsonl"', '"checkpoint.pt"', '"config.json"',
             '"best_probe.pt"', '"probes.jsonl"', '"model.pt"', '"train.log"')
    found = [f"{m}: {n}" for m, path in MODULES.items() if m != "aaer.runs"
             for n in names if n in open(path).read()]
    assert not found, found


# row fields whose names are also common words of other records (a probe's epoch, an
# evaluation's seconds, a schedule's lr, a report's n): the grep below cannot tell them apart
GENERIC_ROW_FIELDS = {"epoch", "seconds", "lr", "n"}


def test_only_the_run_directory_names_the_metrics_row_fields():
    """The metrics row's fields are written in aaer/runs.py (``Row``) and nowhere else."""
    from aaer.runs import Row
    fields = {v for k, v in vars(Row).items() if k.isupper() and isinstance(v, str)}
    assert {"probe_pgd_acc", "train_loss", "co_flag", "method_changes"} <= fields
    names = [q + f + q for f in sorted(fields - GENERIC_ROW_FIELDS) for q in ('"', "'")]
    found = [f"{m}: {n}" for m, path in MODULES.items() if m != "aaer.runs"
             for n in names if n in open(path).read()]
    assert not found, found


# -- the tests themselves ------------------------------------------------------------------

TESTS = os.path.dirname(os.path.abspath(__file__))


def imported_test_modules(source: str) -> list[str]:
    """The test modules (test_*.py, conftest) that ``source`` imports, however spelled:
    ``tests.test_x``, a bare ``test_x`` (pytest puts tests/ on sys.path), relative, or
    ``from tests import test_x``."""
    def is_test_module(name: str) -> bool:
        parts = name.split(".")
        parts = parts[1:] if parts[0] == "tests" else parts
        return bool(parts) and (parts[0].startswith("test_") or parts[0] == "conftest")

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if base and is_test_module(base):
                found.append(base)
            elif base in ("", "tests"):         # from tests import test_x; from . import
                found += [f"{base}.{a.name}".lstrip(".") for a in node.names
                          if is_test_module(a.name)]
    return found


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers (or conftest fixtures), never in a test file:
    importing a test file runs its module-level code and collects its tests twice."""
    bad = []
    for name in sorted(os.listdir(TESTS)):
        if name.startswith("test_") and name.endswith(".py"):
            found = imported_test_modules(open(os.path.join(TESTS, name)).read())
            bad += [f"tests/{name} imports {m}" for m in found]
    assert not bad, "\n".join(bad)


def test_the_test_import_finder_finds_every_spelling():
    """The oracle itself: each way of importing a test module is found, helpers are not."""
    for line in ("from tests.test_data import write_cifar10", "import tests.test_resume",
                 "from test_data import tar_folder", "from .test_report import make_run",
                 "from tests import test_monitor", "from tests.conftest import TinyNet",
                 "def f():\n    from tests.test_monitor import _scripted"):
        assert imported_test_modules(line), line
    for line in ("from tests.helpers.files import write_cifar10", "import tests.helpers.tiny",
                 "from aaer.data import testing", "import pytest"):
        assert not imported_test_modules(line), line
