"""Counting live tensor bytes on any device: an honest peak-memory meter for CPU runs.

CUDA has ``torch.cuda.max_memory_allocated``; the CPU allocator keeps no such counter, and process
RSS mixes in the Python heap, libraries and allocator caching. ``LiveTensorBytes`` is a
``TorchDispatchMode`` that sees every tensor an ATen op returns (forward, autograd backward and
optimizer ops all dispatch through it), registers each new *storage* once with its ``nbytes`` and
a ``weakref.finalize`` that subtracts it when the storage dies. ``peak_bytes`` is therefore the
highest total size of tensor storages alive at any op boundary: the CPU analogue of CUDA's
allocated-bytes peak. What it does not see: scratch memory an ATen kernel allocates and frees
inside one call (convolution workspaces), allocator rounding, and non-tensor memory.

Storages that existed before the mode was entered (parameters, inputs) are added with ``adopt``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Track the bytes of tensor storages alive; ``peak_bytes`` since the last ``reset_peak``."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.device_type = torch.device(device).type if device is not None else None
        self.current_bytes = 0
        self.peak_bytes = 0
        # id(storage) of storages being tracked; the finalizer removes the id (ids are only
        # reused after the object died, i.e. after its finalizer ran).
        self._tracked: set[int] = set()

    # -- bookkeeping -------------------------------------------------------------------------
    def _track_storage(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._tracked:
            return
        nbytes = storage.nbytes()
        self._tracked.add(key)
        self.current_bytes += nbytes
        weakref.finalize(storage, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._tracked:
            self._tracked.discard(key)
            self.current_bytes -= nbytes

    def _track(self, tensors: Iterable[object]) -> None:
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.is_sparse:
                continue
            if self.device_type is not None and t.device.type != self.device_type:
                continue
            self._track_storage(t.untyped_storage())
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)

    def adopt(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors created before the mode was entered (parameters, buffers, inputs)."""
        self._track(tensors)

    def reset_peak(self) -> None:
        """Start a new peak window at the current live total."""
        self.peak_bytes = self.current_bytes

    # -- dispatch ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        out = func(*args, **(kwargs or {}))
        flat, _ = tree_flatten(out)
        self._track(flat)
        return out


def module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters, their gradients and buffers of ``module``."""
    out: list[torch.Tensor] = list(module.parameters()) + list(module.buffers())
    out += [p.grad for p in module.parameters() if p.grad is not None]
    return out


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor held in ``optimizer.state`` (moments, step counters)."""
    out: list[torch.Tensor] = []
    for state in optimizer.state.values():
        out += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return out
