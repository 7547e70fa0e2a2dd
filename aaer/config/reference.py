"""The README's settings tables, generated from the schema (one table per section of a run,
one per command), so they cannot drift from what the CLI accepts:

    python -m aaer.config.reference            # rewrite the tables in README.md
    python -m aaer.config.reference --check    # exit 1 if README.md has drifted

Each table sits between ``<!-- settings:NAME -->`` and ``<!-- /settings:NAME -->`` in the
README; tests/test_catalog.py fails when one differs from what this module renders.
"""
from __future__ import annotations

import os
import re
import sys

from aaer.config.catalog_build import write_generated
from aaer.config.commands import COMMANDS
from aaer.config.flags import SECTION_TITLES
from aaer.config.schema import SECTIONS
from aaer.config.settings import Setting, settings_of

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "README.md")


def _cell(text: str) -> str:
    """Table-safe: pipes escaped, <placeholders> shown rather than read as HTML tags."""
    return (str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")
            .replace(">", "&gt;"))


def default_text(s: Setting) -> str:
    if s.default_text:
        return s.default_text
    if s.type is bool:
        return "on" if s.default else "off"
    return "none" if s.default is None else str(s.default)


def flag_text(s: Setting) -> str:
    if s.positional:
        return f"`{s.metavar or s.dest.upper()}`"
    flags = [s.negate or s.flag, *s.aliases]
    return ", ".join(f"`{f}`" for f in flags)


def table(settings) -> str:
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for _, s in settings:
        if not s.cli:
            continue
        what = s.help + (f" ({s.what()})" if s.choices is not None else "")
        rows.append(f"| {flag_text(s)} | {_cell(default_text(s))} | {_cell(what)} |")
    return "\n".join(rows)


def tables() -> dict[str, str]:
    """name -> markdown table: ``train-<section>`` for each section of a run, and each
    command's own settings by its name."""
    out = {f"train-{name}": f"*{SECTION_TITLES[name]}*\n\n" + table(settings_of(cls))
           for name, cls in SECTIONS.items()}
    out.update({name: table(settings_of(cls)) for name, cls in COMMANDS.items()})
    return out


def render(readme: str) -> str:
    """``readme`` with every marked table replaced by its rendering."""
    for name, text in tables().items():
        pattern = re.compile(rf"(<!-- settings:{re.escape(name)} -->\n)(?:.*?\n)?"
                             rf"(<!-- /settings:{re.escape(name)} -->)", re.S)
        readme = pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), readme)
    return readme


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render(open(README).read())
    return write_generated(README, text, argv, "README.md's settings tables, generated from "
                           "the schema,", "python -m aaer.config.reference")


if __name__ == "__main__":
    raise SystemExit(main())
