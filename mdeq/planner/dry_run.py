"""One training step executed on the meta device: every allocation of the real code, no memory used.

The planner does not re-derive the model's activation formulas (they would drift from the code):
it runs the real ``MDEQModel`` forward, loss and backward on meta tensors (shapes and dtypes only,
no data, no compute) under :class:`DryRunMode`, which

- counts live tensor bytes exactly like :class:`~mdeq.planner.live_bytes.LiveTensorBytes` does on a
  real device (same storages, same sizes, same lifetimes), and
- answers the host syncs a solver makes: ``.item()`` / ``.tolist()`` of numbers with 1.0 (every
  residual looks large and finite) and ``bool(t)`` with False (the solver's device-side stop flag
  never reads as set), so the forward and adjoint solves run to their iteration caps — the worst
  case, which is also what the released ImageNet/Cityscapes settings do in practice.

Phases are told apart with hooks on the model's ``f`` module and the grad mode: the forward solve is
f evaluated without grad; the f step at z* is the one f call with grad; then the head; inside
``loss.backward()`` the adjoint solve is the part that runs with grad enabled (autograd runs
ordinary backward functions with grad off). Saved-for-backward bytes are attributed with
``saved_tensors_hooks`` in a separate forward pass (the hooks changed what backward kept alive).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_SCALAR = torch.ops.aten._local_scalar_dense.default
_TO_COPY = torch.ops.aten._to_copy.default


@dataclass
class DryRunResult:
    """Bytes seen in one meta-device step (parameters excluded: they exist before the step)."""

    peak_bytes: int  # highest live total of tensors created during the step
    peak_phase: str  # phase in which that peak happened
    grads_at_peak: int  # bytes of parameter gradients alive at the peak
    saved_at_peak: int  # bytes saved for backward (activations) still alive at the peak
    explicit_activations: int  # saved for backward outside f: stem, injection, normalized weights, head, loss
    f_step_saved: int  # saved for backward by the differentiable f evaluation at z* (kept for the adjoint)
    forward_solve_working: int  # forward solve: peak over what was live when it started
    adjoint_working: int  # adjoint solve inside backward: peak over what was live when it started
    gradients: int  # bytes of all parameter gradients after backward (model dtype)
    solver_history_bytes: int  # the forward solver's own report of its history buffers
    f_evaluations: int  # forward f evaluations the dry run performed (the cap)


class DryRunMode(TorchDispatchMode):
    """Live-bytes counter with per-phase peaks that pins host-synced scalars to 1."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.peak_phase = ""
        self.peak_op = -1
        self.op = 0
        self.phase = "explicit"
        self.created: dict[int, int] = {}  # id(storage) -> op index of creation (alive storages)
        self.window_base: int | None = None  # live bytes when the current measured window began
        self.window_peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        if self.created.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func is _SCALAR and args[0].device.type == "meta":
            dtype = args[0].dtype
            return False if dtype == torch.bool else (1.0 if dtype.is_floating_point or dtype.is_complex else 1)
        if func is _TO_COPY and args[0].device.type == "meta" and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type != "meta":
            # .tolist()/.cpu() of a meta tensor: a host copy filled with ones
            return torch.ones(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        out = func(*args, **kwargs)
        self.op += 1
        flat, _ = tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.created:
                    self.created[key] = self.op
                    nbytes = storage.nbytes()
                    self.live += nbytes
                    weakref.finalize(storage, self._release, key, nbytes)
        if self.live > self.peak:
            self.peak, self.peak_phase, self.peak_op = self.live, self.phase, self.op
        if self.window_base is not None:
            self.window_peak = max(self.window_peak, self.live)
        return out

    def open_window(self) -> None:
        self.window_base, self.window_peak = self.live, self.live

    def close_window(self) -> int:
        base, peak = self.window_base, self.window_peak
        self.window_base = None
        return 0 if base is None else peak - base


class _SavedBytes:
    """saved_tensors_hooks pack hook: bytes of step-created storages saved, by phase."""

    def __init__(self, mode: DryRunMode) -> None:
        self.mode = mode
        self.seen: set[int] = set()
        self.by_phase: dict[str, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self.mode.created and key not in self.seen:
            self.seen.add(key)
            self.by_phase[self.mode.phase] = self.by_phase.get(self.mode.phase, 0) + storage.nbytes()
        return t


@contextlib.contextmanager
def meta_autocast_as_cpu() -> Iterator[None]:
    """Let ``torch.autocast``/``torch.is_autocast_enabled`` accept device_type "meta" (as a no-op).

    Autocast has no meta backend; the solver layer asks for the caller's autocast state and turns
    autocast off around solver arithmetic. Mapping "meta" to the CPU autocast state (off here)
    keeps that code path unchanged; meta tensors carry no autocast key, so nothing is cast.
    """
    real_autocast, real_is_enabled = torch.autocast, torch.is_autocast_enabled

    class _Autocast(real_autocast):
        def __init__(self, device_type: str, *args, **kwargs) -> None:
            super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    def _is_enabled(device_type: str | None = None) -> bool:
        if device_type is None:
            return real_is_enabled()
        return False if device_type == "meta" else real_is_enabled(device_type)

    torch.autocast, torch.is_autocast_enabled = _Autocast, _is_enabled
    try:
        yield
    finally:
        torch.autocast, torch.is_autocast_enabled = real_autocast, real_is_enabled


def _loss(model: torch.nn.Module, batch_size: int, height: int, width: int, input_dtype: torch.dtype):
    """Forward and loss on meta tensors, as the trainer computes them."""
    task = getattr(getattr(model, "spec", None), "task", "classification")
    x = torch.empty(batch_size, 3, height, width, device="meta", dtype=input_dtype)  # (B, 3, H, W)
    logits = model(x)
    if task == "segmentation":
        labels = torch.zeros(batch_size, height, width, dtype=torch.long, device="meta")
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, labels, ignore_index=255)
    target = torch.zeros(batch_size, dtype=torch.long, device="meta")
    return F.cross_entropy(logits.float(), target)


class _PhaseHooks:
    """Forward hooks on ``f`` that set ``mode.phase``: forward_solve (no grad), f_step (grad), head."""

    def __init__(self, model: torch.nn.Module, mode: DryRunMode) -> None:
        self.mode, self.solve_started = mode, False
        self.handles = [model.f.register_forward_pre_hook(self._pre), model.f.register_forward_hook(self._post)]

    def _pre(self, module, inputs) -> None:
        if self.mode.phase == "backward":
            return
        if torch.is_grad_enabled():
            self.mode.phase = "f_step"
            return
        if not self.solve_started:
            self.solve_started = True
            self.mode.open_window()
        self.mode.phase = "forward_solve"

    def _post(self, module, inputs, output) -> None:
        if self.mode.phase == "f_step":
            self.mode.phase = "head"

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _saved_by_phase(model: torch.nn.Module, batch_size: int, height: int, width: int,
                    input_dtype: torch.dtype) -> dict[str, int]:
    """Bytes saved for backward in each forward phase (explicit, f_step, head), from a separate pass.

    A separate forward: with saved-tensor hooks installed, autograd kept ~50% more memory alive in
    the following backward (seen on imagenet-small), so the peak is measured without them.
    """
    mode = DryRunMode()
    saved = _SavedBytes(mode)
    phases = _PhaseHooks(model, mode)
    try:
        with meta_autocast_as_cpu(), mode, torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            loss = _loss(model, batch_size, height, width, input_dtype)
            del loss
    finally:
        phases.remove()
    return saved.by_phase


def dry_run_step(model: torch.nn.Module, batch_size: int, height: int, width: int, *,
                 input_dtype: torch.dtype = torch.float32) -> DryRunResult:
    """Forward, loss and backward of ``model`` (on the meta device) for one batch; see module doc."""
    saved = _saved_by_phase(model, batch_size, height, width, input_dtype)
    model.zero_grad(set_to_none=True)
    mode = DryRunMode()
    adjoint_open = [False]

    class _AdjointWatch(TorchDispatchMode):
        """Opens a window at the first grad-enabled op of backward (the adjoint solve)."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if torch.is_grad_enabled() and not adjoint_open[0]:
                adjoint_open[0] = True
                mode.open_window()
            return func(*args, **(kwargs or {}))

    phases = _PhaseHooks(model, mode)
    try:
        with meta_autocast_as_cpu(), mode:
            loss = _loss(model, batch_size, height, width, input_dtype)
            forward_solve = mode.close_window() if phases.solve_started else 0
            stats = getattr(model, "last_stats", None)
            mode.phase = "backward"
            with _AdjointWatch():
                loss.backward()
            adjoint_working = mode.close_window()
            del loss
            grad_keys = {id(p.grad.untyped_storage()): p.grad.untyped_storage().nbytes()
                         for p in model.parameters() if p.grad is not None}
            grads_at_peak = sum(n for k, n in grad_keys.items() if mode.created.get(k, 1 << 62) <= mode.peak_op)
    finally:
        phases.remove()
        model.zero_grad(set_to_none=True)
    explicit = saved.get("explicit", 0)
    # saved activations still alive at the peak: in backward the head's are already freed
    saved_at_peak = explicit + (saved.get("f_step", 0) if mode.peak_phase == "backward" else 0)
    if mode.peak_phase in ("head", "f_step"):
        saved_at_peak = sum(saved.values())
    return DryRunResult(
        peak_bytes=mode.peak, peak_phase=mode.peak_phase, grads_at_peak=grads_at_peak, saved_at_peak=saved_at_peak,
        explicit_activations=explicit + saved.get("head", 0), f_step_saved=saved.get("f_step", 0),
        forward_solve_working=forward_solve, adjoint_working=adjoint_working,
        gradients=sum(grad_keys.values()),
        solver_history_bytes=getattr(stats, "solver_buffer_bytes", 0) if stats is not None else 0,
        f_evaluations=getattr(stats, "nfe", 0) if stats is not None else 0,
    )
