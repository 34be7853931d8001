"""The properties the paper relies on: batch-independent f, per-pass weight norm and dropout mask,
one joint solve that couples every branch, and a deterministic N(0, 0.01) build."""

from __future__ import annotations

import pytest
import torch

import mdeq
from mdeq.model.dropout import VariationalDropout2d
from mdeq.model.weight_norm import WeightNormConv2d

# One torch thread: on the shared, oversubscribed CI machine a second one made these tests many times slower.
pytestmark = pytest.mark.usefixtures("single_thread")


def four_branch_model(**overrides):
    """tiny widened to 4 branches (needs H, W multiples of 8 at downsample_times=0)."""
    return mdeq.create_model("tiny", num_branches=4, channels=[8, 8, 16, 16], head_channels=[2, 2, 4, 4],
                             **overrides)


def prepared(model, x):
    """(f_args, z) for input x: what forward_features hands the solver, plus a random state."""
    injections = model.injection(model.stem(x))
    f_args = model.f.prepare(injections)
    z = torch.randn(x.shape[0], model.f.layout(injections[0]).total)
    return f_args, z


def test_f_is_batch_independent():
    torch.manual_seed(0)
    model = four_branch_model(dropout=0.3)  # training mode: masks active, GroupNorm only inside f
    x = torch.randn(3, 3, 16, 16)
    f_args, z = prepared(model, x)
    with torch.no_grad():
        full = model.f(z, *f_args)  # (3, D)
        # Sample 0 alone (its injection, its masks; weights are shared) gives the same f output ...
        alone = model.f(z[:1], *[a[:1] if a.dim() == 4 and a.shape[0] == 3 else a for a in f_args])
        # ... and so does changing every other sample.
        z_other = z.clone()
        z_other[1:] = torch.randn_like(z_other[1:]) * 10
        changed = model.f(z_other, *f_args)
    assert len([a for a in f_args if a.shape[0] == 3]) == 1 + 4  # one injection + one mask per branch
    torch.testing.assert_close(alone[0], full[0], rtol=1e-4, atol=1e-5)  # conv algorithms differ by batch
    torch.testing.assert_close(changed[0], full[0], rtol=0, atol=0)
    assert not torch.allclose(changed[1], full[1])


def test_weight_norm_and_dropout_mask_computed_once_per_forward():
    torch.manual_seed(0)
    model = four_branch_model(dropout=0.2)
    model.deq_options.f_max_iter, model.deq_options.b_max_iter = 6, 6
    calls = {"f": 0, "weight_norm": 0, "dropout": 0}

    def counter(key):
        def hook(module, args, output):
            calls[key] += 1
        return hook

    model.f.register_forward_hook(counter("f"))
    wn = [m for m in model.modules() if isinstance(m, WeightNormConv2d)]
    drops = [m for m in model.modules() if isinstance(m, VariationalDropout2d)]
    for m in wn:
        m.register_forward_hook(counter("weight_norm"))
    for m in drops:
        m.register_forward_hook(counter("dropout"))

    logits = model(torch.randn(2, 3, 16, 16))
    logits.sum().backward()

    assert len(wn) == 3 * 4 and len(drops) == 4  # 2 block convs + 1 post-fusion conv per branch
    assert calls["f"] >= 4, "the solve should evaluate f several times"
    assert model.last_stats.b_nfe >= 2
    assert calls["weight_norm"] == len(wn)  # once per forward pass, not per f evaluation
    assert calls["dropout"] == len(drops)


