"""f-evaluations each solver needs to reach residual tolerances on a model's own f.

Runs every solver on ``model.f`` with the model's prepared ``f_args`` for one random batch (training
mode: BatchNorm on batch statistics; dropout off), from zeros, to the cap with tolerance 0, and
reports for each tolerance the first f evaluation whose batch-mean residual is below it (None: not
within the cap) plus the lowest residual seen.
"""

from __future__ import annotations

import argparse

from mdeq.bench.common import add_model_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mdeq bench solvers``."""
    add_model_arguments(parser)
    parser.add_argument("--solvers", default="fixed_point,broyden,anderson")
    parser.add_argument("--max-iter", type=int, default=40, help="cap on f evaluations")
    parser.add_argument("--tolerances", default="0.5,0.3,0.2,0.1,0.05")
    parser.add_argument("--stop-mode", default="rel", choices=["abs", "rel"])


def run(args: argparse.Namespace) -> list[dict]:
    """One row per solver: {solver, nfe_to_tol: {tol: nfe or None}, lowest_residual}."""
    import torch

    from mdeq.bench.common import pick_device
    from mdeq.deq.options import dtype_from_name
    from mdeq.registry import create_model
    from mdeq.solvers import get_solver

    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    model = create_model(args.model, dropout=0.0).to(device).train()
    images = torch.randn(args.batch, 3, args.res, args.res, device=device)
    tolerances = [float(t) for t in args.tolerances.split(",")]
    rows = []
    with torch.no_grad():
        injections = model.injection(model.stem(images))
        f_args = model.f.prepare(injections)
        layout = model.f.layout(injections[0])
        z0 = torch.zeros(args.batch, layout.total, device=device)
        for name in args.solvers.split(","):
            _, stats = get_solver(name)(lambda z: model.f(z, *f_args), z0, max_iter=args.max_iter, tol=1e-30,
                                        stop_mode=args.stop_mode, history=args.history,
                                        state_dtype=dtype_from_name(args.state_precision),
                                        branch_sizes=layout.branch_sizes)
            trace = stats.residual_trace
            rows.append({"solver": name, "model": args.model, "batch": args.batch, "res": args.res,
                         "max_iter": args.max_iter, "history": args.history, "stop_mode": args.stop_mode,
                         "nfe_to_tol": {str(t): next((i + 1 for i, r in enumerate(trace) if r < t), None)
                                        for t in tolerances},
                         "lowest_residual": min(trace)})
    return rows
