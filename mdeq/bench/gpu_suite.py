"""The GPU measurements of docs/benchmarks.md in one rerunnable run (≤ 8 minutes on an H100/H200).

    python -m mdeq.bench.gpu_suite --out gpu_suite.json \\
        --baseline-tree .gpu/baseline --peers .gpu/peers

Torch + mdeq only (the GPU image has no deepspeed/mlflow/webdataset). Sections, each row appended
to ``--out`` as soon as it is measured (a run cut short keeps what it has):

1. ``env``: card, driver, torch, CUDA and cuDNN versions.
2. ``fit``: the largest batch per precision whose plan + GPU overhead fits ``--fit-gib`` (80), from
   the planner (or ``--fit-batches fp32=N,bf16=M`` to skip planning).
3. ``ours``: ``mdeq bench step`` rows (images/s, TFLOP/s, MFU, peak allocated/reserved memory) for
   each precision at ``--batch`` and at the fitted batch; for the fitted batch also the planned peak,
   so the GPU overhead can be calibrated (``overhead_*``).
4. ``baseline``: the same configurations at ``--batch`` with the code in ``--baseline-tree`` (a
   checkout of the commit before the change: ``git worktree add .gpu/baseline <commit>``), run as a
   subprocess of its own ``mdeq.bench.gpu_report``; its TFLOP/s use our FLOP count of the same model.
5. ``reference``: the released code via ``PEERS/time_reference.py`` (fp32, ``--batch``): PEERS is a
   copy of ../shared/peers (not carried to the device machine by itself); ``--reference-site`` is a
   folder with the released code's dependencies (the peers' wheels, ``pip install --target``).
6. ``switches``: bf16 at ``--batch`` with deq.stop_check_every 1 (vs the default row of ``ours``) and
   with deq.compile_f=reduce-overhead, to choose their CUDA defaults.

``--budget-s`` bounds the run: a section that would start after it is recorded as skipped.
``--smoke`` runs every section at tiny sizes (any device) to check the plumbing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file of the rows (rewritten after every row)")
    parser.add_argument("--model", default="imagenet-large")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--f-max-iter", type=int, default=26)
    parser.add_argument("--b-max-iter", type=int, default=27)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--fit-gib", type=float, default=80.0, help="memory budget of the fitted batch")
    parser.add_argument("--fit-batches", default=None, help="skip planning: e.g. fp32=96,bf16=160")
    parser.add_argument("--overhead-fixed-gib", type=float, default=None,
                        help="GPU overhead for the fit (default: the planner's uncalibrated placeholder)")
    parser.add_argument("--overhead-fraction", type=float, default=None)
    parser.add_argument("--baseline-tree", default=None, help="checkout of the code before the change")
    parser.add_argument("--peers", default=None, help="copy of ../shared/peers (tarball, wheels, time_reference.py)")
    parser.add_argument("--reference-config", default="imagenet/cls_mdeq_LARGE.yaml")
    parser.add_argument("--reference-site", default=None,
                        help="folder holding the released code's dependencies (pip install --target of the peers' wheels)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="start no section after this many seconds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the plumbing on any device")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.res, args.batch, args.f_max_iter, args.b_max_iter = "tiny", 16, 2, 3, 3
        args.steps, args.warmup, args.fit_gib = 1, 0, 0.01
        args.overhead_fixed_gib = 0.0 if args.overhead_fixed_gib is None else args.overhead_fixed_gib
        args.reference_config = "cifar/cls_mdeq_TINY.yaml"
    return args


class Suite:
    """Collects rows and rewrites ``out`` after each, so a cut-short run keeps its figures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.rows, self.started = args, [], time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def add(self, section: str, row: dict) -> dict:
        row = {"section": section, **row, "elapsed_s": round(self.elapsed(), 1)}
        self.rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        Path(self.args.out).write_text(json.dumps(self.rows, indent=2, default=str))
        return row

    def within_budget(self, section: str) -> bool:
        if self.elapsed() < self.args.budget_s:
            return True
        self.add(section, {"skipped": f"budget of {self.args.budget_s:.0f} s spent"})
        return False