def test_f_is_one_fixed_function_within_a_pass():
    # With the pass's f_args, f is deterministic even in training with dropout: the mask is not redrawn.
    torch.manual_seed(0)
    model = four_branch_model(dropout=0.5)
    f_args, z = prepared(model, torch.randn(2, 3, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(model.f(z, *f_args), model.f(z, *f_args), rtol=0, atol=0)
    mask = f_args[-1]  # (B, C_3, 1, 1), values in {0, 1 / (1 - p)}
    assert mask.shape == (2, 16, 1, 1) and set(mask.unique().tolist()) <= {0.0, 2.0}


def test_normalized_weight_is_g_times_unit_direction():
    conv = WeightNormConv2d(4, 6, 3)
    conv.reset_parameters()
    with torch.no_grad():
        conv.weight_g.mul_(3.0)
    weight = conv()  # (6, 4, 3, 3)
    norms = torch.linalg.vector_norm(weight, dim=(1, 2, 3))
    torch.testing.assert_close(norms, conv.weight_g.flatten())
    direction = conv.weight_v / torch.linalg.vector_norm(conv.weight_v, dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(weight / norms.view(-1, 1, 1, 1), direction)


def test_loss_on_one_branch_reaches_every_branch():
    torch.manual_seed(0)
    model = four_branch_model(dropout=0.0)
    model.deq_options.f_max_iter, model.deq_options.b_max_iter = 4, 4
    x = torch.randn(2, 3, 16, 16)
    for i in range(4):
        model.zero_grad(set_to_none=True)
        features = model.forward_features(x)
        features[i].square().sum().backward()  # loss on branch i only
        for j, block in enumerate(model.f.branches):
            grad = sum(p.grad.abs().sum() for p in block.parameters())
            assert grad > 0, f"loss on branch {i} gave no gradient to branch {j}'s block"
        assert model.last_stats.b_nfe >= 1  # through the implicit backward, not an unrolled graph


def test_state_split_gives_views_and_pack_inverts_it():
    model = four_branch_model()
    layout = model.f.layout(torch.zeros(1, 8, 16, 16))
    assert layout.shapes == ((8, 16, 16), (8, 8, 8), (16, 4, 4), (16, 2, 2))
    assert layout.branch_sizes == [2048, 512, 256, 64] and layout.total == 2880
    z = torch.randn(3, layout.total)
    maps = layout.split(z)
    assert [m.shape for m in maps] == [(3, *s) for s in layout.shapes]
    for m in maps:
        assert m.untyped_storage().data_ptr() == z.untyped_storage().data_ptr()  # a view, no copy
    maps[2].fill_(7.0)
    assert (z[:, 2048 + 512:2048 + 512 + 256] == 7.0).all()
    torch.testing.assert_close(layout.pack(maps), z)


def test_build_is_deterministic_and_initialised_as_released():
    torch.manual_seed(123)
    a = mdeq.create_model("cifar-small")
    torch.manual_seed(123)
    b = mdeq.create_model("cifar-small")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.manual_seed(124)
    assert not torch.equal(mdeq.create_model("cifar-small").state_dict()["stem.layers.0.conv.weight"],
                           sa["stem.layers.0.conv.weight"])

    convs = [m for m in a.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.std().item() - 0.01) < 0.001 and abs(weights.mean().item()) < 0.001
    biases = torch.cat([m.bias for m in convs if m.bias is not None])
    assert abs(biases.std().item() - 0.01) < 0.003
    for m in a.modules():
        if isinstance(m, WeightNormConv2d):  # effective weight starts at v ~ N(0, 0.01)
            torch.testing.assert_close(m(), m.weight_v)
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_var.eq(1).all() and m.running_mean.eq(0).all()
            if m.affine:
                assert m.weight.eq(1).all() and m.bias.eq(0).all()
    v = torch.cat([m.weight_v.flatten() for m in a.modules() if isinstance(m, WeightNormConv2d)])
    assert abs(v.std().item() - 0.01) < 0.001


def test_eval_mode_is_deterministic_and_drops_no_channels():
    torch.manual_seed(0)
    model = mdeq.create_model("tiny", dropout=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        f_args = model.f.prepare(model.injection(model.stem(x)))
    assert len(f_args) == 1 + model.f.num_weights  # injection + weights, no masks in eval


def test_batchnorm_momentum_as_released():
    seg = mdeq.create_model("cityscapes-small", device="meta")
    cls = mdeq.create_model("imagenet-small", device="meta")
    assert {m.momentum for m in seg.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.01}
    assert {m.momentum for m in cls.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
