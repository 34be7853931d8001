"""Time `mdeq train`'s steps against `mdeq bench step` (same model, batch, caps): the loop's overhead.

Both run as fresh single processes in the equilibrium phase (no warm-up) with the solver run to its
caps (tolerance 1e-12), fp32, Adam. `mdeq train` adds what a real run has: DeepSpeed (ZeRO 0), the
webdataset stream of synthetic shards (1 loader worker), the divergence checks, console progress and
MLflow (SQLite) every step. Figures: median seconds per step of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="classification registry name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--f-max-iter", type=int, default=10)
    parser.add_argument("--b-max-iter", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=1, help="loader workers of mdeq train")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate bench step / train this many times (both see the same machine load)")


def _mdeq(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "launch.cli.main", *argv], capture_output=True, text=True,
                          env=env, check=False)


def _bench_step(args: argparse.Namespace) -> dict:
    bench = _mdeq("bench", "step", "--model", args.model, "--batch", str(args.batch), "--res", str(args.res),
                  "--f-max-iter", str(args.f_max_iter), "--b-max-iter", str(args.b_max_iter), "--f-tol", "1e-12",
                  "--precision", "fp32", "--steps", str(args.steps), "--warmup", str(args.warmup), "--json")
    if bench.returncode != 0:
        raise RuntimeError(f"mdeq bench step failed:\n{bench.stderr[-3000:]}")
    return json.loads(bench.stdout[bench.stdout.index("{"):])


def _train_steps(args: argparse.Namespace) -> list[dict]:
    import data_pipelines as data

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # one epoch covers the whole run: an epoch boundary restarts the loader workers, which a real
        # (long) epoch amortises but a tiny synthetic one would charge to a few of the timed steps
        per_class = -(-args.batch * (args.warmup + args.steps + 1) // 10)
        data.synth_imagenet(root / "raw", classes=10, train_per_class=per_class, val_per_class=2,
                            size=args.res, seed=0)
        data.write_imagenet_shards(root / "raw", root / "train", split="train", samples_per_shard=64, progress=False)
        data.write_imagenet_shards(root / "raw", root / "val", split="val", samples_per_shard=10, progress=False)
        total = args.warmup + args.steps
        sets = [f"model.name={args.model}", "model.num_classes=10", f"data.train_shards={root / 'train'}",
                f"data.val_shards={root / 'val'}", f"data.image_size={args.res}", f"data.eval_resize={args.res}",
                f"data.batch_size={args.batch}", f"data.workers={args.workers}", "data.eval_max_batches=1",
                f"train.max_steps={total}", "train.log_every=1", "train.eval_every=0", "optim.name=adam",
                "optim.lr=0.001", "optim.weight_decay=0", "deepspeed.zero_stage=0", "deepspeed.precision=fp32",
                "deq.pretrain_steps=0", f"deq.f_max_iter={args.f_max_iter}", f"deq.b_max_iter={args.b_max_iter}",
                "deq.f_tol=1e-12", f"checkpoint.dir={root / 'run' / 'checkpoints'}",
                f"tracking.uri=sqlite:///{root / 'mlflow.db'}", "tracking.system_metrics=false"]
        argv = ["train"]
        for item in sets:
            argv += ["--set", item]
        train = _mdeq(*argv)
        if train.returncode != 0:
            raise RuntimeError(f"mdeq train failed:\n{train.stderr[-3000:]}")
        history = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return [h for h in history if h["step"] > args.warmup]


def run(args: argparse.Namespace) -> dict:
    bench_times: list[float] = []
    timed: list[dict] = []
    for _ in range(args.repeats):
        bench_result = _bench_step(args)
        bench_times += bench_result["step_s"]
        timed += _train_steps(args)
    wall = [h["train/wall_step_s"] for h in timed]
    inner = [h["train/step_s"] for h in timed]
    train_median = statistics.median(wall)
    bench_median = statistics.median(bench_times)
    return {
        "model": args.model, "batch": args.batch, "res": args.res, "f_max_iter": args.f_max_iter,
        "b_max_iter": args.b_max_iter, "steps": args.steps,
        "train_step_s_median": train_median, "train_inner_step_s_median": statistics.median(inner),
        "bench_step_s_median": bench_median, "repeats": args.repeats,
        "ratio": train_median / bench_median,
        "train_data_wait_fraction_median": statistics.median(h["train/data_wait_fraction"] for h in timed),
        "train_f_nfe": statistics.median(h.get("solver/f_nfe", 0) for h in timed),
        "bench_f_nfe": bench_result["f_nfe"], "train_b_nfe": statistics.median(h.get("solver/b_nfe", 0) for h in timed),
        "bench_b_nfe": bench_result["b_nfe"],
    }
