"""The checkpointer across processes: a 2-rank ZeRO save commits once and resumes in 1 process (ZeRO-0..3).

Run as a test it launches itself under torchrun (``python -m torch.distributed.run ... this_file
--worker``) so the save, the commit barrier and the re-sharding run in real gloo process groups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.distributed import free_port

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
PYTHON = sys.executable
# run name -> (ZeRO stage, optimizer state tensors that must survive the re-sharding, bf16)
OPTIMIZERS = {"sgd": (1, ["momentum_buffer"], False), "adam": (1, ["exp_avg", "exp_avg_sq"], False),
              "sgd-zero0": (0, ["momentum_buffer"], False), "adam-bf16": (1, ["exp_avg", "exp_avg_sq"], True)}
# ZeRO-3 (no per-parameter mapping in its files: trainer/checkpoint/universal_zero3.py)
OPTIMIZERS_ZERO3 = {"sgd-zero3": (3, ["momentum_buffer"], False),
                    "adam-bf16-zero3": (3, ["exp_avg", "exp_avg_sq"], True)}
RUNS = {"zero012": OPTIMIZERS, "zero3": OPTIMIZERS_ZERO3}


def _launch(nproc: int, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", str(HERE), "--worker", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_two_process_zero1_checkpoint_resumes_in_one_process(tmp_path):
    # ZeRO-1 SGD (momentum: DeepSpeed's own ds_to_universal cannot convert it), Adam, Adam with bf16
    # (the quickstart's layout), ZeRO-0 SGD; all in one launch for the save and one for the resume
    saved = _launch(2, "save", str(tmp_path), "zero012")
    assert saved.returncode == 0, saved.stdout[-3000:] + saved.stderr[-3000:]
    for optimizer, (stage, _, _) in OPTIMIZERS.items():
        marker = json.loads((tmp_path / optimizer / "step_000000003" / "COMMITTED.json").read_text())
        assert marker["world_size"] == 2 and marker["zero_stage"] == stage
        assert {"client/rank_00000.json", "client/rank_00001.json"} <= set(marker["files"])
    resumed = _launch(1, "resume", str(tmp_path), "zero012")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for optimizer, (_, keys, bf16) in OPTIMIZERS.items():
        result = json.loads((tmp_path / optimizer / "resume.json").read_text())
        # the full fp32 weights and every optimizer state tensor equal what the 2 ranks held
        assert result["state_keys"] == keys, result
        assert result["max_state_diff"] == 0.0, result
        # one more step on the same global batch: the same update up to summation order (2 partial
        # means); in bf16 that order shows at bf16 resolution
        assert result["max_step_diff"] <= (2e-2 if bf16 else 1e-6), result
        # rank 0's client state (its loader position describes the 2-rank layout) and the old size
        assert result["client_state"] == {"step": 3, "loader_state": {"rank": 0}, "resumed_from_world_size": 2}
        assert result["forward_calls"] == 3.0, result  # the module buffer is the saved one, not the initial 0


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_zero3_checkpoint_resumes_with_another_process_count(tmp_path):
    # ZeRO-3 files are flat partitions per rank (DeepSpeed's zero_to_fp32 layout): the 2 ranks'
    # fp32 masters and optimizer states are consolidated and re-cut for 1 rank, and back. Odd-sized tensors
    # (the 3-value bias) exercise the padding of the last share.
    saved = _launch(2, "save", str(tmp_path), "zero3")
    assert saved.returncode == 0, saved.stdout[-3000:] + saved.stderr[-3000:]
    for optimizer in OPTIMIZERS_ZERO3:
        marker = json.loads((tmp_path / optimizer / "step_000000003" / "COMMITTED.json").read_text())
        assert marker["world_size"] == 2 and marker["zero_stage"] == 3
    # the 1-process run also saves at step 4, and 2 processes resume that (1 -> 2)
    resumed = _launch(1, "resume", str(tmp_path), "zero3", str(tmp_path / "one"))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    regrown = _launch(2, "resume", str(tmp_path / "one"), "zero3")
    assert regrown.returncode == 0, regrown.stdout[-3000:] + regrown.stderr[-3000:]
    for root, step, old_world in ((tmp_path, 3, 2), (tmp_path / "one", 4, 1)):
        for optimizer, (_, keys, bf16) in OPTIMIZERS_ZERO3.items():
            result = json.loads((root / optimizer / "resume.json").read_text())
            assert result["state_keys"] == keys, result
            assert result["max_state_diff"] == 0.0, result  # fp32 masters and every state tensor, exactly
            assert result["max_step_diff"] <= (2e-2 if bf16 else 1e-6), result
            assert result["client_state"] == {"step": step, "loader_state": {"rank": 0},
                                              "resumed_from_world_size": old_world}
            assert result["global_steps"] == step, result  # DeepSpeed's counters come from saved rank 0
            assert result["forward_calls"] == float(step), result  # and so does the module buffer


# ------------------------------------------------------------------------------------------------
# worker (runs under torchrun)


def _worker(mode: str, root: str, run: str, resave_root: str = "") -> None:
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    for optimizer_name, spec in RUNS[run].items():
        resave = f"{resave_root}/{optimizer_name}" if resave_root else None
        _run_one(mode, f"{root}/{optimizer_name}", optimizer_name, spec, resave)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is written: skip interpreter teardown (ZeRO-3 processes sometimes abort in it)


class _ForwardCounter(torch.nn.Module):
    """Identity with a buffer counting forward calls: a module buffer a resume must restore."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def _run_one(mode: str, root: str, optimizer_name: str, spec: tuple, resave: str | None = None) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from trainer.checkpoint import Checkpointer
    from trainer.config import CheckpointConfig

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), _ForwardCounter(), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    stage, _, bf16 = spec
    if optimizer_name.startswith("sgd"):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    config = {"train_micro_batch_size_per_gpu": 4 // world, "gradient_accumulation_steps": 1,
              "gradient_clipping": 0.0, "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**9, "bf16": {"enabled": bf16}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    ckpt = Checkpointer(CheckpointConfig(dir=root), rank=rank, world_size=world, config_hash="h")

    def step(i: int) -> None:
        generator = torch.Generator().manual_seed(100 + i)
        x = torch.randn(4, 4, generator=generator)  # the global batch; each rank takes its share
        share = x.chunk(world)[rank].to(torch.bfloat16 if bf16 else torch.float32)
        loss = (engine(share).float() ** 2).mean()
        engine.backward(loss)
        engine.step()

    def full_state() -> dict[str, torch.Tensor]:
        # module buffers (not partitioned, even by ZeRO-3) come back from saved rank 0's files
        buffers = {f"{n}/buffer": b.detach().clone() for n, b in engine.module.named_buffers()}
        if stage == 0:  # plain torch optimizer: full tensors on every rank
            state = engine.optimizer.state
            return {**buffers, **{f"{n}/fp32": p.detach().clone() for n, p in engine.module.named_parameters()},
                    **{f"{n}/{k}": v.clone() for n, p in engine.module.named_parameters()
                       for k, v in state[p].items() if torch.is_tensor(v) and v.dim() > 0}}
        base_state = next(iter(engine.optimizer.optimizer.state.values()))
        keys = [k for k, v in base_state.items() if torch.is_tensor(v) and v.dim() == 1]
        out = dict(buffers)
        for name, p in engine.module.named_parameters():
            out[f"{name}/fp32"] = safe_get_full_fp32_param(p).detach().clone()
            for key in keys:
                out[f"{name}/{key}"] = safe_get_full_optimizer_state(p, key).detach().clone()
        return out

    def weights() -> dict[str, torch.Tensor]:
        if stage < 3:
            return {name: p.detach().clone() for name, p in engine.module.named_parameters()}
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):  # partitioned: gather
            return {name: p.detach().clone() for name, p in engine.module.named_parameters()}

    if mode == "save":
        for i in range(3):
            step(i)
        ckpt.save(engine, 3, {"step": 3, "loader_state": {"rank": rank}})
        expected = full_state()
        step(3)
        after = weights()
        if rank == 0:
            torch.save({"state": expected, "after": after}, f"{root}/expected.pt")
    else:
        point = ckpt.find_resume()
        client_state = ckpt.load(engine, point)
        expected = torch.load(f"{root}/expected.pt", weights_only=True)
        got = full_state()
        global_steps = engine.global_steps
        state_diff = max(float((got[k] - v).abs().max()) for k, v in expected["state"].items())
        step(point.step)
        step_diff = max(float((p - expected["after"][n]).abs().max()) for n, p in weights().items())
        if rank == 0:
            Path(f"{root}/resume.json").write_text(json.dumps({
                "max_state_diff": state_diff, "max_step_diff": step_diff, "client_state": client_state,
                "global_steps": global_steps, "forward_calls": float(got["1.calls/buffer"]),
                "state_keys": sorted({k.split("/")[1] for k in got} - {"fp32", "buffer"})}))
        if resave:  # save again with this process count, for a resume with another one
            again = Checkpointer(CheckpointConfig(dir=resave), rank=rank, world_size=world, config_hash="h")
            again.save(engine, point.step + 1, {"step": point.step + 1, "loader_state": {"rank": rank}})
            expected = full_state()
            step(point.step + 1)
            after = weights()
            if rank == 0:
                torch.save({"state": expected, "after": after}, f"{resave}/expected.pt")
    engine.destroy()


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker(*sys.argv[sys.argv.index("--worker") + 1:])
