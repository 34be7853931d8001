"""GPU figures for docs/benchmarks.md and docs/scaling.md, in one run (≤ 10 minutes on one H100).

    python -m mdeq.planner.gpu_check --out gpu_check.json

1. The planner against ``torch.cuda.max_memory_allocated`` for three sizes (fp32, one process).
2. imagenet-large at 224: images/s and peak memory of a training step, fp32 vs bf16 (plain PyTorch:
   bf16 weights and inputs, f under bf16 autocast, solver state fp32 — what a DeepSpeed bf16 rank
   computes, without DeepSpeed's fp32 master copy, which the planner adds by arithmetic).
Every line printed is one JSON object; ``--out`` collects them in a file. Torch only.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from mdeq.planner.estimate import PlanRequest, plan_memory
from mdeq.planner.measure import measure_peak_memory

PLANNER_SIZES = (
    PlanRequest("cifar-small", 64, 32, 32),
    PlanRequest("imagenet-small", 32, 224, 224),
    PlanRequest("imagenet-large", 32, 224, 224),
)


def throughput(name: str, batch: int, res: int, precision: str, steps: int) -> dict:
    """images/s over ``steps`` timed training steps (after 2 warm-up steps) and the peak memory."""
    from mdeq.registry import create_model

    device = torch.device("cuda")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    model = create_model(name, device=device).to(dtype)
    model.train()
    model.deq_options = replace(model.deq_options, compute_dtype=dtype if precision == "bf16" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, res, res, device=device, dtype=dtype)  # (B, 3, H, W)
    y = torch.randint(0, model.spec.num_classes, (batch,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    stats = model.last_stats
    return {"kind": "throughput", "model": name, "batch": batch, "res": res, "precision": precision,
            "images_per_s": batch / seconds, "step_s": seconds,
            "peak_mib": torch.cuda.max_memory_allocated() / (1 << 20),
            "f_nfe": stats.nfe, "b_nfe": stats.b_nfe, "device": torch.cuda.get_device_name()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--skip-planner", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA device")
    results = []

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        results.append(row)
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)

    if not args.skip_planner:
        for request in PLANNER_SIZES:
            plan = plan_memory(request)
            measured = measure_peak_memory(request, steps=2)
            emit({"kind": "planner", "model": request.model, "batch": request.batch_size, "res": request.height,
                  "planned_mib": plan.peak / (1 << 20), "measured_mib": measured.peak / (1 << 20),
                  "ratio": plan.peak / measured.peak, "method": measured.method, "device": measured.device,
                  "gpu": torch.cuda.get_device_name(), "f_nfe": measured.f_evaluations,
                  "b_nfe": measured.b_evaluations})
            torch.cuda.empty_cache()
    for precision in ("fp32", "bf16"):
        emit(throughput("imagenet-large", 32, 224, precision, args.steps))
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