def environment() -> dict:
    import torch

    row = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        row.update(card=props.name, memory_gib=round(props.total_memory / (1 << 30), 1),
                   capability=f"{props.major}.{props.minor}")
        try:
            row["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            row["driver"] = None
    return row


def fit_batches(suite: Suite) -> dict[str, int]:
    """Largest batch per precision for ``--fit-gib`` (the planner's answer, or --fit-batches)."""
    from mdeq.deq.options import DEQOptions
    from mdeq.planner import PlanRequest
    from mdeq.planner.fit import GIB, GpuOverhead, largest_batch
    from mdeq.registry import get_model_spec

    args = suite.args
    if args.fit_batches:
        given = dict(part.split("=") for part in args.fit_batches.split(","))
        return {precision: int(batch) for precision, batch in given.items()}
    placeholder = GpuOverhead.PLACEHOLDER
    custom = args.overhead_fixed_gib is not None or args.overhead_fraction is not None
    overhead = GpuOverhead(
        int(args.overhead_fixed_gib * GIB) if args.overhead_fixed_gib is not None else placeholder.fixed_bytes,
        args.overhead_fraction if args.overhead_fraction is not None else placeholder.fraction, calibrated=custom)
    spec = get_model_spec(args.model)
    deq = DEQOptions(f_max_iter=args.f_max_iter, b_max_iter=args.b_max_iter, stop_mode=spec.stop_mode)
    batches = {}
    for precision in args.precisions.split(","):
        start = time.perf_counter()
        fit = largest_batch(PlanRequest(args.model, 1, args.res, args.res, precision=precision, deq=deq),
                            int(args.fit_gib * GIB), overhead)
        batches[precision] = fit.batch_size
        suite.add("fit", {"precision": precision, "fit_gib": args.fit_gib, "batch": fit.batch_size,
                          "planned_peak_bytes": fit.plan.peak if fit.plan else None,
                          "overhead_bytes": fit.overhead_bytes, "overhead_calibrated": fit.overhead.calibrated,
                          "plan_s": round(time.perf_counter() - start, 1)})
    return batches


def step_args(args: argparse.Namespace, precision: str, batch: int, **switches) -> argparse.Namespace:
    """The ``mdeq bench step`` arguments of one configuration."""
    return argparse.Namespace(
        model=args.model, batch=batch, res=args.res, f_solver="broyden", b_solver="broyden", history=8,
        state_precision="fp32", device=args.device, seed=0, f_max_iter=args.f_max_iter,
        b_max_iter=args.b_max_iter, f_tol=None, precision=precision, backward_precision="fp32",
        grad_mode="implicit", steps=args.steps, warmup=args.warmup, threads=0,
        stop_check_every=switches.get("stop_check_every", 0), compile_f=switches.get("compile_f", "off"),
        no_tf32=False, no_cudnn_benchmark=False, no_flops=False, peak_tflops=None)


def measure_ours(suite: Suite, precision: str, batch: int, **switches) -> dict:
    import torch

    from mdeq.bench import step

    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        row = step.run(step_args(suite.args, precision, batch, **switches))
        row.pop("step_s", None)
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            row["reserved_peak_bytes"] = torch.cuda.max_memory_reserved()
            row["device_used_bytes_after"] = total - free  # context + reserved: what the budget must hold
        return row
    except torch.cuda.OutOfMemoryError as err:
        return {"model": suite.args.model, "batch": batch, "precision": precision, "oom": True,
                "error": str(err).splitlines()[0]}


def run_baseline(suite: Suite, tree: str, flops_per_config: dict) -> None:
    """The previous code's gpu_report at --batch, as a subprocess with that tree first on sys.path."""
    args = suite.args
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        configs = ",".join(f"{p}:implicit" for p in args.precisions.split(","))
        command = [sys.executable, "-m", "mdeq.bench.gpu_report", "--model", args.model, "--res", str(args.res),
                   "--batch", str(args.batch), "--f-max-iter", str(args.f_max_iter), "--b-max-iter",
                   str(args.b_max_iter), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--configs", configs, "--json-out", str(out), "--device", args.device]
        env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                              timeout=max(60.0, args.budget_s - suite.elapsed() + 120))
        if done.returncode != 0 or not out.exists():
            suite.add("baseline", {"error": done.stderr.strip().splitlines()[-1:] or ["no output"]})
            return
        for row in json.loads(out.read_text()):
            flops = flops_per_config.get(row.get("precision"))
            if flops is not None and "step_s_median" in row:
                per_step = flops.for_step(row["f_nfe"], row["b_nfe"])
                row["tflops_per_s"] = per_step / row["step_s_median"] / 1e12
                row["images_per_s"] = row["batch"] / row["step_s_median"]
            suite.add("baseline", row)


def run_reference(suite: Suite, peers: str) -> None:
    """The released code's timing script on an unpacked copy of the peers tarball (fp32)."""
    args = suite.args
    peers_dir = Path(peers)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(peers_dir / "locuslab-deq-mdeq-vision.tar.gz") as tar:
            tar.extractall(tmp, filter="data")
        env = dict(os.environ)
        if args.reference_site:  # the reference's own dependencies (yacs, …), installed beside ours
            env["PYTHONPATH"] = args.reference_site
        root = next(p.parent for p in Path(tmp).rglob("MDEQ-Vision"))
        device = "cuda" if args.device in ("auto", "cuda") and _cuda() else "cpu"
        command = [sys.executable, str(peers_dir / "time_reference.py"), str(root), args.reference_config,
                   "--batch", str(args.batch), "--res", str(args.res), "--steps", str(args.steps),
                   "--device", device, "--f-thres", str(args.f_max_iter), "--b-thres", str(args.b_max_iter)]
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=max(60.0, args.budget_s - suite.elapsed() + 120))
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            suite.add("reference", {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]})
            return
        suite.add("reference", {"config": args.reference_config, **json.loads(lines[-1])})


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> list[dict]:
    from mdeq.bench.common import build_model, pick_device, synthetic_batch
    from mdeq.bench.flops import count_step

    args = parse_args(argv)
    suite = Suite(args)
    suite.add("env", environment())
    precisions = args.precisions.split(",")
    fitted = fit_batches(suite) if suite.within_budget("fit") else {}
    flops_per_config = {}
    for precision in precisions:
        for batch in [args.batch] + ([fitted[precision]] if fitted.get(precision) else []):
            if not suite.within_budget("ours"):
                break
            row = measure_ours(suite, precision, batch)
            if batch == args.batch and "flops_per_step" in row:
                step_ns = step_args(args, precision, batch)
                device = pick_device(args.device)
                model = build_model(step_ns, device)
                model.deq_options.f_max_iter, model.deq_options.b_max_iter = args.f_max_iter, args.b_max_iter
                images, labels = synthetic_batch(model, batch, args.res, device)
                flops_per_config[precision] = count_step(model, images, labels, precision)
                del model
            suite.add("ours", row)
    if args.baseline_tree and suite.within_budget("baseline"):
        run_baseline(suite, args.baseline_tree, flops_per_config)
    elif not args.baseline_tree:
        suite.add("baseline", {"skipped": "no --baseline-tree"})
    if args.peers and suite.within_budget("reference"):
        run_reference(suite, args.peers)
    elif not args.peers:
        suite.add("reference", {"skipped": "no --peers"})
    for switches in ({"stop_check_every": 1}, {"compile_f": "reduce-overhead"}):
        if suite.within_budget("switches"):
            suite.add("switches", {**switches, **measure_ours(suite, precisions[-1], args.batch, **switches)})
    return suite.rows


if __name__ == "__main__":
    main(sys.argv[1:])
