"""State-dict keys are a contract: checkpoints must keep loading. A rename must be a deliberate act
that updates this file and docs/model.md ("State-dict layout") together."""

from __future__ import annotations

import pytest
import torch

import mdeq

# One torch thread: on the shared, oversubscribed CI machine a second one made these tests many times slower.
pytestmark = pytest.mark.usefixtures("single_thread")

PINNED_TINY_KEYS = {
    'stem.layers.0.conv.weight': (8, 3, 3, 3),
    'stem.layers.0.bn.weight': (8,),
    'stem.layers.0.bn.bias': (8,),
    'stem.layers.0.bn.running_mean': (8,),
    'stem.layers.0.bn.running_var': (8,),
    'stem.layers.0.bn.num_batches_tracked': (),
    'stem.layers.1.conv.weight': (8, 8, 3, 3),
    'stem.layers.1.bn.weight': (8,),
    'stem.layers.1.bn.bias': (8,),
    'stem.layers.1.bn.running_mean': (8,),
    'stem.layers.1.bn.running_var': (8,),
    'stem.layers.1.bn.num_batches_tracked': (),
    'f.branches.0.conv1.weight_v': (16, 8, 3, 3),
    'f.branches.0.conv1.weight_g': (16, 1, 1, 1),
    'f.branches.0.gn1.weight': (16,),
    'f.branches.0.gn1.bias': (16,),
    'f.branches.0.conv2.weight_v': (8, 16, 3, 3),
    'f.branches.0.conv2.weight_g': (8, 1, 1, 1),
    'f.branches.0.gn2.weight': (8,),
    'f.branches.0.gn2.bias': (8,),
    'f.branches.0.gn3.weight': (8,),
    'f.branches.0.gn3.bias': (8,),
    'f.branches.1.conv1.weight_v': (32, 16, 3, 3),
    'f.branches.1.conv1.weight_g': (32, 1, 1, 1),
    'f.branches.1.gn1.weight': (32,),
    'f.branches.1.gn1.bias': (32,),
    'f.branches.1.conv2.weight_v': (16, 32, 3, 3),
    'f.branches.1.conv2.weight_g': (16, 1, 1, 1),
    'f.branches.1.gn2.weight': (16,),
    'f.branches.1.gn2.bias': (16,),
    'f.branches.1.gn3.weight': (16,),
    'f.branches.1.gn3.bias': (16,),
    'f.fusion.fuse.0.1.conv.weight': (8, 16, 1, 1),
    'f.fusion.fuse.0.1.norm.weight': (8,),
    'f.fusion.fuse.0.1.norm.bias': (8,),
    'f.fusion.fuse.1.0.steps.0.conv.weight': (16, 8, 3, 3),
    'f.fusion.fuse.1.0.steps.0.norm.weight': (16,),
    'f.fusion.fuse.1.0.steps.0.norm.bias': (16,),
    'f.fusion.post_fuse.0.conv.weight_v': (8, 8, 1, 1),
    'f.fusion.post_fuse.0.conv.weight_g': (8, 1, 1, 1),
    'f.fusion.post_fuse.0.norm.weight': (8,),
    'f.fusion.post_fuse.0.norm.bias': (8,),
    'f.fusion.post_fuse.1.conv.weight_v': (16, 16, 1, 1),
    'f.fusion.post_fuse.1.conv.weight_g': (16, 1, 1, 1),
    'f.fusion.post_fuse.1.norm.weight': (16,),
    'f.fusion.post_fuse.1.norm.bias': (16,),
    'head.bottlenecks.0.conv1.weight': (4, 8, 1, 1),
    'head.bottlenecks.0.bn1.running_mean': (4,),
    'head.bottlenecks.0.bn1.running_var': (4,),
    'head.bottlenecks.0.bn1.num_batches_tracked': (),
    'head.bottlenecks.0.conv2.weight': (4, 4, 3, 3),
    'head.bottlenecks.0.bn2.running_mean': (4,),
    'head.bottlenecks.0.bn2.running_var': (4,),
    'head.bottlenecks.0.bn2.num_batches_tracked': (),
    'head.bottlenecks.0.conv3.weight': (16, 4, 1, 1),
    'head.bottlenecks.0.bn3.running_mean': (16,),
    'head.bottlenecks.0.bn3.running_var': (16,),
    'head.bottlenecks.0.bn3.num_batches_tracked': (),
    'head.bottlenecks.0.shortcut.conv.weight': (16, 8, 1, 1),
    'head.bottlenecks.0.shortcut.bn.weight': (16,),
    'head.bottlenecks.0.shortcut.bn.bias': (16,),
    'head.bottlenecks.0.shortcut.bn.running_mean': (16,),
    'head.bottlenecks.0.shortcut.bn.running_var': (16,),
    'head.bottlenecks.0.shortcut.bn.num_batches_tracked': (),
    'head.bottlenecks.1.conv1.weight': (8, 16, 1, 1),
    'head.bottlenecks.1.bn1.running_mean': (8,),
    'head.bottlenecks.1.bn1.running_var': (8,),
    'head.bottlenecks.1.bn1.num_batches_tracked': (),
    'head.bottlenecks.1.conv2.weight': (8, 8, 3, 3),
    'head.bottlenecks.1.bn2.running_mean': (8,),
    'head.bottlenecks.1.bn2.running_var': (8,),
    'head.bottlenecks.1.bn2.num_batches_tracked': (),
    'head.bottlenecks.1.conv3.weight': (32, 8, 1, 1),
    'head.bottlenecks.1.bn3.running_mean': (32,),
    'head.bottlenecks.1.bn3.running_var': (32,),
    'head.bottlenecks.1.bn3.num_batches_tracked': (),
    'head.bottlenecks.1.shortcut.conv.weight': (32, 16, 1, 1),
    'head.bottlenecks.1.shortcut.bn.weight': (32,),
    'head.bottlenecks.1.shortcut.bn.bias': (32,),
    'head.bottlenecks.1.shortcut.bn.running_mean': (32,),
    'head.bottlenecks.1.shortcut.bn.running_var': (32,),
    'head.bottlenecks.1.shortcut.bn.num_batches_tracked': (),
    'head.downsamples.0.conv.weight': (32, 16, 3, 3),
    'head.downsamples.0.conv.bias': (32,),
    'head.downsamples.0.bn.weight': (32,),
    'head.downsamples.0.bn.bias': (32,),
    'head.downsamples.0.bn.running_mean': (32,),
    'head.downsamples.0.bn.running_var': (32,),
    'head.downsamples.0.bn.num_batches_tracked': (),
    'head.final.conv.weight': (32, 32, 1, 1),
    'head.final.conv.bias': (32,),
    'head.final.bn.weight': (32,),
    'head.final.bn.bias': (32,),
    'head.final.bn.running_mean': (32,),
    'head.final.bn.running_var': (32,),
    'head.final.bn.num_batches_tracked': (),
    'head.classifier.weight': (10, 32),
    'head.classifier.bias': (10,),
}


def test_tiny_state_dict_keys_and_shapes_are_pinned():
    state = mdeq.create_model("tiny").state_dict()
    got = {k: tuple(v.shape) for k, v in state.items()}
    assert list(got) == list(PINNED_TINY_KEYS), "state-dict keys changed: update docs/model.md deliberately"
    assert got == PINNED_TINY_KEYS


def test_state_dict_round_trips_into_a_fresh_model():
    torch.manual_seed(0)
    source = mdeq.create_model("tiny")
    torch.manual_seed(1)
    target = mdeq.create_model("tiny")
    result = target.load_state_dict(source.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 32, 32)
    source.eval(), target.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
