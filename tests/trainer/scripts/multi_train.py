"""Run several trainings (and evals) in ONE torchrun launch: DeepSpeed start-up is the slow part.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/trainer/scripts/multi_train.py PLAN.json

PLAN.json: {"out": dir, "runs": [{"name", "config", "overrides": [...]}],
            "evals": [{"name", "argv": [...]}]}  (argv of `mdeq eval`, run through the CLI entry point)
Rank 0 writes out/<name>.json per run: steps, final_metrics, history, error (a message or null).
The process group is created once here; train() leaves a group it did not create in place.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch.distributed as dist

from launch.cli.main import main as mdeq_main
from trainer.config import load_config
from trainer.loop import train


def run() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    out = Path(plan["out"])
    dist.init_process_group("gloo")  # owned here: train() and eval leave it in place
    is_main = dist.get_rank() == 0
    for item in plan["runs"]:
        record = {"name": item["name"], "error": None}
        try:
            result = train(load_config(item["config"], item["overrides"]))
            record.update(steps=result.steps, final_metrics=result.final_metrics, history=result.history,
                          checkpoint_dir=result.checkpoint_dir, run_id=result.tracking_run_id)
        except Exception as err:  # recorded for the test to report; the next run still runs
            record["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        if is_main:
            (out / f"{item['name']}.json").write_text(json.dumps(record, default=str))
    for item in plan.get("evals", []):
        print(f"EVAL {item['name']} BEGIN", flush=True)
        code = mdeq_main(item["argv"])
        print(f"EVAL {item['name']} END rc={code}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    run()
