"""Whether the device runs a low precision natively, and what to tell the user when it does not.

bf16 autocast on a CPU without bf16 instructions (AVX-512 BF16 or AMX; e.g. an AVX2-only EPYC) is
emulated by oneDNN: on such a machine a convolution took about 10x and a training step of the tiny
model 2.4-3x the CPU time of fp32 (docs/benchmarks.md), so a bf16 recipe silently runs far slower.
"""

from __future__ import annotations

import torch


def bf16_is_native(device: torch.device) -> bool:
    """True when ``device`` computes in bf16 at speed: a CUDA card that supports it, or a CPU whose
    oneDNN build reports bf16 instructions."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True  # other accelerators: trust the recipe


def slow_precision_warning(precision: str, device: torch.device) -> str | None:
    """One line saying why ``precision`` will be slow on ``device``, or None when it will not."""
    if precision != "bf16" or bf16_is_native(device):
        return None
    where = f"this CPU ({torch.backends.cpu.get_cpu_capability()}, no AVX-512 BF16/AMX)" if device.type == "cpu" \
        else f"this {device.type} device"
    return (f"deepspeed.precision=bf16 is emulated on {where} and runs several times slower than fp32: "
            f"set deepspeed.precision=fp32 for speed (the accuracy of a bf16 recipe may differ slightly)")
