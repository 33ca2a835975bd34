"""What this CPU offers lmforge's fast paths: one probe, from torch's own reports, once per process.

Three answers; where one is no, lmforge takes ATen's path instead, with the same results:

- `onednn_linear`: oneDNN's fused linear (`torch.ops.mkldnn._linear_pointwise`, and
  `_reorder_linear_weight` for blocked weights) is in this torch build and oneDNN is enabled. Without
  it the encoder's linears (`onednn.py`) and the fused MLM loss's logits (`losses.py`) use ATen.
- `onednn_bf16`: oneDNN runs bf16 primitives on this CPU (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`,
  the check torch's own compiler makes: AVX-512 BW/VL/DQ or AVX-NE-CONVERT on x86). Elsewhere (AVX2)
  a bf16 oneDNN linear raises "bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl
  and avx512dq", so bf16 linears stay on ATen's matmul, which emulates bf16.
- `native_bf16`: bf16 dot products in hardware (AVX512_BF16 or AMX-BF16 on x86, BF16 on Arm; from
  `torch.cpu.get_capabilities()`). Without it bf16 autocast still works but runs slower than fp32:
  `warn_if_bf16_slow` says so once per process, and the demo trains in fp32.

Forcing the fallback (to test it on a CPU that has everything, or to rule oneDNN out). Forcing only
takes capabilities away, never adds one:

- `LMFORGE_DISABLE_ONEDNN=1`: no oneDNN at all (every linear and the MLM logits on ATen).
- `LMFORGE_FORCE_CPU_CAPABILITY=avx2` (or `default`): behave as on an AVX2 CPU: no oneDNN bf16, no
  native bf16 (oneDNN's fp32 linears stay: they run on AVX2). `avx512`: AVX-512 without BF16, i.e.
  oneDNN bf16 emulated, no native bf16. This changes lmforge's choices, not ATen's kernels (for those,
  torch reads `ATEN_CPU_CAPABILITY` at start-up).
- `with cpu_caps.forced(capability="avx2", disable_onednn=True): ...`: the same for one block (tests).

The variables are read once, on the first `get()`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import cache

import torch

ENV_DISABLE_ONEDNN = "LMFORGE_DISABLE_ONEDNN"
ENV_FORCE_CAPABILITY = "LMFORGE_FORCE_CPU_CAPABILITY"
# Simulated capability levels -> the features a CPU at that level lacks.
FORCED_LEVELS = {
    "default": ("onednn_bf16", "native_bf16"),
    "avx2": ("onednn_bf16", "native_bf16"),
    "avx512": ("native_bf16",),
}
_LEVEL_ORDER = ("DEFAULT", "AVX2", "AVX512")
FEATURES = ("onednn_linear", "onednn_bf16", "native_bf16")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class CpuCaps:
    name: str  # as torch reports it ("AMD EPYC"), for reports
    capability: str  # ATen's kernel level as torch reports it ("AVX512", "AVX2", ...), or the simulated one
    onednn_linear: bool
    onednn_bf16: bool
    native_bf16: bool
    reasons: dict[str, str] = field(default_factory=dict)  # absent feature -> why

    def missing(self, feature: str) -> str | None:
        """Why `feature` (one of FEATURES) is absent here, or None where it is present."""
        if feature not in FEATURES:
            raise ValueError(f"unknown CPU feature {feature!r}: expected one of {', '.join(FEATURES)}")
        return None if getattr(self, feature) else self.reasons[feature]

    def summary(self) -> str:
        """One line, e.g. "AMD EPYC, AVX512, oneDNN linear, oneDNN bf16, native bf16"."""
        bf16 = "native bf16" if self.native_bf16 else "bf16 emulated"
        parts = [self.name, self.capability] + [label for label, on in (
            ("oneDNN linear", self.onednn_linear), ("oneDNN bf16", self.onednn_bf16)) if on]
        return ", ".join(parts + [bf16])


def _has_mkldnn_op(name: str) -> bool:
    try:
        return hasattr(torch.ops.mkldnn, name)
    except (AttributeError, RuntimeError):
        return False


def _mkldnn_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_features() -> dict:
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # recent torch; older ones: one private check
    if get_capabilities is not None:
        return dict(get_capabilities())
    is_avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return {"avx512_bf16": bool(is_avx512_bf16())} if is_avx512_bf16 is not None else {}


def probe_torch() -> CpuCaps:
    """What torch reports for this CPU and build, with nothing forced."""
    features = _cpu_features()
    linear = torch.backends.mkldnn.is_available() and all(
        _has_mkldnn_op(op) for op in ("_linear_pointwise", "_reorder_linear_weight"))
    bf16 = linear and _mkldnn_bf16_supported()
    # ATen's own bf16 matmuls go to oneDNN only where it supports bf16 (else they are emulated), so
    # native means the instructions AND oneDNN able to use them (ONEDNN_MAX_CPU_ISA can say no).
    native = _mkldnn_bf16_supported() and any(
        bool(features.get(key)) for key in ("avx512_bf16", "amx_bf16", "bf16"))  # x86, x86, Arm
    capability = torch.backends.cpu.get_cpu_capability()
    have = {"onednn_linear": linear, "onednn_bf16": bf16, "native_bf16": native}
    why = {
        "onednn_linear": "this torch build has no oneDNN fused linear (torch.ops.mkldnn._linear_pointwise)",
        "onednn_bf16": (f"oneDNN bf16 is unsupported on this CPU ({capability}: "
                        "torch.ops.mkldnn._is_mkldnn_bf16_supported() is False)")
                       if linear else "no oneDNN fused linear in this torch build",
        "native_bf16": f"no native bf16 on this CPU ({capability}: no AVX512_BF16, AMX-BF16 or Arm BF16 "
                       "that oneDNN can use)",
    }
    return CpuCaps(str(features.get("cpu_name") or "CPU"), capability, linear, bf16, native,
                   {f: reason for f, reason in why.items() if not have[f]})


def restricted(caps: CpuCaps, capability: str | None = None, disable_onednn: bool = False,
               source: str = "forced") -> CpuCaps:
    """`caps` without what a CPU at `capability` (a key of FORCED_LEVELS) lacks, and without oneDNN if
    `disable_onednn`; `source` (e.g. the variable set) goes into the reasons."""
    lost: tuple[str, ...] = ()
    if capability is not None:
        if capability.lower() not in FORCED_LEVELS:
            raise ValueError(f"{source}: unknown CPU capability {capability!r}: expected one of "
                             f"{', '.join(FORCED_LEVELS)}")
        lost += FORCED_LEVELS[capability.lower()]
    if disable_onednn:
        lost += ("onednn_linear", "onednn_bf16")
    lost = tuple(f for f in lost if getattr(caps, f))
    reasons = dict(caps.reasons) | {f: f"{f} switched off by {source}" for f in lost}
    level = caps.capability  # the simulated level where it is lower than torch's
    if capability is not None and _rank(capability.upper()) < _rank(level):
        level = capability.upper()
    return replace(caps, capability=level, reasons=reasons, **{f: False for f in lost})


def _rank(level: str) -> int:
    return _LEVEL_ORDER.index(level) if level in _LEVEL_ORDER else len(_LEVEL_ORDER)  # other ISAs: above


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"{name}={os.environ[name]!r}: expected 1 or 0")
    return value in _TRUE


@cache
def probed() -> CpuCaps:
    """This process's answer: torch's report, less what the environment variables switch off."""
    capability = os.environ.get(ENV_FORCE_CAPABILITY, "").strip() or None
    disable = _env_flag(ENV_DISABLE_ONEDNN)
    source = " ".join(f"{k}={os.environ[k]}" for k in (ENV_DISABLE_ONEDNN, ENV_FORCE_CAPABILITY)
                      if os.environ.get(k, "").strip())
    return restricted(probe_torch(), capability, disable, source)


_forced: ContextVar[CpuCaps | None] = ContextVar("lmforge_forced_cpu_caps", default=None)


def get() -> CpuCaps:
    """The capabilities every fast path asks for: `probed()`, or what a `forced()` block set."""
    return _forced.get() or probed()


@contextmanager
def forced(capability: str | None = None, disable_onednn: bool = False) -> Iterator[CpuCaps]:
    """Within this block `get()` answers as on a CPU at `capability` ("avx2": no oneDNN bf16, no native
    bf16; "avx512": no native bf16) and, with `disable_onednn`, without oneDNN. Yields those caps."""
    args = ", ".join([f"capability={capability!r}"] * (capability is not None)
                     + ["disable_onednn=True"] * disable_onednn)
    token = _forced.set(restricted(get(), capability, disable_onednn, f"cpu_caps.forced({args})"))
    try:
        yield _forced.get()
    finally:
        _forced.reset(token)


_bf16_warned = False


def warn_if_bf16_slow(device: torch.device | str) -> None:
    """Warns once per process, where bf16 autocast is asked for on a CPU without native bf16, that it
    runs (correctly, on ATen where oneDNN cannot) slower than fp32 there."""
    global _bf16_warned
    caps = get()
    if _bf16_warned or torch.device(device).type != "cpu" or caps.native_bf16:
        return
    _bf16_warned = True
    logging.getLogger(__name__).warning(
        f"bf16 autocast on this CPU ({caps.capability}, no AVX512_BF16/AMX) is emulated and will be slower "
        "than fp32; leave --bf16 / bf16=True off here")
