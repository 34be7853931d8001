"""memory of one training forward vs the solver cap: saved tensors and solver buffers.

For each gradient mode (implicit, unrolled) and each forward cap, one training forward + backward
of the model on a synthetic batch. ``saved_bytes`` counts the distinct storages that autograd saves
for backward during the forward (saved-tensor hooks; parameters excluded, they exist anyway);
``solver_buffer_bytes`` is the forward solver's history buffers. The solve runs to the cap
(tolerance 0) so the cap is what is measured. On CUDA the peak allocated memory is reported too.
"""

from __future__ import annotations

import argparse

from mdeq.bench.common import add_model_arguments, int_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mdeq bench memory``."""
    add_model_arguments(parser)
    parser.add_argument("--f-max-iter", type=int_list, default=[4, 8, 16, 32, 64],
                        help="comma-separated forward caps, e.g. 4,8,16,32,64")
    parser.add_argument("--b-max-iter", type=int, default=4, help="backward cap (does not affect the figures)")
    parser.add_argument("--modes", default="implicit,unrolled", help="gradient modes to measure")


def run(args: argparse.Namespace) -> list[dict]:
    """One row per (mode, cap): {mode, f_max_iter, saved_bytes, solver_buffer_bytes, ...}."""
    from mdeq.bench.common import build_model, pick_device

    device = pick_device(args.device)
    model = build_model(args, device)  # no optimizer step is taken: one model serves every row
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        for cap in args.f_max_iter:
            model.zero_grad(set_to_none=True)
            rows.append(measure(model, mode=mode, f_max_iter=cap, b_max_iter=args.b_max_iter, batch=args.batch,
                                res=args.res, device=device, seed=args.seed))
    return rows


def measure(model, *, mode: str, f_max_iter: int, b_max_iter: int, batch: int, res: int, device,
            seed: int = 0) -> dict:
    """Saved-for-backward bytes and solver buffer bytes of one training step of ``model``."""
    import torch

    from mdeq.bench.common import synthetic_batch, task_loss

    options = model.deq_options
    options.grad_mode, options.f_max_iter, options.b_max_iter = mode, f_max_iter, b_max_iter
    options.f_tol = options.b_tol = 1e-30  # run to the cap: the cap is what is measured
    torch.manual_seed(seed)
    images, labels = synthetic_batch(model, batch, res, device)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = task_loss(model(images), labels)
    saved = sum(storages.values())
    loss.backward()
    stats = model.last_stats
    row = {"mode": mode, "f_max_iter": f_max_iter, "saved_bytes": saved,
           "solver_buffer_bytes": stats.solver_buffer_bytes, "f_nfe": stats.nfe,
           "state_precision": str(options.state_dtype).removeprefix("torch.")}
    if device.type == "cuda":
        row["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return row
