"""What is generated from the registries and the schema stays in step with them: the
torch-free catalog (aaer/catalog.py) behind every --help and `aaer methods | models |
datasets`, the README's settings tables, and each default's help text, which names the
tables (data sets, methods) that change it. And those commands import no torch."""
import os
import subprocess
import sys

import pytest

from aaer import catalog
from aaer.config import catalog_build, reference
from aaer.config.schema import FLAT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_catalog_is_what_the_registries_say():
    """Registering a method, a model or a protocol without regenerating the catalog fails
    here (python -m aaer.config.catalog_build rewrites it)."""
    assert open(catalog_build.PATH).read() == catalog_build.render()


def test_the_readme_settings_tables_are_the_schemas():
    """A setting added, renamed or re-documented without regenerating the README's tables
    fails here (python -m aaer.config.reference rewrites them)."""
    readme = open(reference.README).read()
    assert reference.render(readme) == readme
    for name in reference.tables():
        assert f"<!-- settings:{name} -->" in readme, name


def test_each_default_names_the_tables_that_change_it():
    """The data sets' training defaults and the methods' changes to training appear in the
    help text of the setting they change (e.g. --lr-max: svhn 0.05, gradalign 0.3)."""
    assert catalog.DEFAULTS_BY["lr_max"][:2] == [("svhn", 0.05), ("gradalign", 0.3)]
    for flat, changes in catalog.DEFAULTS_BY.items():
        if flat not in FLAT:
            continue                    # a method keyword: the method's own help
        text = FLAT[flat][1].help_text()
        for who, value in changes:
            assert f"{who} {value}" in text, (flat, who, text)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"],
                                  ["reproduce", "--help"], ["methods"], ["models"],
                                  ["datasets"]])
def test_help_and_lists_import_no_torch(argv):
    """`aaer --help`, `aaer <command> --help` and the lists answer without importing torch
    (importing it takes seconds; they take a fraction of one)."""
    code = ("import sys\nfrom aaer.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n"
            "    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH"
    if argv == ["methods"]:
        assert len([l for l in out.stdout.splitlines() if l and not l.startswith(" ")]) \
            == len(catalog.METHODS) + 1
