"""The settings of a run: one schema (settings.py, schema.py), one resolution (resolve.py),
and the settings of the other commands (commands.py). None of them imports torch at import
time (resolve.py imports the methods where it builds them), so every `--help` is fast."""
from aaer.config.resolve import resolve, validate
from aaer.config.schema import (FLAT, SECTIONS, SETTINGS, DataConfig, EvalConfig, MethodConfig,
                                ModelConfig, MonitorConfig, OptimConfig, RunConfig,
                                RuntimeConfig, from_dict, from_flat)
from aaer.config.settings import UNSET, Setting, setting, settings_of

__all__ = ["resolve", "validate", "RunConfig", "DataConfig", "ModelConfig", "MethodConfig",
           "OptimConfig", "EvalConfig", "MonitorConfig", "RuntimeConfig", "from_flat",
           "from_dict", "FLAT", "SECTIONS", "SETTINGS", "UNSET", "Setting", "setting",
           "settings_of"]
