"""Recipe files: a run's settings written in a file (`aaer train --config FILE`), and the
resolved settings written back as one (`aaer config show`).

A recipe is JSON, TOML or YAML (YAML needs the PyYAML package), in either form:

- nested by the schema's sections: ``{"method": {"name": "rs-aaer", "epsilon": 16},
  "optim": {"epochs": 30}}``, method hyper-parameters without a flag under
  ``method.options``;
- flat by flag names (``lr-max`` or ``lr_max``): ``{"method": "rs-aaer", "epsilon": 16,
  "lr-max": 0.2}``, method hyper-parameters under ``set``: ``{"set": {"lamda": 0.5}}``.

A run's own config.json is a recipe too: ``aaer train --config runs/x/config.json
--out-dir runs/y`` trains the same run again (its values are already resolved, so the
method's epoch rule is not applied twice). Flags given beside --config win over the file.
Every value is checked by the schema; an unknown key, a wrong type or a value out of range
is one line naming the file and the key. Each value's source is "config FILE".
"""
from __future__ import annotations

import json
import os
from typing import Any

from aaer.config.schema import FLAT, SECTIONS, SETTINGS, RunConfig
from aaer.config.settings import UNSET, Source, settings_of
from aaer.errors import MissingFile, UsageError, require

RUN_CONFIG_FORMAT = "aaer-run/2"         # a run directory's config.json (aaer.runs)
# settings a run's config.json holds that are about that run directory, not the recipe
NOT_A_RECIPE = ("runtime.out_dir", "runtime.overwrite")


def read_file(path: str) -> dict[str, Any]:
    """The mapping a recipe file holds (UsageError naming the file when it cannot)."""
    if not os.path.isfile(path):
        raise MissingFile(f"--config {path!r}: no such file; valid: a .json, .toml or .yaml "
                          "recipe, or a run directory's config.json")
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if ext == ".json":
            data = json.loads(raw)
        elif ext == ".toml":
            import tomllib
            data = tomllib.loads(raw.decode())
        elif ext in (".yaml", ".yml"):
            yaml = require("yaml", "pyyaml", "yaml", "a .yaml recipe file")
            data = yaml.safe_load(raw)
        else:
            raise UsageError(f"--config {path!r}: unknown recipe format {ext or '(none)'!r}; "
                             "valid: .json, .toml, .yaml, .yml")
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - a parser's error, reported with the file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--config {path!r} could not be parsed ({first})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path!r}: a recipe is a mapping of settings, got "
                         f"{type(data).__name__}")
    return data


def _flat_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def request_from_file(path: str) -> RunConfig:
    """A run request from a recipe file (the settings it gives; the rest UNSET), every
    value checked and labelled "config FILE"."""
    data = read_file(path)
    run_config = data.get("format") == RUN_CONFIG_FORMAT
    if run_config:                    # a run's config.json: its resolved settings
        data = data.get("settings") or {}
    label = Source(f"config {path}", Source.RUN_CONFIG if run_config else Source.CONFIG_FILE)
    cfg = RunConfig()
    nested = bool(data) and all(k in SECTIONS and isinstance(v, dict) for k, v in data.items())
    items = _nested_items(path, data) if nested else _flat_items(path, data)
    for key_path, where, value in items:
        if run_config and key_path in NOT_A_RECIPE:
            continue
        s = SETTINGS[key_path]
        try:
            value = s.check(value)
        except UsageError as e:
            raise UsageError(f"--config {path!r}, {where}: {e}") from None
        cfg.set(key_path, value, label)
    return cfg


def _nested_items(path: str, data: dict):
    for section, values in data.items():
        names = dict(settings_of(SECTIONS[section]))
        for name, value in values.items():
            if name not in names:
                raise UsageError(f"--config {path!r}: unknown setting {section}.{name}; "
                                 f"valid in {section}: {', '.join(names)}")
            yield f"{section}.{name}", f"{section}.{name}", value


def _flat_items(path: str, data: dict):
    for key, value in data.items():
        flat = _flat_key(key)
        if flat in ("set", "options"):
            flat, value = "options", value
            if not isinstance(value, dict):
                raise UsageError(f"--config {path!r}, {key}: must be a mapping of method "
                                 f"hyper-parameters, got {value!r}")
        if flat not in FLAT:
            raise UsageError(f"--config {path!r}: unknown setting {key!r}; valid: the flags "
                             "of `aaer train --help` (e.g. lr-max or lr_max), `set` for "
                             "method hyper-parameters, or the schema's sections (data, "
                             f"model, method, optim, evaluation, monitor, runtime)")
        yield FLAT[flat][0], key, value


def merge(base: RunConfig, over: RunConfig) -> RunConfig:
    """``over``'s given settings on top of ``base`` (flags over a recipe file)."""
    out = base.copy()
    for p, v in over.given().items():
        out.set(p, v, over.sources.get(p))
        if p not in over.sources:
            out.sources.pop(p, None)
    return out


# -- the resolved settings as a recipe (`aaer config show`) --------------------------------

def _yaml_scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))            # a JSON string is a valid YAML scalar


def to_yaml(cfg: RunConfig) -> str:
    """A resolved run as a nested YAML recipe, each value with its source as a comment
    (written without a YAML library; readable back with --config)."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"{section}:")
        obj = getattr(cfg, section)
        for name, _ in settings_of(cls):
            value, path = getattr(obj, name), f"{section}.{name}"
            source = cfg.sources.get(path, "")
            if isinstance(value, dict):
                head = f"  {name}:" + (" {}" if not value else "")
                lines.append(f"{head:<40}  # {source}")
                for k, v in value.items():
                    src = cfg.sources.get(f"{path}.{k}", "")
                    lines.append(f"    {k}: {_yaml_scalar(v)}" + (f"  # {src}" if src else ""))
                continue
            if value is UNSET:
                continue
            text = f"  {name}: {_yaml_scalar(value)}"
            lines.append(f"{text:<40}  # {source}" if source else text)
    return "\n".join(lines) + "\n"
