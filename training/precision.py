"""Mixed precision by hardware: whether the trainers run their forward passes in bf16 autocast.

``training.bf16`` may force the choice (``True``/``False``); ``None`` leaves it to
:func:`native_bf16`, which says whether the device computes bf16 natively:

- CUDA: ``torch.cuda.is_bf16_supported()``.
- CPU: only with the ``avx512_bf16`` or ``amx_bf16`` instruction flags (read from
  ``/proc/cpuinfo`` on Linux). Without them torch emulates bf16 matrix products, which is
  far slower than float32. Where the flags cannot be read (other systems), float32.
- Any other device type (``mps``, ...): float32.

Autocast changes only the compute dtype of the forward pass; weights keep their own dtype.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

# CPU instruction-set flags (as /proc/cpuinfo spells them) that compute bf16 natively.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    """The precision a run trains in, and why."""

    bf16: bool
    reason: str

    def __str__(self) -> str:
        return f"bf16 autocast: {'on' if self.bf16 else 'off'} ({self.reason})"


def cpu_flags() -> frozenset[str] | None:
    """The CPU's instruction-set flags from ``/proc/cpuinfo``, or ``None`` where unreadable."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def native_bf16(device: torch.device, flags: Collection[str] | None = None) -> Precision:
    """Whether ``device`` computes bf16 natively; ``flags`` stands in for :func:`cpu_flags`."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return Precision(supported, f"CUDA device {'supports' if supported else 'lacks'} bf16")
    if device.type != "cpu":
        return Precision(False, f"bf16 not assumed on {device.type}")
    if flags is None:
        flags = cpu_flags()
    if flags is None:
        return Precision(False, "CPU flags unreadable, so no native bf16 assumed")
    capability = torch.backends.cpu.get_cpu_capability()
    native = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in flags]
    if native:
        return Precision(True, f"CPU has {native[0]}; torch CPU capability {capability}")
    return Precision(
        False, f"CPU lacks {' and '.join(NATIVE_BF16_CPU_FLAGS)}; torch CPU capability {capability}"
    )


def resolve_bf16(
    setting: bool | None, device: torch.device, flags: Collection[str] | None = None
) -> Precision:
    """``training.bf16`` for ``device``: an explicit ``True``/``False`` wins, ``None`` detects."""
    if setting is not None:
        return Precision(setting, f"training.bf16 is {str(setting).lower()}")
    return native_bf16(device, flags)
