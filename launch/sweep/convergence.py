"""Per-branch residual against solver iteration (the paper's convergence figure) for a trained point.

A forward hook on the model's ``f`` sees every f evaluation of the solve: its input z (B, D) and
f(z); splitting both into branches gives the relative residual ||f(z)_i − z_i|| / ||f(z)_i|| of
each resolution at each iterate, averaged over the batch. The weights are the point's final
checkpoint (``model.pt``); the batch is the first validation batch. The solver is stopped only by
the cap here (tolerance 0), so every branch's curve has the same length.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from trainer import build
from trainer.config import Config
from trainer.transfer import read_weights


def branch_residual_traces(cfg: Config, checkpoint_dir: str, max_iter: int | None = None) -> list[list[float]]:
    """[branch][f evaluation] mean relative residual of the trained model in ``checkpoint_dir``."""
    import data_pipelines as data

    payload = read_weights(checkpoint_dir)
    num_classes = cfg.model.num_classes or data.num_classes_of(cfg.data.val_shards)
    model = build.build_model(cfg, num_classes)
    model.load_state_dict(payload["state_dict"])
    options = build.deq_options(cfg, build.model_spec(cfg))
    model.deq_options = replace(options, f_tol=1e-12, compute_dtype=None,
                                f_max_iter=max_iter or options.f_max_iter)
    model.eval()
    loader = data.build_eval_loader(cfg.data.dataset, cfg.data.val_shards,
                                    **build.eval_loader_args(cfg, rank=0, world_size=1))
    images, _ = next(iter(loader))  # (B, 3, H, W)
    traces: list[list[float]] = []

    def record(module, inputs, output):
        z, f_args = inputs[0], inputs[1:]
        layout = module.layout(f_args[0])
        sizes = layout.branch_sizes
        for i, (zi, fi) in enumerate(zip(z.float().split(sizes, dim=1), output.float().split(sizes, dim=1))):
            rel = torch.linalg.vector_norm(fi - zi, dim=1) / (torch.linalg.vector_norm(fi, dim=1) + 1e-12)
            if len(traces) <= i:
                traces.append([])
            traces[i].append(float(rel.mean()))

    handle = model.f.register_forward_hook(record)
    try:
        with torch.no_grad():
            model(images.float())
    finally:
        handle.remove()
    return traces


def iterations_to(trace: list[float], threshold: float) -> int | None:
    """First f evaluation (1-based) at which ``trace`` is below ``threshold``; None if never."""
    for k, value in enumerate(trace, start=1):
        if value < threshold:
            return k
    return None
