"""CUDA-only speed switches of the equilibrium solve, each with a fallback that is plain eager torch.

- ``stop_check_every``: how often the host reads the solver's device-side stop flag. 0 (auto)
  resolves per device: on the CPU every evaluation (there a read costs nothing and an evaluation
  past the stop is pure waste); on CUDA every ``CUDA_STOP_CHECK_EVERY`` evaluations, so the host can
  queue several iterations ahead of the GPU.
- ``compile_f``: ``torch.compile`` of f (``reduce-overhead`` adds CUDA graphs). Only on CUDA; the
  first call at each new (shape, dtype, grad) key runs eager (warm-up, and a clean step on a shape
  change), later calls at that key go through the compiled f; after ``MAX_COMPILED_KEYS`` distinct
  keys f stays eager (no recompilation storm), and if compiling fails f stays eager with a warning.
- ``cudnn_benchmark`` and ``tf32``: set explicitly on CUDA (global torch flags) before a solve.
  ``tf32`` is for convolutions (f's arithmetic; cuDNN's own default is on); matmuls, i.e. the
  solvers' inner products and low-rank updates, always stay full fp32.

None of the CUDA values is calibrated yet: docs/benchmarks.md lists the GPU run that measures them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_STOP_CHECK_EVERY = 4  # placeholder until measured on a GPU (docs/benchmarks.md)
MAX_COMPILED_KEYS = 4


def stop_check_every(requested: int, device: torch.device) -> int:
    """The evaluations between host reads of the stop flag: ``requested``, or the device's default for 0."""
    if requested > 0:
        return requested
    return CUDA_STOP_CHECK_EVERY if device.type == "cuda" else 1


def configure_backends(device: torch.device, *, cudnn_benchmark: bool, tf32: bool) -> None:
    """Set cuDNN autotuning and TF32 convolutions explicitly, fp32 matmuls; nothing off CUDA."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the solvers' products need fp32 accuracy


class CompiledF:
    """Chooses, per call, between f and ``torch.compile(f, mode)`` (see the module docstring)."""

    def __init__(self, f: torch.nn.Module, mode: str, compile_fn: Callable = torch.compile) -> None:
        self.f, self.mode, self.compile_fn = f, mode, compile_fn
        self.seen: set[tuple] = set()
        self.compiled: Callable | None = None
        self.failed = False

    def use_compiled(self, z: torch.Tensor) -> bool:
        """Whether this call of f on z may run compiled."""
        key = (tuple(z.shape), z.dtype, torch.is_grad_enabled(), torch.is_autocast_enabled(z.device.type))
        return self.decide(key, z.device.type)

    def decide(self, key: tuple, device_type: str) -> bool:
        """Compiled for a call at ``key`` on ``device_type``? Records the key: the first call at a key runs eager."""
        if self.mode == "off" or self.failed or device_type != "cuda":
            return False
        if key in self.seen:
            return True
        if len(self.seen) < MAX_COMPILED_KEYS:
            self.seen.add(key)
        return False

    def __call__(self, z: torch.Tensor, *f_args) -> torch.Tensor:
        if not self.use_compiled(z):
            return self.f(z, *f_args)
        if self.compiled is None:
            self.compiled = self.compile_fn(self.f, mode=self.mode, dynamic=False)
        try:
            return self.compiled(z, *f_args)
        except Exception as err:  # a backend that cannot compile this f: stay eager, say so once
            self.failed = True
            warnings.warn(f"deq.compile_f={self.mode!r}: compiling f failed ({type(err).__name__}: {err}); "
                          "f runs eager from now on", RuntimeWarning, stacklevel=2)
            return self.f(z, *f_args)


def compiled_f(f: torch.nn.Module, mode: str) -> Callable:
    """f itself when ``mode`` is off, else the module's (cached) :class:`CompiledF` for ``mode``."""
    if mode == "off":
        return f
    cache = f.__dict__.setdefault("_mdeq_compiled_f", {})
    if mode not in cache:
        cache[mode] = CompiledF(f, mode)
    return cache[mode]
