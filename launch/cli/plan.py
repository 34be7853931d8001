"""``mdeq plan``: memory per device for a model, batch, resolution, precision and ZeRO layout.

    mdeq plan --model imagenet-small --batch 32 --res 224 --precision bf16 --zero-stage 2 --world 8
    mdeq plan --config configs/imagenet/large.yaml --world 16        # values from a recipe
    mdeq plan --model tiny --batch 8 --res 32 --measure               # also run real steps and compare
    mdeq plan --model imagenet-large --res 224 --precision bf16 --fit-memory 80   # largest batch in 80 GiB

The breakdown comes from ZeRO arithmetic (weights, gradients, optimizer state) and a dry run of
the real training step on the meta device (activations, solver buffers, implicit-backward extras);
see docs/scaling.md for the method and how well it matches measured peaks.
"""

from __future__ import annotations

import argparse
import json
import os


def _resolution(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '1024x512' -> (height 512, width 1024) as W x H like data.crop_size."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--res must be S or WxH, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[1], parts[0]
    raise argparse.ArgumentTypeError(f"--res must be S or WxH, got {text!r}")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plan", help="estimate memory per device (weights, optimizer, activations, solver)")
    parser.add_argument("--config", help="take model, batch, resolution, precision, ZeRO stage, optimizer and "
                                         "solver caps from this recipe (flags below override it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (with --config), e.g. --set model.channels=[16,32]")
    parser.add_argument("--model", help="registry name (see `mdeq models`)")
    parser.add_argument("--batch", type=int, help="micro-batch per device")
    parser.add_argument("--res", type=_resolution, help="input resolution: S (square) or WxH")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3))
    parser.add_argument("--world", type=int, help="data-parallel processes (default: WORLD_SIZE or 1)")
    parser.add_argument("--optimizer", choices=("sgd", "adam", "adamw"))
    parser.add_argument("--f-max-iter", type=int, help="forward solver cap (default: the recipe's)")
    parser.add_argument("--b-max-iter", type=int, help="backward solver cap (default: the recipe's)")
    parser.add_argument("--history", type=int, help="solver history (low-rank pairs kept)")
    parser.add_argument("--pretrain", action="store_true", help="plan a warm-up step (unrolled f) instead")
    parser.add_argument("--measure", action="store_true",
                        help="also run real fp32 steps on this machine (ZeRO-0, one process) and compare")
    parser.add_argument("--fit-memory", type=float, metavar="GIB",
                        help="answer the largest batch per device whose plan plus the GPU overhead fits GIB GiB "
                             "(--batch is ignored)")
    parser.add_argument("--overhead-fixed-gib", type=float, default=None,
                        help="GPU overhead outside the tensors (context, cuBLAS/cuDNN workspaces); "
                             "default: an uncalibrated placeholder (mdeq/planner/fit.py)")
    parser.add_argument("--overhead-fraction", type=float, default=None,
                        help="allocator rounding/fragmentation as a fraction of the planned peak; "
                             "default: an uncalibrated placeholder")
    parser.add_argument("--json", action="store_true", help="print the plan (and measurement) as JSON")
    parser.set_defaults(func=_run)


def build_request(args: argparse.Namespace):
    """The PlanRequest from ``--config`` (if any) with the flags on top."""
    from dataclasses import replace

    from mdeq.deq.options import DEQOptions
    from mdeq.errors import MDEQError
    from mdeq.planner import PlanRequest

    fields: dict = {"precision": "fp32", "zero_stage": 0, "optimizer": "adam", "momentum": 0.9}
    deq = None
    if args.config:
        from trainer import build
        from trainer.config import load_config

        cfg = load_config(args.config, args.overrides)
        spec = build.model_spec(cfg)
        if cfg.data.crop_size is not None:
            height, width = cfg.data.crop_size[1], cfg.data.crop_size[0]
        else:
            height = width = cfg.data.image_size
        fields.update(model=cfg.model.name, batch_size=cfg.data.batch_size, height=height, width=width,
                      precision=cfg.deepspeed.precision, zero_stage=cfg.deepspeed.zero_stage,
                      optimizer=cfg.optim.name, momentum=cfg.optim.momentum,
                      overrides=tuple(sorted(build.model_overrides(cfg).items())))
        deq = build.deq_options(cfg, spec)
    elif args.overrides:
        raise MDEQError("--set needs --config (model overrides come from a recipe's model.* keys)")
    for flag, key in (("model", "model"), ("batch", "batch_size"), ("precision", "precision"),
                      ("zero_stage", "zero_stage"), ("optimizer", "optimizer")):
        if getattr(args, flag) is not None:
            fields[key] = getattr(args, flag)
    if args.res is not None:
        fields["height"], fields["width"] = args.res
    if getattr(args, "fit_memory", None) is not None:
        fields["batch_size"] = 1  # searched by --fit-memory
    missing = [f"--{name}" for name, key in (("model", "model"), ("batch", "batch_size"), ("res", "height"))
               if key not in fields]
    if missing:
        raise MDEQError(f"mdeq plan needs {', '.join(missing)} (or --config with a recipe that sets them)")
    fields["world_size"] = args.world if args.world is not None else int(os.environ.get("WORLD_SIZE", "1"))
    fields["mode"] = "pretrain" if args.pretrain else "equilibrium"
    caps = {k: v for k, v in (("f_max_iter", args.f_max_iter), ("b_max_iter", args.b_max_iter),
                              ("history", args.history)) if v is not None}
    if caps:
        if deq is None:
            from mdeq.registry import get_model_spec

            spec = get_model_spec(fields["model"])
            deq = DEQOptions(f_max_iter=spec.f_max_iter, b_max_iter=spec.b_max_iter, stop_mode=spec.stop_mode,
                             unrolled_steps=spec.pretrain_layers)
        deq = replace(deq, **caps)
    return PlanRequest(deq=deq, **fields)


