"""GPU report: step time and peak memory of one model in fp32 vs bf16, implicit vs unrolled.

Torch + mdeq only (the GPU image has no deepspeed/mlflow). Run on the GPU machine as::

    python -m mdeq.bench.gpu_report --json-out gpu_report.json

Defaults measure imagenet-large at 224x224, batch 32, forward/backward caps 26/27, 3 timed steps
after 1 warm-up step per configuration: fp32 and bf16 (autocast) forwards, implicit and unrolled
gradients, and bf16 with the implicit backward in bf16 too (``bf16:implicit:compute``). A configuration that runs out of memory is reported with
``"oom": true`` and the rest go on. Every row is printed as one JSON line as soon as it is measured
(so a run cut short still leaves figures), and the whole list is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# precision:grad_mode[:backward precision] (fp32 = DEQOptions.fp32_final_step, compute = bf16 too)
DEFAULT_CONFIGS = "fp32:implicit,bf16:implicit,bf16:implicit:compute,fp32:unrolled,bf16:unrolled"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring for the defaults)."""
    from mdeq.bench.common import add_model_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.set_defaults(model="imagenet-large", batch=32, res=224)
    parser.add_argument("--f-max-iter", type=int, default=26)
    parser.add_argument("--b-max-iter", type=int, default=27)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help="comma-separated precision:grad_mode[:fp32|compute], e.g. fp32:implicit,bf16:unrolled")
    parser.add_argument("--json-out", default=None, help="also write the list of rows to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure every configuration; return (and print) one row each."""
    import torch

    from mdeq.bench import step

    args = parse_args(argv)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    rows = []
    started = time.perf_counter()
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        precision, grad_mode, *rest = config.split(":")
        run_args = argparse.Namespace(**vars(args))
        run_args.precision, run_args.grad_mode, run_args.f_tol, run_args.threads = precision, grad_mode, None, 0
        run_args.backward_precision = rest[0] if rest else "fp32"
        try:
            row = step.run(run_args)
            row.pop("step_s", None)
        except torch.cuda.OutOfMemoryError as err:
            row = {"model": args.model, "batch": args.batch, "res": args.res, "precision": precision,
                   "grad_mode": grad_mode, "backward_precision": run_args.backward_precision, "oom": True, "error": str(err).splitlines()[0]}
        if torch.cuda.is_available():
            row["device_name"] = torch.cuda.get_device_name()
            torch.cuda.empty_cache()
        row["elapsed_total_s"] = time.perf_counter() - started
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps(rows, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
