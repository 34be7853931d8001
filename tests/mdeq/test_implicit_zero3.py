"""The implicit backward under real DeepSpeed ZeRO-3 (single process, gloo, CPU) matches ZeRO-0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    import deepspeed
    from mdeq.deq.options import DEQOptions
    from mdeq.registry import create_model

    torch.set_num_threads(1)
    results = {}
    for stage in (0, 3):
        torch.manual_seed(0)
        model = create_model("tiny", dropout=0.0)
        model.deq_options = DEQOptions(f_max_iter=6, b_max_iter=6)
        config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                  "gradient_clipping": 0.0, "zero_optimization": {"stage": stage},
                  "zero_allow_untested_optimizer": True}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        torch.manual_seed(1)
        images, labels = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
        losses, b_nfe = [], []
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(engine(images), labels)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            b_nfe.append(engine.module.last_stats.b_nfe)
        results[stage] = {"losses": losses, "b_nfe": b_nfe}
        engine.destroy()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    print("RESULT " + json.dumps(results))
""")


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_implicit_backward_under_zero3_matches_zero0(tmp_path):
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(29500 + os.getpid() % 1000), DS_ACCELERATOR="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=280)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    results = json.loads(lines[-1].removeprefix("RESULT "))
    zero0, zero3 = results["0"], results["3"]
    assert all(n > 0 for n in zero3["b_nfe"])  # the adjoint solve ran inside the ZeRO-3 backward
    assert zero3["losses"] == pytest.approx(zero0["losses"], rel=1e-5)
    assert zero3["losses"][-1] < zero3["losses"][0]  # and the parameters it updated were the real ones