def _fit(args: argparse.Namespace, request) -> int:
    """``--fit-memory``: the largest batch per device, with the overhead that was assumed."""
    from mdeq.errors import MDEQError
    from mdeq.planner import format_plan
    from mdeq.planner.fit import GIB, GpuOverhead, largest_batch

    placeholder = GpuOverhead.PLACEHOLDER
    custom = args.overhead_fixed_gib is not None or args.overhead_fraction is not None
    fixed = args.overhead_fixed_gib if args.overhead_fixed_gib is not None else placeholder.fixed_bytes / GIB
    fraction = args.overhead_fraction if args.overhead_fraction is not None else placeholder.fraction
    if fixed < 0 or not 0 <= fraction < 1:
        raise MDEQError(f"--overhead-fixed-gib must be >= 0 and --overhead-fraction in [0, 1), got {fixed}, {fraction}")
    overhead = GpuOverhead(int(fixed * GIB), fraction, calibrated=custom)
    fit = largest_batch(request, int(args.fit_memory * GIB), overhead)
    if args.json:
        print(json.dumps({"request": {k: v for k, v in request.__dict__.items() if k not in ("deq", "batch_size")},
                          "fit": fit.as_dict()}, indent=2, default=str))
        return 0 if fit.batch_size else 1
    label = "given" if custom else "PLACEHOLDER, not calibrated on a GPU"
    print(f"overhead assumed ({label}): {fixed:.2f} GiB + {fraction:.0%} of the planned peak")
    if not fit.batch_size:
        print(f"no batch fits {args.fit_memory:g} GiB: batch 1 needs {(fit.plan.peak + fit.overhead_bytes) / GIB:.2f} GiB")
        return 1
    print(f"largest batch per device in {args.fit_memory:g} GiB: {fit.batch_size} "
          f"(needs {(fit.plan.peak + fit.overhead_bytes) / GIB:.2f} GiB: plan {fit.plan.peak / GIB:.2f} + "
          f"overhead {fit.overhead_bytes / GIB:.2f})")
    from dataclasses import replace

    print(format_plan(fit.plan, replace(request, batch_size=fit.batch_size)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from mdeq.planner import format_plan, measure_peak_memory, plan_memory

    request = build_request(args)
    if args.fit_memory is not None:
        return _fit(args, request)
    plan = plan_memory(request)
    result: dict = {"request": {k: v for k, v in request.__dict__.items() if k != "deq"}, "plan": plan.as_dict()}
    measured = None
    if args.measure:
        from dataclasses import replace

        measured = measure_peak_memory(replace(request, precision="fp32", zero_stage=0, world_size=1))
        same = plan if (request.precision, request.zero_stage, request.world_size) == ("fp32", 0, 1) \
            else plan_memory(replace(request, precision="fp32", zero_stage=0, world_size=1))
        result["measured"] = {**measured.__dict__, "planned_peak": same.peak, "ratio": same.peak / measured.peak}
    if args.json:
        result["request"]["overrides"] = dict(request.overrides)
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(format_plan(plan, request))
    if measured is not None:
        m = result["measured"]
        print(f"  measured (fp32, ZeRO-0, 1 process, {m['method']} on {m['device']}): "
              f"{m['peak'] / (1 << 20):.1f} MiB; planned {m['planned_peak'] / (1 << 20):.1f} MiB "
              f"(ratio {m['ratio']:.3f}); {m['f_evaluations']} f / {m['b_evaluations']} adjoint evaluations")
    return 0
