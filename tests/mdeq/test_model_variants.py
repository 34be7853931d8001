"""Ablations are one switch away and train: single stream, injection into all branches, weight-tied
unrolled model, the shallow warm-up, and the stem's downsampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mdeq

# One torch thread: on the shared, oversubscribed CI machine a second one made these tests many times slower.
pytestmark = pytest.mark.usefixtures("single_thread")


def train_one_step(model, x, pretrain=False):
    """One SGD step on a classification loss; returns (loss, max |param change|)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy(model(x, pretrain=pretrain), torch.arange(x.shape[0]) % model.spec.num_classes)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(p.grad is not None for p in model.parameters()), "a parameter got no gradient"
    change = max((p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters())
    return loss.item(), change


def small(model, f=4, b=4):
    model.deq_options.f_max_iter, model.deq_options.b_max_iter = f, b
    return model


def test_single_stream_has_no_fusion_and_trains():
    torch.manual_seed(0)
    model = small(mdeq.create_model("tiny", num_branches=1))
    assert model.spec.channels == (8,) and model.spec.head_channels == (4,)
    assert model.f.fusion is None
    assert not any(k.startswith("f.fusion") for k in model.state_dict())
    loss, change = train_one_step(model, torch.randn(2, 3, 8, 8))
    assert torch.isfinite(torch.tensor(loss)) and change > 0
    assert len(model.last_stats.branch_residuals) == 1


def test_injection_into_all_branches_trains():
    torch.manual_seed(0)
    model = small(mdeq.create_model("tiny", num_branches=3, channels=[8, 8, 16], head_channels=[2, 2, 4],
                                    injection="all"))
    x = torch.randn(2, 3, 16, 16)
    injections = model.injection(model.stem(x))
    assert [tuple(t.shape) for t in injections] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]
    highest = mdeq.create_model("tiny", num_branches=3, channels=[8, 8, 16], head_channels=[2, 2, 4])
    assert len(highest.injection(highest.stem(x))) == 1  # highest-only: one map, no extra parameters
    extra = set(model.state_dict()) - set(highest.state_dict())
    assert extra and all(k.startswith("injection.to_branch.") for k in extra)
    loss, change = train_one_step(model, x)
    assert torch.isfinite(torch.tensor(loss)) and change > 0


def test_weight_tied_unrolled_model_uses_ordinary_backprop():
    torch.manual_seed(0)
    model = small(mdeq.create_model("tiny", weight_tied_layers=3))
    calls = []
    model.f.register_forward_hook(lambda *_: calls.append(1))
    loss, change = train_one_step(model, torch.randn(2, 3, 32, 32))
    assert len(calls) == 3 and model.last_stats.nfe == 3  # exactly N applications of f
    assert model.last_stats.b_nfe == 0  # no implicit backward: gradients came from the unrolled graph
    assert torch.isfinite(torch.tensor(loss)) and change > 0


def test_warm_up_unrolls_recipe_layers_then_solves():
    torch.manual_seed(0)
    model = small(mdeq.create_model("tiny"))
    assert model.deq_options.unrolled_steps == mdeq.get_model_spec("tiny").pretrain_layers == 3
    x = torch.randn(2, 3, 32, 32)
    train_one_step(model, x, pretrain=True)
    assert model.last_stats.nfe == 3 and model.last_stats.b_nfe == 0
    train_one_step(model, x, pretrain=False)  # the switch to equilibrium mode works on the warmed model
    assert model.last_stats.b_nfe >= 1


@pytest.mark.parametrize("downsample_times", [0, 1, 3])
def test_downsample_times_sets_the_equilibrium_resolution(downsample_times):
    torch.manual_seed(0)
    model = small(mdeq.create_model("tiny", downsample_times=downsample_times), f=2, b=2)
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    side = 32 // 2 ** downsample_times
    assert [tuple(z.shape[-2:]) for z in features] == [(side, side), (side // 2, side // 2)]
    # x~ transform is dropped only for downsample_times == 0 with <= 2 branches (as released)
    assert (model.injection.transform is None) == (downsample_times == 0)
    assert len(model.stem.layers) == max(2, downsample_times)


def test_trains_under_bf16_autocast_and_with_bf16_parameters():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = small(mdeq.create_model("tiny"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 parameters, bf16 compute
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(1).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())

    cast = small(mdeq.create_model("tiny")).to(torch.bfloat16)  # an engine that casts the whole module
    cast(x.to(torch.bfloat16)).float().logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in cast.parameters()) and cast.last_stats.b_nfe >= 1
