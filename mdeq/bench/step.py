"""time full training steps (solve + loss + backward + optimizer step) of an MDEQ.

The equilibrium phase: forward solve without grad, one differentiable f step, implicit (or the
chosen) backward, Adam step. Synthetic data; the first ``--warmup`` steps are not timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mdeq.bench.common import add_model_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mdeq bench step``."""
    add_model_arguments(parser)
    parser.add_argument("--f-max-iter", type=int, default=18, help="forward solver cap")
    parser.add_argument("--b-max-iter", type=int, default=20, help="backward solver cap")
    parser.add_argument("--f-tol", type=float, default=None, help="forward tolerance (default: model's)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="autocast dtype of the forward (f included)")
    parser.add_argument("--backward-precision", default="fp32", choices=["fp32", "compute"],
                        help="fp32: the differentiable f step at z* (and the adjoint VJPs) without autocast; "
                             "compute: in --precision too (DEQOptions.fp32_final_step=False)")
    parser.add_argument("--grad-mode", default="implicit", choices=["implicit", "unrolled", "phantom"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--stop-check-every", type=int, default=0,
                        help="f evaluations between host reads of the solver stop flag (0: the device's default)")
    parser.add_argument("--compile-f", default="off", help="CUDA only: torch.compile mode of f (off: eager)")
    parser.add_argument("--no-tf32", action="store_true", help="CUDA only: full fp32 convolutions (no TF32)")
    parser.add_argument("--no-cudnn-benchmark", action="store_true", help="CUDA only: no cuDNN autotuning")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (images/s only)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense peak TFLOP/s for the MFU (default: the card's from mdeq.bench.flops, if known)")


def run(args: argparse.Namespace) -> dict:
    """Time the steps; return medians and solver counts."""
    import torch

    from mdeq.bench.common import autocast_for, build_model, pick_device, synthetic_batch, task_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model = build_model(args, device)
    options = model.deq_options
    options.f_max_iter, options.b_max_iter, options.grad_mode = args.f_max_iter, args.b_max_iter, args.grad_mode
    options.fp32_final_step = getattr(args, "backward_precision", "fp32") == "fp32"
    if args.f_tol is not None:
        options.f_tol = args.f_tol
    options.stop_check_every = getattr(args, "stop_check_every", 0)
    options.compile_f = getattr(args, "compile_f", "off")
    options.tf32 = not getattr(args, "no_tf32", False)
    options.cudnn_benchmark = not getattr(args, "no_cudnn_benchmark", False)
    options.validate()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = synthetic_batch(model, args.batch, args.res, device)
    times, f_nfe, b_nfe, f_res, b_res = [], [], [], [], []
    buffer_bytes, cpu_times = 0, []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(args.precision, device):
            loss = task_loss(model(images), labels)
        loss.backward()
        optimizer.step()
        _sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if i == 0:  # the only forward every configuration runs on the same (initial) weights
            first = model.last_stats
            first_res = first.rel_residual if options.stop_mode == "rel" else first.abs_residual
        if i >= args.warmup:
            stats = model.last_stats
            times.append(elapsed)
            cpu_times.append(cpu)
            f_nfe.append(stats.nfe)
            b_nfe.append(stats.b_nfe)
            f_res.append(stats.rel_residual if options.stop_mode == "rel" else stats.abs_residual)
            b_res.append(stats.b_residual)
            buffer_bytes = stats.solver_buffer_bytes
    result = {
        "model": args.model, "batch": args.batch, "res": args.res, "precision": args.precision,
        "backward_precision": "fp32" if options.fp32_final_step and args.grad_mode == "implicit" else args.precision,
        "state_precision": args.state_precision, "grad_mode": args.grad_mode, "device": str(device),
        "threads": torch.get_num_threads(), "f_solver": args.f_solver, "b_solver": args.b_solver,
        "f_max_iter": args.f_max_iter, "b_max_iter": args.b_max_iter, "steps": args.steps,
        "step_s_median": statistics.median(times), "step_s": times,
        # process CPU seconds per step (all threads): with --threads 1 it estimates the step time on
        # an idle core even when the machine is shared
        "cpu_s_median": statistics.median(cpu_times),
        "f_nfe": statistics.median(f_nfe), "b_nfe": statistics.median(b_nfe),
        "f_residual_median": statistics.median(f_res), "b_residual_median": statistics.median(b_res),
        # the timed steps' residuals come from weights already trained by the earlier steps, and the
        # gradient mode changes that training: compare configurations on f_residual_initial
        "f_residual_initial": first_res, "f_nfe_initial": first.nfe,
        "f_residual_kind": ("per-sample ||f(z)-z|| of the last unrolled step, batch mean" if args.grad_mode == "unrolled"
                            else "per-sample ||f(z)-z|| of the lowest-residual iterate, batch mean")
        + (" / ||f(z)||" if options.stop_mode == "rel" else ""),
        "stop_mode": options.stop_mode, "samples_per_s": args.batch / statistics.median(times),
        "solver_buffer_bytes": buffer_bytes, "history": args.history,
    }
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        result["device_name"] = torch.cuda.get_device_name(device)
    result["images_per_s"] = result["samples_per_s"]
    from mdeq.deq.fastpath import stop_check_every

    result.update({"stop_check_every": stop_check_every(options.stop_check_every, device), "compile_f": options.compile_f,
                   "tf32": options.tf32, "cudnn_benchmark": options.cudnn_benchmark})
    if not getattr(args, "no_flops", False):  # after the timed steps: counting is slow and must not disturb them
        result.update(throughput(model, images, labels, args, result))
    return result


def throughput(model, images, labels, args: argparse.Namespace, result: dict) -> dict:
    """FLOPs per step (counted once, see mdeq.bench.flops), achieved TFLOP/s and MFU."""
    from mdeq.bench.flops import count_step, peak_tflops

    flops = count_step(model, images, labels, args.precision)
    per_step = flops.for_step(result["f_nfe"], result["b_nfe"])
    achieved = per_step / result["step_s_median"] / 1e12
    peak = args.peak_tflops if getattr(args, "peak_tflops", None) else peak_tflops(
        result.get("device_name"), args.precision, result["tf32"])
    return {"flops_per_step": per_step, "flops_per_image": per_step / args.batch,
            "f_eval_flops_per_image": flops.f_eval / args.batch, "tflops_per_s": achieved,
            "peak_tflops": peak, "mfu": achieved / peak if peak else None}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
