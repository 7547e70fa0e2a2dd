"""Mixed precision, memory format and torch.compile for the training step.

``Precision`` bundles what a step needs for --precision {fp32,bf16,fp16}: an autocast
context for the forwards and, for fp16 only, a GradScaler around backward/step. fp32 is
the reference and the default. Inside autocast the methods still compute their losses,
the AAE comparison l0 > l1 and the AAER regulariser from ``logits.float()``, so only the
network's own layers run in low precision.

``use_channels_last`` / ``to_channels_last`` decide and apply the NHWC memory format
(conv nets on CUDA by default); ``maybe_compile`` applies torch.compile (--compile-mode
default, or reduce-overhead: CUDA graphs of the step, CUDA only) unless the method needs
double backprop, which compiled graphs do not support. ``make_sgd`` builds the optimiser
with the implementation --sgd-impl names (the update is the same up to float rounding).
"""
from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn as nn

from aaer.config.schema import SETTINGS
from aaer.errors import UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast + (fp16) loss scaling for one device.

    Use as::

        with prec.autocast():
            loss = method.step(model, x, y, ctx).loss
        prec.backward(loss)
        prec.step(opt)          # unscale, skip on inf/nan (fp16), update the scale
    """

    def __init__(self, name: str, device: torch.device | str):
        self.name = SETTINGS["runtime.precision"].check(name)
        self.device = torch.device(device)
        self.dtype = DTYPES.get(name, torch.float32)
        if name == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(self.device)} does "
                             "not support bfloat16; use fp16 or fp32")
        self.scaler = None
        if name == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)

    @property
    def enabled(self) -> bool:
        return self.name != "fp32"

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def step(self, opt: torch.optim.Optimizer) -> None:
        # GradScaler.step reads found-inf on the host: one sync per fp16 step (bf16 has none)
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()

    def state_dict(self) -> dict:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in model.modules())


def use_channels_last(setting: str, model: nn.Module, device: torch.device) -> bool:
    """auto: NHWC for conv nets on CUDA (tensor cores want it); on/off: as told."""
    setting = SETTINGS["runtime.channels_last"].check(setting)
    if setting == "auto":
        return torch.device(device).type == "cuda" and has_conv(model)
    return setting == "on"


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def check_compile_mode(mode: str, device: torch.device | str) -> str:
    """``mode`` if it can run on ``device``: reduce-overhead captures CUDA graphs, which a
    CPU run cannot (torch would silently compile without them); else UsageError."""
    mode = SETTINGS["runtime.compile_mode"].check(mode)
    if mode == "reduce-overhead" and torch.device(device).type != "cuda":
        raise UsageError(f"--compile-mode reduce-overhead captures CUDA graphs and needs a "
                         f"CUDA device, but this run is on {torch.device(device).type}; use "
                         "--compile-mode default there")
    return mode


SGD_KWARGS = {"auto": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True},
              "fused": {"fused": True}}


def make_sgd(params, impl: str, **kw) -> torch.optim.SGD:
    """torch.optim.SGD(params, **kw) with the implementation ``impl`` (--sgd-impl); an
    implementation this torch cannot run on these parameters is a UsageError."""
    impl = SETTINGS["runtime.sgd_impl"].check(impl)
    try:
        return torch.optim.SGD(params, **kw, **SGD_KWARGS[impl])
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--sgd-impl {impl} is not available here (torch {torch.__version__}: "
                         f"{e}); valid: auto, for-loop, foreach") from None


def maybe_compile(model: nn.Module, method, log: logging.Logger | None = None,
                  mode: str = "default") -> nn.Module:
    """torch.compile(model, mode=mode), or the model itself when the method needs double
    backprop."""
    cost = method.cost()
    if cost.double_backprop:
        if log is not None:
            log.info("--compile: method %s differentiates through an input gradient (double "
                     "backprop), which compiled graphs do not support: running it eagerly",
                     method.name)
        return model
    if log is not None:
        log.info("--compile: torch.compile(model, mode=%r); the first steps (and the last, "
                 "smaller batch of an epoch) pay the compilation time", mode)
    return torch.compile(model, mode=mode)
