"""A non-finite GRADIENT (finite loss) under ZeRO-3: the update is skipped, counted, the weights stay finite.

One process with its own gloo group (as test_checkpoint.py): ZeRO-3 partitions, reduces and steps
through the same code paths with one rank. The loss-level check in ``train_step`` cannot see this
fault (the loss is finite); DeepSpeed's ZeRO-3 step computes the global gradient norm, finds it
non-finite and drops the update, and ``train_step`` reads that norm and reports the step as bad.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainer.checkpoint.checkpointer import weights_finite
from trainer.engine import NO_CLIP_THRESHOLD
from trainer.fault import DivergenceGuard
from trainer.step import SampleLog, train_step


@pytest.fixture(scope="module", autouse=True)
def _process_group(one_rank_process_group):
    """Every test here builds in-process DeepSpeed engines on the shared one-rank group."""
    yield


class InfGradNet(torch.nn.Module):
    """A linear classifier; with ``inject_inf`` the gradient reaching its output is +Inf (loss finite)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(12, 3)
        self.inject_inf = False

    def forward(self, images: torch.Tensor, pretrain: bool = False) -> torch.Tensor:
        logits = self.head(images.flatten(1))  # (B, 3)
        if self.inject_inf and logits.requires_grad:
            logits.register_hook(lambda grad: torch.full_like(grad, math.inf))
        return logits


def _full_state(engine) -> dict[str, torch.Tensor]:
    """Full fp32 masters, momentum and (gathered) module weights."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    out = {}
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        for name, param in engine.module.named_parameters():
            out[f"{name}/module"] = param.detach().float().clone()
    for name, param in engine.module.named_parameters():
        out[f"{name}/fp32"] = safe_get_full_fp32_param(param).detach().clone()
        out[f"{name}/momentum"] = safe_get_full_optimizer_state(param, "momentum_buffer").detach().clone()
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_inf_gradient_skips_the_zero3_update_and_is_counted(bf16):
    import deepspeed

    torch.manual_seed(0)
    model = InfGradNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # grad_clip 0 in the trainer config becomes this threshold (trainer/engine.py), as here
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "gradient_clipping": NO_CLIP_THRESHOLD, "zero_optimization": {"stage": 3},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9, "bf16": {"enabled": bf16}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    device = engine.device
    dtype = torch.bfloat16 if bf16 else torch.float32
    generator = torch.Generator().manual_seed(1)
    # positive inputs: the weight gradient (Inf * x summed over the batch) is +Inf, not NaN
    batches = iter([(torch.rand(4, 3, 2, 2, generator=generator) + 0.1, torch.randint(0, 3, (4,),
                                                                                     generator=generator))
                    for _ in range(3)])
    guard = DivergenceGuard(max_bad_steps=3)

    def step(i: int):
        return train_step(engine, batches, step=i, task="classification", pretrain=False, accum=1, dtype=dtype,
                          device=device, label_smoothing=0.0, inject_nan=False, sample_log=SampleLog(0))

    first = step(0)  # a good step: the momentum exists, so "unchanged" below covers it too
    assert first.applied and guard.observe(first.loss_finite, first.grads_finite, first.protective_break) == "ok"
    before = _full_state(engine)
    skipped_before = engine.skipped_steps

    model.inject_inf = True
    bad = step(1)
    model.inject_inf = False
    assert bad.loss_finite and math.isfinite(bad.loss)  # only the gradient was bad
    assert not bad.grads_finite and not bad.applied
    assert math.isinf(bad.solver.get("train/grad_norm", math.inf))
    assert guard.observe(bad.loss_finite, bad.grads_finite, bad.protective_break) == "skip"
    assert guard.total_skipped == 1 and guard.consecutive_bad == 1
    assert engine.skipped_steps == skipped_before + 1  # DeepSpeed dropped the update itself
    after = _full_state(engine)
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # weights, fp32 masters, momentum: untouched
    assert weights_finite(engine)

    good = step(2)  # the engine is usable afterwards: the next update applies
    assert good.applied and good.grads_finite
    assert guard.observe(good.loss_finite, good.grads_finite, good.protective_break) == "ok"
    assert any(not torch.equal(_full_state(engine)[k], v) for k, v in before.items() if k.endswith("/fp32"))
    assert weights_finite(engine)
    engine.destroy()
