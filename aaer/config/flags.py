"""Command-line flags generated from the settings: one flag per setting, its help and
default written once, in the setting (aaer.config.settings).

Every flag defaults to "not given" (argparse.SUPPRESS), so what a command line set is
known exactly: ``given(namespace)``. ``request_from_argv`` turns `aaer train` flags into a
run request (aaer.config.schema) that ``resolve`` completes; ``command_settings`` turns
another command's flags into its checked settings.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from aaer.config.schema import SECTIONS, RunConfig, from_flat
from aaer.config.settings import UNSET, Setting, fill, settings_of
from aaer.errors import UsageError

SECTION_TITLES = {"data": "data", "model": "model", "method": "method and its "
                  "hyper-parameters", "optim": "optimisation and schedule",
                  "evaluation": "evaluation after training", "monitor":
                  "catastrophic-overfitting monitor (needs --probe-n N)",
                  "runtime": "run directory, device and speed"}


def _key_value(item: str):
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    try:
        value = json.loads(v)
    except json.JSONDecodeError:
        value = v
    return k.strip().replace("-", "_"), value


def _number_text(text: str):
    """A numeric flag's text as an int or float for the setting's check, which names the flag
    and what is valid ("invalid --jobs 1.5: not an integer (must be an integer >= 1)"); text
    that is no number at all goes to the check as it is."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def add_setting(group, s: Setting) -> None:
    """One argparse argument for setting ``s``."""
    kw: dict[str, Any] = {"help": s.help_text(), "default": argparse.SUPPRESS}
    if s.positional:
        group.add_argument(s.dest, metavar=s.metavar or s.dest.upper(), nargs=s.nargs,
                           help=s.help)
        return
    flags = [s.negate or s.flag, *s.aliases]
    kw["dest"] = s.dest
    if s.required:
        kw["required"] = True
        kw["help"] = s.help
    if s.type is bool:
        kw["action"] = "store_false" if s.negate else "store_true"
        if s.negate:
            kw["help"] = f"turn off: {s.help}"
    elif s.type is dict:
        kw.update(action="append", type=_key_value, metavar=s.metavar or "KEY=VALUE")
    elif s.type is list:
        kw.update(action="append", metavar=s.metavar)
    else:
        if s.type in (int, float):
            kw["type"] = _number_text
        if s.choices is not None:
            kw["choices"] = list(s.choices)
        if s.metavar:
            kw["metavar"] = s.metavar
    group.add_argument(*flags, **kw)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Every setting of a training run, one argument group per section."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(SECTION_TITLES[section])
        for _, s in settings_of(cls):
            if s.cli:
                add_setting(group, s)


def add_command_flags(parser: argparse.ArgumentParser, cls) -> None:
    for _, s in settings_of(cls):
        if s.cli:
            add_setting(parser, s)


def given(namespace: argparse.Namespace) -> dict[str, Any]:
    """dest -> value of the flags a command line gave (KEY=VALUE lists become dicts)."""
    out = {}
    for k, v in vars(namespace).items():
        if isinstance(v, list) and v and isinstance(v[0], tuple):
            v = dict(v)
        out[k] = v
    return out


def request_from_args(namespace: argparse.Namespace, source: str = "explicit") -> RunConfig:
    """The run request of `aaer train`'s parsed flags (settings not given stay UNSET)."""
    from aaer.config.schema import FLAT
    values = {k: v for k, v in given(namespace).items() if k in FLAT}
    return from_flat(values, source=source)


def command_request(cls, namespace: argparse.Namespace):
    """A command's settings as its flags gave them, the rest UNSET (for a command whose
    defaults are resolved, as `aaer eval`'s are: aaer.config.resolve.resolve_eval)."""
    values = given(namespace)
    return cls(**{name: values.get(s.dest, UNSET) for name, s in settings_of(cls)})


def command_settings(cls, namespace: argparse.Namespace):
    """A command's settings from its parsed flags: defaults filled in, every value checked."""
    return fill(command_request(cls, namespace))


def train_parser(prog: str = "aaer train") -> argparse.ArgumentParser:
    """A parser of `aaer train`'s run flags alone (what a suite line may hold)."""
    p = argparse.ArgumentParser(prog=prog, add_help=False, exit_on_error=False)
    add_run_flags(p)
    return p


def request_from_argv(argv: list[str], source: str = "explicit") -> RunConfig:
    """A run request from `aaer train` flags (ValueError for an unknown or bad flag)."""
    p = train_parser()
    try:
        ns, rest = p.parse_known_args(list(argv))
    except argparse.ArgumentError as e:
        raise UsageError(f"{e} (in: {' '.join(argv)})") from None
    if rest:
        raise UsageError(f"unknown flag(s) {' '.join(rest)}; valid: see `aaer train --help`")
    return request_from_args(ns, source)
