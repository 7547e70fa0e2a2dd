"""What a setting is: its default, type, choices, help text and check, written once.

A setting is a dataclass field made by ``setting(...)``. Its dataclass default is
``UNSET`` ("not given"); the real default lives in the field's ``Setting`` next to the
help text, the choices and the range, so that resolution can tell a value the user gave
from one it filled in (aaer.config.resolve). The CLI generates its flags from these fields
(aaer.cli), and ``check`` is the one validation every value goes through, whichever door
it came in by.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from aaer.checks import choice, describe_range, number
from aaer.errors import UsageError


class _Unset:
    """The value of a setting nobody gave: resolution decides it."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return "UNSET"


UNSET = _Unset()


class Source(str):
    """Where a resolved setting's value came from: its text ("published cifar10 eps 16"),
    which is what config.json and the log show, and its ``kind`` (one of KINDS), which is
    what code reads. A plain string read back from an older config.json has kind
    "recorded"."""

    EXPLICIT = "explicit"            # a flag, keyword, suite line or fixture setting
    REQUEST = "request"              # a labelled request (a fixture, a suite, a config file)
    DEFAULT = "default"              # the schema's default
    METHOD_DEFAULT = "method-default"
    NOT_USED = "not-used"            # the method does not take it
    BY_KEY = "by-key"                # method.options: each key has its own source
    PUBLISHED = "published"          # the method's published table
    PRESET = "preset"
    METHOD = "method"                # the method's change to training (GradAlign's lr)
    DATASET = "dataset"              # the data set's default
    SEED_SCRIPT = "seed-script"      # AAER.py's rule and defaults
    INFERRED = "inferred"            # e.g. the data set from --out-dir
    RESUME = "resume"                # changed when the run resumed
    OLDER_RUN = "older-run"          # a run written before the setting existed
    RULE = "rule"                    # follows from another setting
    CONFIG_FILE = "config-file"      # a recipe file (--config)
    RUN_CONFIG = "run-config"        # a run's config.json given as a recipe: resolved values
    RECORDED = "recorded"            # read back from a file that kept only the text
    KINDS = (EXPLICIT, REQUEST, DEFAULT, METHOD_DEFAULT, NOT_USED, BY_KEY, PUBLISHED, PRESET,
             METHOD, DATASET, SEED_SCRIPT, INFERRED, RESUME, OLDER_RUN, RULE, CONFIG_FILE,
             RUN_CONFIG, RECORDED)
    # sources a run's log need not state: the user knows them, or they say nothing
    QUIET = (EXPLICIT, DEFAULT, METHOD_DEFAULT, NOT_USED, BY_KEY)

    kind: str

    def __new__(cls, text: str, kind: str = RECORDED):
        if kind not in cls.KINDS:
            raise ValueError(f"unknown source kind {kind!r}; valid: {', '.join(cls.KINDS)}")
        obj = super().__new__(cls, text)
        obj.kind = kind
        return obj

    def __reduce__(self):
        return (Source, (str(self), self.kind))

    @classmethod
    def of(cls, value) -> "Source":
        """``value`` as a Source (a plain string: kind "recorded")."""
        return value if isinstance(value, Source) else cls(str(value))


@dataclass(frozen=True)
class Setting:
    """One setting's definition (see the module docstring)."""

    default: Any
    help: str
    type: type = str                 # bool, int, float, str or dict
    flag: str = ""                   # the CLI flag (filled in by ``setting``: --<name>)
    dest: str = ""                   # the flat name: CLI dest and TrainConfig keyword
    aliases: tuple = ()              # more flags, e.g. --epoch for --epochs
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False           # None is a valid value (e.g. "all points")
    extra: Callable[[Any], Any] | None = None   # a further check; returns the value
    default_text: str = ""           # the default as --help says it, when not plain
    resumable: bool = False          # may be given again with `aaer train --resume`
    negate: str = ""                 # a bool that defaults to True: the flag turning it off
    metavar: str | None = None
    cli: bool = True
    positional: bool = False         # a positional CLI argument
    nargs: str | None = None         # with positional: "+" for a list
    required: bool = False           # the CLI flag must be given
    # the value of a run written before this setting existed (its config.json and
    # checkpoint lack it): what that aaer did; UNSET: the setting was always written
    older_runs: Any = UNSET

    def what(self) -> str:
        """What a valid value is, in words."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.type in (int, float):
            return describe_range(self.low, self.high, self.low_open, self.high_open,
                                  self.type is int)
        return {bool: "true or false", dict: "KEY=VALUE pairs",
                list: "strings"}.get(self.type, "a string")

    def check(self, value):
        """``value`` checked (and normalised, e.g. 2.0 -> 2 for an int), or ValueError."""
        name = self.flag
        if value is None:
            if self.optional:
                return None
            raise UsageError(f"invalid {name} None: must be {self.what()}")
        if self.nargs is not None:
            if not isinstance(value, (list, tuple)) or not value:
                raise UsageError(f"invalid {name} {value!r}: must be one or more values")
            one = dataclasses.replace(self, nargs=None)
            return [one.check(v) for v in value]
        if self.type in (int, float):
            value = number(name, value, integer=self.type is int, low=self.low,
                           high=self.high, low_open=self.low_open, high_open=self.high_open)
            if self.choices is not None:
                choice(name, value, self.choices)
        elif self.type is bool:
            if not isinstance(value, bool):
                raise UsageError(f"invalid {name} {value!r}: must be true or false")
        elif self.type is list:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"invalid {name} {value!r}: must be a list of strings")
            value = list(value)
        elif self.type is dict:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise UsageError(f"invalid {name} {value!r}: must be a mapping of names to "
                                 "values")
            value = dict(value)
        else:
            if not isinstance(value, str):
                raise UsageError(f"invalid {name} {value!r}: must be a string"
                                 + (f"; valid: {', '.join(map(str, self.choices))}"
                                    if self.choices else ""))
            if self.choices is not None:
                choice(name, value, self.choices)
        if self.extra is not None:
            value = self.extra(value)
        return value

    def help_text(self) -> str:
        shown = self.default_text or ("off" if self.type is bool and self.default is False
                                      else "on" if self.type is bool else str(self.default))
        return f"{self.help} (default: {shown})"


def setting(default, help: str, **kw) -> dataclasses.Field:
    """A dataclass field for one setting; ``kw`` as in ``Setting``."""
    return field_of(Setting(default, help, **kw))


def field_of(s: Setting) -> dataclasses.Field:
    """A dataclass field for an existing setting (e.g. a run setting another command takes
    with another default: ``field_of(replace(SETTINGS["data.dataset"], default=None))``)."""
    return dataclasses.field(default=UNSET, metadata={"setting": s})


def settings_of(cls_or_obj) -> list[tuple[str, Setting]]:
    """(field name, Setting) of a settings dataclass, with flag and dest filled in."""
    out = []
    for f in dataclasses.fields(cls_or_obj):
        s = f.metadata.get("setting")
        if s is None:
            continue
        dest = s.dest or f.name
        flag = s.flag or "--" + dest.replace("_", "-")
        out.append((f.name, dataclasses.replace(s, dest=dest, flag=flag)))
    return out


def fill(obj):
    """A copy of the settings dataclass ``obj`` with every UNSET setting at its default and
    every value checked (the settings of a command other than train)."""
    values = {}
    for name, s in settings_of(obj):
        v = getattr(obj, name)
        if v is UNSET:
            if s.required:
                raise UsageError(f"{s.flag} is required")
            v = s.default
        values[name] = s.check(v)
    return dataclasses.replace(obj, **values)
